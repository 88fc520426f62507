"""Image tensors as files and sizes: the one uint8 conversion, PNG writer and square resize every package uses.

Example:
    >>> import torch
    >>> to_uint8(torch.ones(3, 2, 2)).shape
    (2, 2, 3)
    >>> tuple(resize_images(torch.zeros(2, 5, 3, 8, 8), 4).shape)
    (2, 5, 3, 4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
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


HEADER_PX = 14
ROW_LABEL_PX = 34


CHAR_PX, LINE_PX = 6, 11  # PIL's default bitmap font


def wrap_label(text: str, width_px: int) -> list[str]:
    """``text`` in lines that fit ``width_px`` (PIL's default font), broken after ``_`` / ``-`` / spaces where it can,
    inside a word only when a word alone is too wide: a label is never cut off."""
    per_line = max(1, width_px // CHAR_PX)
    words, lines, line = [w for w in _split_keep(str(text)) if w], [], ""
    for word in words:
        while len(word) > per_line:  # a word wider than the tile: break it
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(word[:per_line])
            word = word[per_line:]
        if len(line) + len(word.rstrip()) > per_line:
            lines.append(line.rstrip())
            line = ""
        line += word
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def _split_keep(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        cur += ch
        if ch in "_- ":
            out.append(cur)
            cur = ""
    return [*out, cur]


def labelled_grid(images: Tensor, column_labels: Sequence[str], row_labels: Sequence[str] | None = None,
                  tile_labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """images [R, C, 3, H, W] in [0, 1] -> one uint8 image with a header of ``column_labels`` (C names, wrapped onto
    as many lines as the longest needs, never cut), ``row_labels`` (R names) down the left when given, and
    ``tile_labels`` (R x C names, e.g. each tile's view when the views differ between rows) in each tile's corner.

    Example:
        >>> grid = labelled_grid(torch.rand(2, 3, 3, 16, 16), ["front", "right", "back"], ["pred", "gt"])
        >>> grid.shape[2], grid.dtype
        (3, dtype('uint8'))
    """
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"labelled_grid wants [R, C, 3, H, W], got {tuple(images.shape)}")
    r, c, _, h, w = images.shape
    if len(column_labels) != c or (row_labels is not None and len(row_labels) != r):
        raise ValueError(f"labelled_grid: {c} columns / {r} rows but {len(column_labels)} column labels and "
                         f"{None if row_labels is None else len(row_labels)} row labels")
    if tile_labels is not None and (len(tile_labels) != r or any(len(t) != c for t in tile_labels)):
        raise ValueError(f"labelled_grid: tile_labels must be {r} x {c}")
    tiles = to_uint8(images)  # [R, C, H, W, 3]
    body = tiles.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, 3)
    heads = [wrap_label(name, w - 2) for name in column_labels]
    header = HEADER_PX + LINE_PX * (max(len(x) for x in heads) - 1)
    rows_wrapped = [wrap_label(name, ROW_LABEL_PX - 2) for name in (row_labels or [])]
    left = ROW_LABEL_PX if row_labels is not None else 0
    canvas = Image.new("RGB", (left + c * w, header + r * h), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (left, header))
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(heads):
        draw.multiline_text((left + j * w + 2, 1), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    for i, lines in enumerate(rows_wrapped):
        draw.multiline_text((2, header + i * h + max(0, h // 2 - LINE_PX * len(lines) // 2)), "\n".join(lines),
                            fill=(0, 0, 0), spacing=0)
    for i, names in enumerate(tile_labels or []):
        for j, name in enumerate(names):
            lines = wrap_label(name, w - 2)
            x, y = left + j * w + 1, header + (i + 1) * h - LINE_PX * len(lines) - 1
            box = (x, y, x + CHAR_PX * max(len(s) for s in lines) + 2, header + (i + 1) * h - 1)
            draw.rectangle(box, fill=(255, 255, 255))
            draw.multiline_text((x + 1, y), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    return np.asarray(canvas)


__all__ = ["CHAR_PX", "LINE_PX", "labelled_grid", "resize_images", "save_png", "to_uint8", "wrap_label"]
