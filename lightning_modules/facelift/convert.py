"""FaceLift's released checkpoints -> mvlift export folders (``python -m tools.convert`` is the shell over this).

- :func:`convert_facelift_gslrm`: FaceLift's GS-LRM checkpoint (model state under ``model`` / ``model_state_dict`` /
  ``state_dict``, or bare; .pt/.pth/.ckpt or .safetensors) -> a reconstruction export (model.safetensors,
  mvlift.json, rig.json). mvlift's GS-LRM keeps FaceLift's parameter names, so the mapping only strips wrappers that
  training frameworks add (DDP ``module.``, torch.compile ``_orig_mod.``, a ``model.`` prefix) and drops FaceLift's
  loss networks (LPIPS/VGG inside ``loss_calculator``); unknown, missing or mis-shaped tensors are an error listing
  them. A .pt is read without unpickling code (``lightning_modules.artifacts``) unless ``trust``. The export's
  constructor arguments hold the network's size and every activation constant of FaceLift's head (scale bias -2.3
  and cap -1.2, opacity bias -2.0, depth range 1.8, depth pre-activation bias 0, clip_xyz 1.0: ``GSLRMConfig``'s
  defaults), so ``from_export`` and ``init_from`` run FaceLift's activations, not ones derived from the rig
  (tests/test_facelift_reference.py checks the Gaussians against FaceLift's own forward pass).
- :func:`convert_facelift_mvdiffusion`: FaceLift's diffusion pipeline folder (``pipeckpts/``) + its fixed view
  embeddings -> a diffusion export, written by ``DiffusionModule.export`` (``StageModule.export``) from the module
  built exactly as ``tools.fit`` builds it from the folder (``pretrained: PIPECKPTS``, attention ``sparse`` as
  FaceLift trained): the same UNet, VAE, image encoder, schedulers, the embeddings and the rig, self-contained, so
  tools.infer / evaluate / synthesize read it like a trained export. The embedding file's rows are mapped to the
  rig's views by camera direction (:func:`lightning_modules.diffusion.view_conditioning.views_by_direction`; FaceLift's file
  is in ``FACELIFT_VIEW_ORDER``) and the mapping is stated in the export's ``mvlift.json``
  (``view_embeddings_info``) and in ``view_embeddings.safetensors``; a shape that does not fit the UNet (views,
  tokens, cross-attention dim) is a :class:`~lightning_modules.diffusion.view_conditioning.ViewEmbeddingShapeError`.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from geometry.files import atomic_directory, make_readable
from geometry.rig import Rig, load_rig
from lightning_modules.artifacts import FORMAT_VERSION, METADATA_FILE, WEIGHTS, load_checkpoint, write_export_metadata
from lightning_modules.diffusion.pretrained import text_context_tokens, unet_cross_attention_dim
from lightning_modules.diffusion.view_conditioning import (
    FACELIFT_VIEW_ORDER,
    ViewEmbeddings,
    check_embeddings_fit,
    facelift_source_rig,
    load_facelift_embeds,
    views_by_direction,
)
from lightning_modules.reconstruction.gslrm import (
    GSLRMConfig,
    check_state_dict,
    config_from_state_dict,
    gslrm_state_dict_shapes,
)
from lightning_modules.reconstruction.module import config_arguments

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
IGNORED_PREFIXES = ("loss_calculator.",)
STATE_KEYS = ("model", "model_state_dict", "state_dict")
# where FaceLift / Era3D-style repositories keep the fixed per-view prompt embeddings, relative to pipeckpts/
EMBEDDING_NAMES = ("fixed_prompt_embeds_6view.pt", "clr_embeds.pt", "fixed_prompt_embeds_6view/clr_embeds.pt",
                   "prompt_embeds.pt", "view_embeddings.safetensors")


# ---- GS-LRM ------------------------------------------------------------------------------------------------------
def load_checkpoint_state(path: Path, trust: bool = False) -> dict[str, Tensor]:
    """The tensor state dict inside a checkpoint file (see module docstring for accepted layouts); ``trust``: full
    unpickling for a file that needs more than ``weights_only`` (never done without it)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":

        return load_file(str(path))

    obj = load_checkpoint(path, trust=trust, mmap=zipfile.is_zipfile(path))  # mmap needs the zip format
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no tensor state dict found (looked under {STATE_KEYS} and at the top level)")
    return dict(obj)


