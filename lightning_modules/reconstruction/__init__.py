"""The reconstruction stage (GS-LRM): ``module`` (ReconstructionModule: optimisation, rendering, validation),
``gslrm`` (the transformer from posed views to per-pixel Gaussians), ``losses`` (MSE, SSIM, perceptual, masked).

``lightning_modules.reconstruction.ReconstructionModule`` (the configs' ``class_path``) is imported on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ReconstructionModule":
        from lightning_modules.reconstruction.module import ReconstructionModule

        return ReconstructionModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ReconstructionModule"]
