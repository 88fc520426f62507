"""MVLiftPipeline: a diffusion export opened as a diffusers pipeline.

A diffusion export folder (``DiffusionModule.export``) is also a diffusers pipeline folder: besides its components
(``unet/``, ``vae/``, ``image_encoder/``, ...) it holds ``model_index.json`` naming this class and its components,
and a two-line ``pipeline.py`` that imports it (written by ``lightning_modules.diffusion.pipeline_files``; the folder
then needs mvlift installed where it is opened). Either entry point gives the same pipeline::

    pipe = MVLiftPipeline.from_pretrained(EXPORT)                                   # mvlift's own
    pipe = DiffusionPipeline.from_pretrained(EXPORT, custom_pipeline=EXPORT, trust_remote_code=True)  # diffusers'
    out = pipe(image, num_inference_steps=50, guidance_scale=3.0, seed=0)          # out.images: per image, V views

As in every diffusers pipeline, ``pipe.scheduler`` is the sampler (DDIM from the model's noise schedule, the
default): ``pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)`` makes later calls sample
with Euler (``scheduler="euler"`` for one call does the same by name), and ``generator=torch.Generator(...)``
draws the noise instead of ``seed``.

What makes the model multi-view — the rig, its view embeddings, the multi-view attention mode, the autoencoder —
is read from the export by :meth:`DiffusionModule.from_export` (through :mod:`lightning_modules.artifacts`), never
here: the pipeline holds that module and samples with :meth:`DiffusionModule.sample`, so the same seed gives the
same views as ``DiffusionModule.from_export(EXPORT).sample(...)``. Its registered components are the module's own
(``pipe.unet`` is the multi-view UNet). Opened through diffusers, the pipeline is built from diffusers' plain
components first and binds the module (read from the folder diffusers loaded it from) on first use: the weights are
read twice then; ``MVLiftPipeline.from_pretrained`` reads them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from torch import Tensor

from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.pipeline_files import COMPONENTS, pipeline_components
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class MVLiftPipelineOutput(BaseOutput):
    """``images``: per input image, its V views in rig order (PIL images, or [B, V, H, W, 3] numpy / [B, V, 3, H, W]
    torch in [0, 1]); ``view_names``; the rig's cameras at the output size (``c2w`` [V, 4, 4], ``fxfycxcy`` [V, 4]);
    ``rig``: ``Rig.to_dict()``."""

    images: Any
    view_names: list[str]
    c2w: Tensor
    fxfycxcy: Tensor
    rig: dict[str, Any]


class MVLiftPipeline(DiffusionPipeline):
    """One reference image -> the rig's views (module docstring). Build it with :meth:`from_pretrained`."""

    _optional_components = ["vae"]  # noqa: RUF012  (diffusers' class attribute) — none for ``autoencoder: pixel``

    def __init__(self, unet: Any, image_encoder: Any, feature_extractor: Any, scheduler: Any, image_normalizer: Any,
                 image_noising_scheduler: Any, vae: Any = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
                              scheduler=scheduler, image_normalizer=image_normalizer,
                              image_noising_scheduler=image_noising_scheduler)
        self._module: Any = None

    # ---- building -------------------------------------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: Any) -> MVLiftPipeline:
        """The pipeline over a :class:`~lightning_modules.diffusion.DiffusionModule` (its components, shared)."""
        pipe = cls(**pipeline_components(module))
        pipe._module = module.eval()
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, ema: bool = False,  # type: ignore[override]
                        **overrides: Any) -> MVLiftPipeline:
        """Open a diffusion export folder (``ema``: its EMA weights; ``overrides``: constructor arguments of
        ``DiffusionModule.from_export``)."""
        path = Path(pretrained_model_name_or_path)
        pipe = cls.from_module(DiffusionModule.from_export(path, ema=ema, **overrides))
        pipe.register_to_config(_name_or_path=str(path))
        return pipe

    @property
    def module(self) -> Any:
        """The :class:`~lightning_modules.diffusion.DiffusionModule` the pipeline samples with; opened through
        diffusers, built from the export folder at first use, on the pipeline's device."""
        if self._module is None:
            path = getattr(self.config, "_name_or_path", None)
            if not path or not Path(path).is_dir():
                raise ValueError(f"MVLiftPipeline: opened from {path!r}, not a diffusion export folder; open one with "
                                 "MVLiftPipeline.from_pretrained(EXPORT) or DiffusionPipeline.from_pretrained(EXPORT, "
                                 "custom_pipeline=EXPORT, trust_remote_code=True)")
            device = self.device
            module = DiffusionModule.from_export(path).eval().to(device)
            components = pipeline_components(module)
            if getattr(self, "scheduler", None) is not None:  # the folder's (or the user's swap) stays
                components.pop("scheduler")
            self.register_modules(**components)  # the multi-view UNet replaces diffusers' plain one
            self._module = module
        return self._module

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:  # type: ignore[override]
        """Write the module's export folder (``DiffusionModule.export``)."""
        self.module.export(save_directory)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,  # type: ignore[override]
                    token: str | None = None, create_pr: bool = False, **_: Any) -> str:
        """Upload the pipeline's export folder (:meth:`save_pretrained`, mvlift's model card kept, not diffusers'
        generic one) as the Hub model repository ``repo_id`` (:func:`lightning_modules.artifacts.push_to_hub`)."""
        import tempfile

        from lightning_modules.artifacts import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return push_to_hub(tmp, repo_id, token=token, private=private, create_pr=create_pr,
                               commit_message=commit_message or "Upload mvlift diffusion export")

    # ---- generating -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: Any, num_inference_steps: int = SAMPLING.steps, guidance_scale: float = SAMPLING.guidance,
                 seed: int = 0, scheduler: str | None = None, noise_level: int | None = None, eta: float = 0.0,
                 output_type: str = "pil",
                 return_dict: bool = True, show_progress: bool = False, reference_view: int = 0,
                 generator: torch.Generator | list[torch.Generator] | None = None
                 ) -> MVLiftPipelineOutput | tuple:
        """Generate the rig's views of each reference ``image`` (a PIL image, a list of them, an [H, W, 3] /
        [B, H, W, 3] array (uint8, or float in [0, 1]) or a [3, H, W] / [B, 3, H, W] tensor in [0, 1]; an alpha
        channel is dropped: composite a cut-out over the background the model trained on, its model card says
        which) with :meth:`DiffusionModule.sample` (same arguments, same seed -> same views). ``output_type``:
        ``pil`` (a list of V images per input), ``np`` or ``pt``. ``reference_view``: the rig view the photo is
        taken as, for a model conditioned on cameras (``camera_rays``). The sampler is ``pipe.scheduler`` (swap it as
        in any diffusers pipeline) unless ``scheduler`` names one (ddim | ddpm | euler | dpm) for this call; the noise
        comes from ``generator`` when given, else from a CPU generator seeded by ``seed``."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        module = self.module
        module.to(self.device)
        ref = reference_images(image, int(module.hparams.image_size))
        sampler = scheduler if scheduler is not None else self.scheduler
        if sampler is None:
            sampler = SAMPLING.scheduler
        out = module.sample(ref, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                            scheduler=sampler, noise_level=noise_level, eta=eta, show_progress=show_progress,
                            reference_view=reference_view, generator=generator)
        images = out["images"].clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 1, 3, 4, 2).float().cpu().numpy()
        elif output_type == "pil":
            from PIL import Image

            arr = (images.permute(0, 1, 3, 4, 2).float().cpu().numpy() * 255.0).round().astype(np.uint8)
            images = [[Image.fromarray(view) for view in views] for views in arr]
        names = list(module.rig.view_names)
        if not return_dict:
            return (images, names)
        return MVLiftPipelineOutput(images=images, view_names=names, c2w=out["c2w"], fxfycxcy=out["fxfycxcy"],
                                    rig=out["rig"])


def reference_images(image: Any, size: int) -> Tensor:
    """[B, 3, H, W] float in [0, 1] from the inputs :meth:`MVLiftPipeline.__call__` takes; images of different sizes
    are each resized to ``size`` as ``DiffusionModule.sample`` resizes them."""
    if isinstance(image, Tensor):
        x = image.float()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] not in (3, 4):
            raise ValueError(f"image tensor must be [3, H, W] or [B, 3, H, W], got {list(image.shape)}")
        return x[:, :3]
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(image))
        x = x.float() / 255.0 if image.dtype == np.uint8 else x.float()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[-1] not in (3, 4):
            raise ValueError(f"image array must be [H, W, 3] or [B, H, W, 3], got {list(image.shape)}")
        return x[..., :3].permute(0, 3, 1, 2).contiguous()
    from PIL import Image

    images = [image] if isinstance(image, Image.Image) else image
    if not isinstance(images, Sequence) or not images or not all(isinstance(i, Image.Image) for i in images):
        raise TypeError(f"image must be a PIL image, a list of them, a numpy array or a tensor; got {type(image)}")
    xs = [torch.from_numpy(np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1) for i in images]
    if len({tuple(x.shape) for x in xs}) > 1:
        xs = [F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
              for x in xs]
    return torch.stack(xs)


__all__ = ["COMPONENTS", "MVLiftPipeline", "MVLiftPipelineOutput", "reference_images"]
