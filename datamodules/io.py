"""Pixels in, pixels out: PNG decoding (8/16-bit), compositing, resizing and centring that move the intrinsics
with the pixels, camera normalization and validation of one scene.

Images travel as float32 in [0, 1]: ``rgb`` [V, 3, H, W] *straight* (not premultiplied) color and ``alpha``
[V, 1, H, W]. Every function that changes pixel positions returns the matching intrinsics, computed with
``geometry.cameras`` (never re-derived here).

Example:
    >>> import torch
    >>> rgb, alpha = torch.rand(2, 3, 64, 64), torch.ones(2, 1, 64, 64)
    >>> k = torch.tensor([[60.0, 60.0, 32.0, 32.0]] * 2)
    >>> rgb2, alpha2, k2 = resize_views(rgb, alpha, k, 32)
    >>> rgb2.shape, k2[0].tolist()
    (torch.Size([2, 3, 32, 32]), [30.0, 30.0, 16.0, 16.0])
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geometry.cameras import (
    change_up,
    check_c2w,
    check_intrinsics,
    crop_intrinsics,
    normalize_cameras,
    scale_intrinsics,
)
from geometry.images import resize_images

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "black": (0.0, 0.0, 0.0)}
BACKGROUND_CHOICES = (*BACKGROUNDS, "random", "as_is")


class SampleError(ValueError):
    """A bad sample: the message names the file (or scene) and the problem; ``reason`` is how the skip report counts
    it (``on_bad_sample: skip``)."""

    reason = "bad_sample"


class EmptyMaskError(SampleError):
    """A scene whose views are all fully transparent: composited, it would be an all-background (white) input."""

    reason = "empty_mask"


# ---- PNG ---------------------------------------------------------------------------------------------------------
def png_header(data: bytes, where: str) -> tuple[int, int, int, int]:
    """(width, height, bit_depth, color_type) from a PNG's IHDR chunk; SampleError naming ``where`` otherwise."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise SampleError(f"{where}: not a PNG file (bad signature or missing IHDR; {len(data)} bytes)")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color


_KORNIA_MODES = {0: ("mono", 1), 2: ("rgb", 3), 6: ("rgba", 4)}  # PNG color type -> kornia_rs mode, channels


def decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode PNG bytes to [H, W, C] uint8 or uint16 (16-bit files keep all 16 bits), C in {1, 2, 3, 4}.

    Gray/RGB/RGBA at 8 or 16 bits go through kornia_rs (lossless at both depths); palette and gray+alpha files
    through Pillow (8-bit). Errors name ``where`` and the problem.
    """
    width, height, depth, color = png_header(data, where)
    try:
        if depth in (8, 16) and color in _KORNIA_MODES:
            import kornia_rs

            mode, _ = _KORNIA_MODES[color]
            fn = kornia_rs.io.decode_image_png_u16 if depth == 16 else kornia_rs.io.decode_image_png_u8
            arr = np.asarray(fn(data, (height, width), mode))
        else:
            from PIL import Image

            im = Image.open(io.BytesIO(data))
            im = im.convert("RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB")
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise SampleError(f"{where}: cannot decode PNG ({type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[:2] != (height, width):
        raise SampleError(f"{where}: decoded size {arr.shape[:2]} differs from the header's {(height, width)}")
    return arr


def read_bytes(path: str | Path) -> bytes:
    """File contents; SampleError naming the file when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SampleError(f"{path}: cannot read image ({e.strerror or e})") from None


def png_to_float(arr: np.ndarray) -> tuple[Tensor, Tensor | None]:
    """[H, W, C] uint8/uint16 -> (rgb [3, H, W], alpha [1, H, W] or None) float32 in [0, 1]."""
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    if arr.dtype == np.uint16:  # torch has no uint16 arithmetic to speak of: widen first
        arr = arr.astype(np.int32)
    # channels first while still integers (the cheap copy), then one conversion to float
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous().float().div_(scale)
    c = t.shape[0]
    if c == 1:
        return t.expand(3, -1, -1).contiguous(), None
    if c == 2:
        return t[:1].expand(3, -1, -1).contiguous(), t[1:2]
    return t[:3], (t[3:4] if c == 4 else None)


