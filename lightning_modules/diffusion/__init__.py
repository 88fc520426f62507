"""The diffusion stage (MVDiffusion): ``module`` (DiffusionModule), ``sampling`` (schedulers, guidance, the denoising
loop), ``conditioning`` (the module's conditioning mixin), ``view_conditioning`` (per-view embeddings bound to a rig),
``mv_attention`` (self-attention across the views), ``pretrained`` (pipeline folders, autoencoders), ``mv_pipeline``
(an export as a diffusers pipeline).

``lightning_modules.diffusion.DiffusionModule`` (the configs' ``class_path``) is imported on first use, so the light
submodules (``sampling``) load without diffusers' models.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DiffusionModule":
        from lightning_modules.diffusion.module import DiffusionModule

        return DiffusionModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DiffusionModule"]
