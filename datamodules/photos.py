"""Input photos (tools.infer, tools.synthesize --matting): reading (errors name the file), pluggable background removal, compositing, PNGs.

Background removal (``--background-removal``) is one of

- ``alpha`` (default): an image with an alpha channel is composited over the model's background color; an image
  without one is used as is;
- ``none``: the RGB channels as they are (any alpha channel is ignored);
- ``MODULE:FUNCTION``: a local Python callable the user provides (imported, never downloaded). It is called as
  ``FUNCTION(image: PIL.Image.Image) -> result`` with the RGB image, and returns either an RGBA image (PIL image or
  [H, W, 4] array) whose alpha is the foreground mask, or a mask alone (PIL ``L`` image or [H, W] array; uint8 in
  0..255 or float in [0, 1]). The result must have the input's size. The mask is then composited over the
  background like ``alpha``.

Example:
    >>> import torch
    >>> rgb, alpha = torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)
    >>> out = composite_over(rgb, alpha, torch.ones(3))
    >>> float(out.min())
    1.0
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from datamodules.io import SampleError, decode_png, png_to_float
from geometry.images import to_uint8

BUILTIN_REMOVAL = ("alpha", "none")


class ImageInputError(ValueError):
    """A bad input image; the message names the file."""


def read_image(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """(rgb [3, H, W], alpha [1, H, W] or None) float32 in [0, 1]; 8- and 16-bit PNGs keep their precision, other
    formats (JPEG, ...) go through Pillow with their EXIF orientation applied."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageInputError(f"{path}: cannot read image ({e.strerror or e})") from None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        try:
            return png_to_float(decode_png(data, str(path)))
        except SampleError as e:
            raise ImageInputError(str(e)) from None
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        im = ImageOps.exif_transpose(im)  # camera photos: apply the EXIF orientation
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise ImageInputError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB")).astype(np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    return (t[:3], t[3:4]) if has_alpha else (t, None)


def check_square(rgb: Tensor, path: str | Path, min_size: int = 16) -> None:
    """The views are square crops: a non-square or tiny input is an error naming the file and its size."""
    h, w = rgb.shape[-2:]
    if h != w:
        raise ImageInputError(f"{path}: image is {w}x{h} px; the model takes square images (crop it around the "
                              "animal first)")
    if h < min_size:
        raise ImageInputError(f"{path}: image is {w}x{h} px, smaller than the minimum {min_size}x{min_size}")


def composite_over(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Straight color [..., 3, H, W] with alpha [..., 1, H, W] over ``background`` [3] -> [..., 3, H, W]."""
    bg = background.to(rgb).view(3, 1, 1)
    return (rgb * alpha + bg * (1.0 - alpha)).clamp(0.0, 1.0)


def load_callable(spec: str) -> Callable[..., Any]:
    """``MODULE:FUNCTION`` -> the callable (a local import; errors name the spec)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r}: expected 'alpha', 'none' or MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"{spec!r}: {attr!r} is not callable")  # noqa: TRY004 - a bad option value
    return fn


def mask_from_result(result: Any, size: tuple[int, int], where: str) -> Tensor:
    """Alpha [1, H, W] in [0, 1] from a background remover's result (see module docstring)."""
    if isinstance(result, Image.Image):
        if result.mode in ("RGBA", "LA") or "transparency" in result.info:
            result = np.asarray(result.convert("RGBA"))[..., 3]
        elif result.mode in ("L", "1", "F", "I"):
            result = np.asarray(result.convert("F") if result.mode in ("I",) else result)
        else:
            raise ImageInputError(f"{where}: background remover returned a {result.mode} image without alpha; "
                                  "return RGBA or a mask")
    if isinstance(result, Tensor):
        result = result.detach().cpu().numpy()
    arr = np.asarray(result)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., 3]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or tuple(arr.shape) != tuple(size):
        raise ImageInputError(f"{where}: background remover returned shape {list(arr.shape)}; expected an RGBA "
                              f"image or a mask of size {size[1]}x{size[0]}")
    if arr.dtype == np.bool_:
        mask = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        mask = arr.astype(np.float32) / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    else:
        mask = arr.astype(np.float32)
    if not np.isfinite(mask).all() or mask.min(initial=0) < 0 or mask.max(initial=0) > 1:
        raise ImageInputError(f"{where}: background remover's mask is not in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(mask))[None]


def _check_not_empty(mask: Tensor, what: str) -> None:
    """An all-transparent photo would be composited into the background alone: refused by name."""
    if not bool((mask > 0.5 / 255).any()):
        raise ImageInputError(f"{what} is fully transparent (alpha 0 everywhere): nothing but background would be "
                              "lifted; use --background-removal none to take the pixels as they are")


class BackgroundRemoval:
    """The ``--background-removal`` step (module docstring). ``__call__(rgb, alpha, where) -> (image, alpha, how)``
    with the image composited over ``background``; ``how`` says what was done (for logs and info files)."""

    def __init__(self, spec: str = "alpha", background: Tensor | None = None):
        self.spec = spec
        self.background = background if background is not None else torch.ones(3)
        self.fn = None if spec in BUILTIN_REMOVAL else load_callable(spec)

    def __call__(self, rgb: Tensor, alpha: Tensor | None, where: str) -> tuple[Tensor, Tensor | None, str]:
        if self.spec == "none":
            return rgb, None, "none: used as is"
        if self.spec == "alpha":
            if alpha is None:
                return rgb, None, "alpha: the image has no alpha channel, used as is"
            _check_not_empty(alpha, f"{where}: its alpha channel")
            return composite_over(rgb, alpha, self.background), alpha, "alpha: composited over the background"
        pil = Image.fromarray(to_uint8(rgb))
        try:
            result = self.fn(pil)
        except Exception as e:  # the user's callable: report which file it failed on
            raise ImageInputError(f"{where}: background remover {self.spec} failed ({type(e).__name__}: {e})") from e
        mask = mask_from_result(result, tuple(rgb.shape[-2:]), f"{where} ({self.spec})")
        _check_not_empty(mask, f"{where}: the mask of background remover {self.spec}")
        return composite_over(rgb, mask, self.background), mask, f"{self.spec}: mask composited over the background"


__all__ = [
    "BackgroundRemoval", "ImageInputError", "check_square", "composite_over", "load_callable", "mask_from_result",
    "read_image",
]