def load_png_views(blobs: list[bytes], wheres: list[str]) -> tuple[Tensor, Tensor | None]:
    """Decode one scene's views: (rgb [V, 3, H, W], alpha [V, 1, H, W] or None when no view has alpha).

    All views must share one size and one alpha policy: either every view has an alpha channel (RGBA, gray + alpha)
    or none has (RGB, gray: alpha None, the scene's background is in the pixels). A scene mixing the two (one RGB
    view among RGBA ones) is a SampleError naming the views, never silently given alpha = 1.
    """
    rgbs, alphas = [], []
    for data, where in zip(blobs, wheres):
        rgb, alpha = png_to_float(decode_png(data, where))
        if rgbs and rgb.shape != rgbs[0].shape:
            raise SampleError(f"{where}: size {tuple(rgb.shape[1:])} differs from the scene's first view "
                              f"{tuple(rgbs[0].shape[1:])}")
        rgbs.append(rgb)
        alphas.append(alpha)
    rgb = torch.stack(rgbs)
    if all(a is None for a in alphas):
        return rgb, None
    without = [where for where, a in zip(wheres, alphas) if a is None]
    if without:
        with_alpha = next(where for where, a in zip(wheres, alphas) if a is not None)
        raise SampleError(f"{without[0]}: no alpha channel, but other views of the scene have one (e.g. {with_alpha})"
                          f"; {len(without)} of {len(alphas)} views lack alpha: a scene's views must be all RGBA or "
                          "all without alpha")
    return rgb, torch.stack(alphas)


# ---- background --------------------------------------------------------------------------------------------------
def background_color(spec: str, rng: np.random.Generator | None = None) -> Tensor:
    """Background [3] for ``spec``: white / gray / black; ``random`` (a draw from ``rng``: sources' backgrounds);
    without ``rng`` (the tools' ``--background``) an ``R,G,B`` triple in [0, 1] instead. ``as_is`` has no color
    (see estimate_background)."""
    if spec in BACKGROUNDS:
        return torch.tensor(BACKGROUNDS[spec])
    if rng is not None:
        if spec == "random":
            return torch.from_numpy(rng.uniform(0.0, 1.0, 3)).float()
        raise ValueError(f"background must be one of {BACKGROUND_CHOICES}, got {spec!r}")
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)} or 'R,G,B' in [0, 1], got {spec!r}")
    return torch.tensor(values)


def estimate_background(rgb: Tensor, alpha: Tensor | None) -> Tensor:
    """Mean color [3] of view 0 outside the object (alpha < 0.5), or of its border when there is no alpha."""
    img = rgb[0]
    if alpha is not None and (alpha[0, 0] < 0.5).any():
        return img[:, alpha[0, 0] < 0.5].mean(-1)
    border = torch.cat([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], dim=-1)
    return border.mean(-1)


