"""Image tensors as files and sizes: the one uint8 conversion, PNG writer and square resize every package uses.

Example:
    >>> import torch
    >>> to_uint8(torch.ones(3, 2, 2)).shape
    (2, 2, 3)
    >>> tuple(resize_images(torch.zeros(2, 5, 3, 8, 8), 4).shape)
    (2, 5, 3, 4, 4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., C, H, W] in [0, 1] -> [..., H, W, C] uint8 (rounded, clamped)."""
    return (images.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).movedim(-3, -1).cpu().numpy()


def save_png(path: str | Path, rgb: Tensor, alpha: Tensor | None = None) -> Path:
    """Write rgb [3, H, W] (+ alpha [1, H, W]) in [0, 1] as an 8-bit RGB(A) PNG; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = rgb if alpha is None else torch.cat([rgb, alpha.to(rgb)], 0)
    Image.fromarray(to_uint8(x)).save(path)
    return path


def resize_images(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """[..., C, H, W] -> [..., C, size, size] (or ``size`` = (H, W)): antialiased bilinear; unchanged when already
    that size."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    lead = images.shape[:-3]
    x = F.interpolate(images.reshape(-1, *images.shape[-3:]), size=hw, mode="bilinear", align_corners=False,
                      antialias=True)
    return x.view(*lead, images.shape[-3], *hw)


__all__ = ["resize_images", "save_png", "to_uint8"]
