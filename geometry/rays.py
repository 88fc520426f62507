"""Per-pixel rays of OpenCV cameras (pixel centres at +0.5), Plücker coordinates, nearest points to the origin.

Example:
    >>> import torch
    >>> from geometry.cameras import look_at
    >>> c2w = look_at(torch.tensor([0.0, -2.7, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    >>> o, d = pixel_rays(c2w, torch.tensor([4.0, 4.0, 2.0, 2.0]), 4, 4)
    >>> o.shape, d.shape
    (torch.Size([4, 4, 3]), torch.Size([4, 4, 3]))
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_rays(c2w: Tensor, fxfycxcy: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre.

    Args:
        c2w: [..., 4, 4] OpenCV camera-to-world.  fxfycxcy: [..., 4] for an image of ``height`` x ``width``.
    Returns:
        origins [..., H, W, 3] (the camera centre, broadcast), dirs [..., H, W, 3] unit directions.
    """
    dtype, device = c2w.dtype, c2w.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    fx, fy, cx, cy = (t[..., None, None] for t in fxfycxcy.to(dtype).unbind(-1))
    cam_dirs = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as((u - cx) / fx)], dim=-1)
    rot = c2w[..., None, None, :3, :3]  # [..., 1, 1, 3, 3]
    dirs = torch.nn.functional.normalize((rot @ cam_dirs[..., None]).squeeze(-1), dim=-1)
    origins = c2w[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def nearest_point_to_origin(origins: Tensor, dirs: Tensor) -> Tensor:
    """Point of each ray (unit ``dirs``) closest to the world origin: o - (o·d) d. [..., 3]."""
    return origins - (origins * dirs).sum(-1, keepdim=True) * dirs


def plucker(origins: Tensor, dirs: Tensor) -> Tensor:
    """Plücker coordinates (d, o x d) [..., 6] of rays with unit directions."""
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], dim=-1)
