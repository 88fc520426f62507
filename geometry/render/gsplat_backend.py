"""The gsplat CUDA backend (optional: ``pip install mvlift[gpu]``), set up to match the torch reference."""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.cameras import intrinsics_matrix, invert_rigid
from geometry.render.gaussians import Gaussians
from geometry.render.torch_rasterizer import EPS2D


def gsplat_available() -> bool:
    """True when gsplat imports (it is optional: ``pip install mvlift[gpu]``)."""
    try:
        import gsplat  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken CUDA build raising at import)
        return False
    return True


def _import_gsplat():
    try:
        import gsplat
    except Exception as e:
        raise RuntimeError(
            "rasterize(backend='gsplat') needs the gsplat package (CUDA); it could not be imported "
            f"({type(e).__name__}: {e}). Install it with `pip install gsplat>=1.4` (the `gpu` extra) or use "
            "backend='torch'."
        ) from e
    return gsplat


def rasterize_gsplat(g: Gaussians, c2w: Tensor, k: Tensor, height: int, width: int, bg: Tensor,
                     near: float) -> dict[str, Tensor]:
    """:func:`geometry.render.rasterizer.rasterize` on gsplat (CUDA tensors), after its checks (``bg`` [B, 3])."""
    gsplat = _import_gsplat()
    if g.device.type != "cuda":
        raise ValueError(f"rasterize(backend='gsplat') needs CUDA tensors, got {g.device}; use backend='torch'")
    rgb, alpha, depth = [], [], []
    views = c2w.shape[1]
    for i in range(g.batch_size):  # one call per scene: works with gsplat 1.4 (no batch dims) and 1.5+
        colors, alphas, _ = gsplat.rasterization(
            means=g.means[i].float().contiguous(), quats=g.quats[i].float().contiguous(),
            scales=g.scales[i].float().contiguous(), opacities=g.opacities[i].float().contiguous(),
            colors=g.colors[i].float().contiguous(), viewmats=invert_rigid(c2w[i]).float().contiguous(),
            Ks=intrinsics_matrix(k[i]).float().contiguous(), width=width, height=height, near_plane=near,
            eps2d=EPS2D, packed=False, backgrounds=bg[i].float().expand(views, 3).contiguous(),
            render_mode="RGB+ED", rasterize_mode="classic",
        )  # colors [V, H, W, 4] (RGB + expected depth), alphas [V, H, W, 1]
        rgb.append(colors[..., :3].permute(0, 3, 1, 2))
        depth.append(colors[..., 3:].permute(0, 3, 1, 2))
        alpha.append(alphas.permute(0, 3, 1, 2))
    dt = g.dtype
    return {"rgb": torch.stack(rgb).to(dt), "alpha": torch.stack(alpha).to(dt), "depth": torch.stack(depth).to(dt)}


__all__ = ["gsplat_available", "rasterize_gsplat"]
