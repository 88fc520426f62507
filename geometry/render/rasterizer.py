"""``rasterize``: render Gaussians into OpenCV cameras with the torch reference or gsplat (the backend choice).

Conventions (docs/ARCHITECTURE.md): OpenCV cameras ``c2w`` [B, V, 4, 4], intrinsics ``fxfycxcy`` [B, V, 4] in pixels
with pixel centres at (u + 0.5, v + 0.5); the Gaussians as in :mod:`geometry.render.gaussians`. Both backends give the same
image (:mod:`geometry.render.torch_rasterizer` says how).

Example:
    >>> from geometry.cameras import look_at
    >>> g = Gaussians(means=torch.zeros(1, 1, 3), quats=torch.tensor([[[1.0, 0, 0, 0]]]),
    ...               scales=torch.full((1, 1, 3), 0.05), opacities=torch.full((1, 1), 0.8),
    ...               colors=torch.tensor([[[1.0, 0.0, 0.0]]]))
    >>> c2w = look_at(torch.tensor([0.0, -2.7, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    >>> out = rasterize(g, c2w[None, None], torch.tensor([[[40.0, 40.0, 16.5, 16.5]]]), 32, 32, torch.ones(3))
    >>> out["rgb"].shape, round(out["alpha"].max().item(), 2)
    (torch.Size([1, 1, 3, 32, 32]), 0.8)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.render.gaussians import Gaussians
from geometry.render.gsplat_backend import gsplat_available, rasterize_gsplat
from geometry.render.torch_rasterizer import rasterize_torch


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" -> "gsplat" when tensors are on CUDA and gsplat imports, else "torch"; others are checked."""
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and torch.cuda.is_available() and gsplat_available() else "torch"
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"rasterize: backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    return backend


def rasterize(
    gaussians: Gaussians,
    c2w: Tensor,
    fxfycxcy: Tensor,
    height: int,
    width: int,
    background: Tensor | Sequence[float] | None = None,
    backend: str = "auto",
    near: float = 0.01,
) -> dict[str, Tensor]:
    """Render B scenes of Gaussians into V OpenCV cameras each.

    Args:
        gaussians: Gaussians with batch B.  c2w: [B, V, 4, 4].  fxfycxcy: [B, V, 4] for ``height`` x ``width``.
        background: [B, 3] or [3] RGB in [0, 1] (default black), composited where the Gaussians leave light through.
        backend: "torch", "gsplat" or "auto" (gsplat on CUDA when installed, else torch).
        near: Gaussians whose centre is at camera z <= near are culled.
    Returns:
        {"rgb": [B, V, 3, H, W], "alpha": [B, V, 1, H, W], "depth": [B, V, 1, H, W]} (depth = expected z, 0 where
        alpha is 0). Differentiable w.r.t. every Gaussian field in both backends.
    """
    gaussians.validate("rasterize")
    b = gaussians.batch_size
    if c2w.dim() != 4 or c2w.shape[0] != b or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"rasterize: c2w must be [B={b}, V, 4, 4], got {tuple(c2w.shape)}")
    if fxfycxcy.shape != c2w.shape[:2] + (4,):
        raise ValueError(f"rasterize: fxfycxcy must be [B, V, 4] = {list(c2w.shape[:2]) + [4]}, "
                         f"got {list(fxfycxcy.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"rasterize: image size must be positive, got {height}x{width}")
    bg = _background(background, b, gaussians.means)
    c2w, fxfycxcy = c2w.to(gaussians.means), fxfycxcy.to(gaussians.means)
    name = resolve_backend(backend, gaussians.device)
    if name == "gsplat":
        return rasterize_gsplat(gaussians, c2w, fxfycxcy, height, width, bg, near)
    return rasterize_torch(gaussians, c2w, fxfycxcy, height, width, bg, near)


def _background(background, batch: int, like: Tensor) -> Tensor:
    if background is None:
        return torch.zeros(batch, 3, dtype=like.dtype, device=like.device)
    bg = torch.as_tensor(background).to(like)
    if bg.shape == (3,):
        return bg.expand(batch, 3)
    if bg.shape != (batch, 3):
        raise ValueError(f"rasterize: background must be [3] or [B={batch}, 3], got {list(bg.shape)}")
    return bg


__all__ = ["rasterize", "resolve_backend"]