def facelift_gslrm_name(name: str) -> str | None:
    """mvlift name of a FaceLift GS-LRM tensor, or None for tensors that are deliberately dropped."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    if name.startswith(IGNORED_PREFIXES):
        return None
    return name


def convert_facelift_gslrm_state(state: dict[str, Tensor], where: str, head_dim: int = 64
                                 ) -> tuple[dict[str, Tensor], GSLRMConfig]:
    """Rename, validate against the network built from the inferred size, and return (state, config)."""

    renamed: dict[str, Tensor] = {}
    for k, v in state.items():
        new = facelift_gslrm_name(k)
        if new is None:
            continue
        if new in renamed:
            raise ValueError(f"{where}: two tensors map to {new!r}")
        renamed[new] = v
    config = config_from_state_dict(renamed, head_dim=head_dim)
    check_state_dict(gslrm_state_dict_shapes(config), renamed, where)
    return {k: v.float().contiguous() for k, v in renamed.items()}, config


def convert_facelift_gslrm(ckpt: str | Path, out: str | Path, rig: str = "facelift_6view", head_dim: int = 64,
                           image_size: int = 512, trust: bool = False) -> dict[str, Any]:
    """FaceLift's GS-LRM checkpoint -> a reconstruction export folder ``out``; returns a summary (tensors,
    parameters)."""


    ckpt, out = Path(ckpt), Path(out)
    state, config = convert_facelift_gslrm_state(load_checkpoint_state(ckpt, trust=trust), str(ckpt),
                                                 head_dim=head_dim)
    config.image_size = image_size
    rig_ = load_rig(rig)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS["reconstruction"]
    save_file(state, str(weights))
    make_readable(weights)  # safetensors writes 0600 whatever the umask
    hparams = {"rig": rig_.name, **config_arguments(config)}  # FaceLift's activation constants included
    meta = {"stage": "reconstruction", "rig": rig_.to_dict(), "version": FORMAT_VERSION,
            "model_config": config.to_dict(),
            "converted_from": {"format": "facelift-gslrm", "path": str(ckpt.resolve())}}
    write_export_metadata(out, meta, hparams, rig_)
    return {"tensors": len(state), "parameters": sum(v.numel() for v in state.values())}


# ---- MVDiffusion -------------------------------------------------------------------------------------------------
def find_facelift_embeddings(pipeckpts: str | Path) -> Path:
    """FaceLift's fixed view-embedding file inside (or beside) a pipeline folder (:data:`EMBEDDING_NAMES`); an
    error naming the places looked at when there is none."""
    folder = Path(pipeckpts)
    places = [folder / n for n in EMBEDDING_NAMES] + [folder.parent / n for n in EMBEDDING_NAMES]
    for p in places:
        if p.is_file():
            return p
    raise FileNotFoundError(f"{folder}: no view embeddings found (looked for {', '.join(EMBEDDING_NAMES)} in it and "
                            "beside it); pass --view-embeddings FILE (FaceLift's fixed_prompt_embeds_6view .pt, or "
                            "a .safetensors from python -m tools.view_embeddings)")


def mapped_view_embeddings(path: str | Path, rig: Rig | str, dim: int, tokens: int,
                           file_view_order: Sequence[str] | None = None) -> Any:
    """The embeddings of ``path`` in ``rig``'s view order, as a ViewEmbeddings bound to ``rig``.

    FaceLift's raw ``.pt`` [6, T, D] (rows in ``file_view_order``, default FaceLift's) -> source ``facelift``, fixed;
    an mvlift ``.safetensors`` (an export's, tools.view_embeddings') keeps its source. Rows are matched to the rig's
    views by camera direction; ``info`` states the file, both view orders and the rows taken (with prompts, when the
    file has them, reordered too). Shapes are checked against the UNet (``dim``, and ``tokens`` for FaceLift's and
    text-built files)."""

    path, rig = Path(path), load_rig(rig)
    if path.suffix == ".safetensors":
        src = ViewEmbeddings.load(path)
        embeds, src_rig, source, learnable, info = src.embeds.detach(), src.rig, src.source, src.learnable, src.info
        if file_view_order is not None:
            raise ValueError(f"{path}: an mvlift view embeddings file states its own view order (its rig "
                             f"{src_rig.name!r}); --file-view-order is for FaceLift's raw .pt files")
    else:
        if not path.is_file():
            raise FileNotFoundError(f"view embeddings file not found: {path}")
        embeds = load_facelift_embeds(path)
        src_rig = facelift_source_rig(tuple(file_view_order or FACELIFT_VIEW_ORDER))
        source, learnable, info = "facelift", False, {}
    check_embeddings_fit(tuple(embeds.shape), src_rig.num_views, dim, str(path),
                         tokens=None if source == "learned" else tokens)
    rows = views_by_direction(src_rig, rig, where=f"the view embeddings of {path}")
    new_info = {**info, "file": str(path.resolve()), "file_rig": src_rig.name,
                "file_view_order": list(src_rig.view_names), "rig_view_order": list(rig.view_names), "rows": rows}
    if isinstance(info.get("prompts"), list) and len(info["prompts"]) == src_rig.num_views:
        new_info["prompts"] = [info["prompts"][i] for i in rows]
    return ViewEmbeddings(embeds[rows], rig, source=source, learnable=learnable, info=new_info)


def convert_facelift_mvdiffusion(pipeckpts: str | Path, out: str | Path, view_embeddings: str | Path | None = None,
                                 rig: str = "facelift_6view", image_size: int | None = None,
                                 file_view_order: Sequence[str] | None = None, noise_level: int = 0) -> dict[str, Any]:
    """FaceLift's pipeline folder -> a self-contained diffusion export ``out`` (module docstring); returns a summary.

    ``image_size``: default the rig's (512 for ``facelift_6view``, FaceLift's). ``out`` is written whole (built
    beside it, renamed in); an existing ``out`` that is not an export folder is refused."""
    from lightning_modules.diffusion.module import (
        DiffusionModule,  # diffusers + transformers: only the diffusion converter pays
    )

    pipeckpts, out = Path(pipeckpts), Path(out)
    if not pipeckpts.is_dir():
        raise FileNotFoundError(f"FaceLift pipeline folder not found: {pipeckpts}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METADATA_FILE).is_file())):
        raise FileExistsError(f"{out} exists and is not an export folder: refusing to replace it")
    rig_ = load_rig(rig)
    source_file = Path(view_embeddings) if view_embeddings else find_facelift_embeddings(pipeckpts)
    emb = mapped_view_embeddings(source_file, rig_, unet_cross_attention_dim(pipeckpts),
                                 text_context_tokens(pipeckpts), file_view_order)
    with tempfile.TemporaryDirectory() as tmp:
        mapped = emb.save(Path(tmp) / "view_embeddings.safetensors")
        module = DiffusionModule(rig=rig, pretrained=str(pipeckpts), attention="sparse", view_embeddings=emb.source,
                                 view_embeddings_path=str(mapped), image_size=int(image_size or rig_.image_size),
                                 noise_level=noise_level)
        provenance = {"format": "facelift-mvdiffusion", "path": str(pipeckpts.resolve()),
                      "view_embeddings": str(source_file.resolve())}
        with atomic_directory(out) as folder:
            module.eval().export(folder, metadata={"converted_from": provenance})
    return {"rig": rig_.name, "view_embeddings": str(source_file), "rows": emb.info["rows"],
            "shape": list(emb.embeds.shape), "source": emb.source,
            "unet_parameters": sum(p.numel() for p in module.unet.parameters())}


__all__ = [
    "EMBEDDING_NAMES", "convert_facelift_gslrm", "convert_facelift_gslrm_state", "convert_facelift_mvdiffusion",
    "facelift_gslrm_name", "find_facelift_embeddings", "load_checkpoint_state", "mapped_view_embeddings",
]
