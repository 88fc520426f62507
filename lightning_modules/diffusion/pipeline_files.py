"""The diffusers side of a diffusion export folder: ``model_index.json`` and ``pipeline.py``.

A diffusion export is also a diffusers pipeline folder (``lightning_modules.diffusion.mv_pipeline``): its
:data:`~lightning_modules.artifacts.MODEL_INDEX_FILE` names the pipeline class and, per component, the library and
class diffusers records for it (``register_modules``' own rule), and :data:`~lightning_modules.artifacts.PIPELINE_FILE`
imports the class. Written here, from the module's components, without the pipeline class: the module writes its
export (``DiffusionModule.save_weights``) and the pipeline opens it, never the reverse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

from lightning_modules.artifacts import MODEL_INDEX_FILE, PIPELINE_FILE

PIPELINE_CLASS = "MVLiftPipeline"
PIPELINE_SHIM = f'''"""diffusers' custom-pipeline entry of this mvlift diffusion export (needs mvlift installed):
DiffusionPipeline.from_pretrained(THIS_FOLDER, custom_pipeline=THIS_FOLDER, trust_remote_code=True)."""
from lightning_modules.diffusion.mv_pipeline import {PIPELINE_CLASS}  # noqa: F401
'''
COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "image_normalizer",
              "image_noising_scheduler")


def pipeline_components(module: Any) -> dict[str, Any]:
    """The pipeline components of a DiffusionModule (``vae`` None for ``autoencoder: pixel``)."""
    return {"unet": module.unet, "vae": module.vae if module.autoencoder == "vae" else None,
            "image_encoder": module.image_encoder, "feature_extractor": module.feature_extractor,
            "scheduler": module.make_sampler("ddim"), "image_normalizer": module.image_normalizer,
            "image_noising_scheduler": module.image_noising_scheduler}


def model_index(components: dict[str, Any]) -> dict[str, Any]:
    """What diffusers writes as ``model_index.json`` for a pipeline of these components, in the custom-pipeline form
    (``_class_name`` = [pipeline file stem, class])."""
    index: dict[str, Any] = {name: list(_fetch_class_library_tuple(obj)) if obj is not None else [None, None]
                             for name, obj in components.items()}
    library, name = index["feature_extractor"]
    if library == "transformers" and name and name.endswith("Pil"):  # transformers' fallback without torchvision:
        index["feature_extractor"] = [library, name.removesuffix("Pil")]  # the class that picks a backend anywhere
    index["_diffusers_version"] = diffusers.__version__
    index["_class_name"] = [Path(PIPELINE_FILE).stem, PIPELINE_CLASS]
    return dict(sorted(index.items()))


def write_pipeline_files(module: Any, out: str | Path) -> None:
    """Write ``model_index.json`` and ``pipeline.py`` into the export folder ``out`` of ``module``."""
    out = Path(out)
    (out / MODEL_INDEX_FILE).write_text(json.dumps(model_index(pipeline_components(module)), indent=2) + "\n")
    (out / PIPELINE_FILE).write_text(PIPELINE_SHIM)


__all__ = ["COMPONENTS", "PIPELINE_CLASS", "PIPELINE_SHIM", "model_index", "pipeline_components",
           "write_pipeline_files"]