def composite(premult: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Premultiplied color [..., 3, H, W] over ``background`` [3]: premult + (1 - alpha) * bg, clamped to [0, 1]."""
    return torch.addcmul(premult, 1.0 - alpha, background.view(3, 1, 1).to(premult)).clamp_(0.0, 1.0)


# ---- resizing and centring ---------------------------------------------------------------------------------------
def resize_views(rgb: Tensor, alpha: Tensor | None, fxfycxcy: Tensor, size: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """Resize [V, C, H, W] views to ``size`` x ``size`` (antialiased bilinear); intrinsics [V, 4] rescaled."""
    src = tuple(rgb.shape[-2:])
    k = scale_intrinsics(fxfycxcy, src, (size, size))
    return resize_images(rgb, (size, size)), (None if alpha is None else resize_images(alpha, (size, size))), k


def alpha_bbox(alpha: Tensor, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """Pixel box (x0, y0, x1, y1) (pixel edges, continuous coordinates) of alpha [1, H, W] > threshold; None if empty."""
    mask = alpha[0] > threshold
    if not mask.any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.min()), float(ys.min()), float(xs.max()) + 1.0, float(ys.max()) + 1.0


def centering_box(alpha0: Tensor, fill: float = 0.6) -> tuple[float, float, float, float] | None:
    """Square box around view 0's object (alpha0 [1, H, W]) in which the object's longer side is ``fill``."""
    box = alpha_bbox(alpha0)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) / fill
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_views(x: Tensor, box: tuple[float, float, float, float], size: int, padding: str = "zeros") -> Tensor:
    """Crop [V, C, H, W] to the pixel box (x0, y0, x1, y1) (may extend past the image) and resize to ``size``.

    Sampling matches ``geometry.cameras.crop_intrinsics``: output pixel centre j + 0.5 samples the source at
    x0 + (j + 0.5) * (x1 - x0) / size. Large shrinks are antialiased by resizing first.
    """
    h, w = x.shape[-2:]
    x0, y0, x1, y1 = box
    shrink = size / max(x1 - x0, y1 - y0)
    if shrink < 0.75:  # pre-shrink with antialiasing, then sample at ~1:1
        hw = (max(1, round(h * shrink * 1.25)), max(1, round(w * shrink * 1.25)))
        sy, sx = hw[0] / h, hw[1] / w
        x, (h, w), (x0, y0, x1, y1) = resize_images(x, hw), hw, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    j = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    u = x0 + j * (x1 - x0)
    v = y0 + j * (y1 - y0)
    gx, gy = 2.0 * u / w - 1.0, 2.0 * v / h - 1.0
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).to(x)
    return F.grid_sample(x, grid[None].expand(len(x), -1, -1, -1), mode="bilinear", padding_mode=padding,
                         align_corners=False)


def center_views(premult: Tensor, alpha: Tensor, fxfycxcy: Tensor, size: int, fill: float = 0.6,
                 padding: str = "zeros", box_alpha: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Centre every view with view 0's alpha box (object ~``fill`` of the frame) and resize to ``size``.

    Args:
        premult: [V, 3, H, W] (premultiplied color, or the image as is with padding="border").  alpha: [V, 1, H, W].
        fxfycxcy: [V, 4].  box_alpha: [1, H, W] the alpha that defines the box (default: alpha[0]).
    Returns:
        (premult [V, 3, size, size], alpha [V, 1, size, size], fxfycxcy [V, 4]) — the same crop box for all views,
        intrinsics from ``crop_intrinsics``. Views are only resized when view 0 has no object.
    """
    box = centering_box(alpha[0] if box_alpha is None else box_alpha, fill)
    if box is None:
        rgb, a, k = resize_views(premult, alpha, fxfycxcy, size)
        return rgb, a, k
    k = crop_intrinsics(fxfycxcy, box, (size, size))
    return crop_views(premult, box, size, padding), crop_views(alpha, box, size, "zeros"), k


# ---- cameras -----------------------------------------------------------------------------------------------------
def normalize_scene_cameras(c2w: Tensor, target_radius: float = 2.7, up_from: str | None = None,
                            up_to: str | None = None) -> tuple[Tensor, Tensor, float]:
    """Optional up-axis change, then centre the scene at the rays' least-squares intersection and scale the mean
    camera distance to ``target_radius`` (geometry.cameras.normalize_cameras). Intrinsics are unchanged.

    Returns:
        (c2w [V, 4, 4], center [3] in the (up-changed) input world, scale): a world point p maps to
        (R_up p - center) * scale.
    """
    if up_from and up_to and up_from != up_to:
        c2w = change_up(c2w, up_from, up_to)
    if len(c2w) < 2:
        raise SampleError("camera normalization needs at least 2 views")
    out, center, scale = normalize_cameras(c2w.double(), target_radius)
    return out.to(c2w.dtype), center.to(c2w.dtype), scale


def validate_cameras(c2w: Tensor, fxfycxcy: Tensor, where: str, num_views: int | None = None) -> None:
    """SampleError naming ``where`` unless c2w [V, 4, 4] and fxfycxcy [V, 4] are sound and (optionally) V matches."""
    if c2w.ndim != 3 or fxfycxcy.ndim != 2 or len(c2w) != len(fxfycxcy):
        raise SampleError(f"{where}: cameras have shapes c2w {list(c2w.shape)}, fxfycxcy {list(fxfycxcy.shape)}")
    if num_views is not None and len(c2w) != num_views:
        raise SampleError(f"{where}: {len(c2w)} cameras, but {num_views} views were declared")
    try:  # all views in one check; only a failure is traced to its view
        check_c2w(c2w, where)
        check_intrinsics(fxfycxcy, where)
    except ValueError:
        for i in range(len(c2w)):
            try:
                check_c2w(c2w[i], f"{where} view {i}")
                check_intrinsics(fxfycxcy[i], f"{where} view {i}")
            except ValueError as e:
                raise SampleError(str(e)) from None
        raise


def validate_pixels(rgb: Tensor, alpha: Tensor | None, where: str, num_views: int,
                    sizes: list[tuple[int, int]] | None = None, views: list[int] | None = None) -> None:
    """SampleError naming ``where`` unless rgb [V, 3, H, W] / alpha are finite, V = num_views and sizes match
    (``views``: the scene's view numbers of the V images, for the message; default 0..V-1)."""
    if rgb.ndim != 4 or rgb.shape[1] != 3 or len(rgb) != num_views:
        raise SampleError(f"{where}: images have shape {list(rgb.shape)}, expected [{num_views}, 3, H, W]")
    if alpha is not None and (alpha.shape[0] != len(rgb) or alpha.shape[2:] != rgb.shape[2:]):
        raise SampleError(f"{where}: alpha shape {list(alpha.shape)} does not match images {list(rgb.shape)}")
    # a sum is non-finite iff some value is (images are bounded: no overflow); 30x cheaper than isfinite().all()
    if not torch.isfinite(rgb.sum()) or (alpha is not None and not torch.isfinite(alpha.sum())):
        raise SampleError(f"{where}: images have non-finite values")
    if sizes is not None:
        for i, hw in enumerate(sizes):
            if tuple(hw) != tuple(rgb.shape[-2:]):
                view = views[i] if views is not None else i
                raise SampleError(f"{where} view {view}: image is {tuple(rgb.shape[-2:])} (H, W) but the camera file "
                                  f"declares {tuple(hw)}")


__all__ = [
    "BACKGROUND_CHOICES", "EmptyMaskError", "SampleError", "alpha_bbox", "background_color", "center_views", "centering_box",
    "composite", "crop_views", "decode_png", "estimate_background", "load_png_views", "normalize_scene_cameras",
    "png_header", "png_to_float", "read_bytes", "resize_views", "validate_cameras", "validate_pixels",
]
