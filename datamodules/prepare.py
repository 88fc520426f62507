"""The one preparation of a scene's views: decode, check, premultiply, centre or resize, composite.

``SceneBuilder.build`` (training and validation samples) and the tools that take a data set's view as a model input
(``tools.synthesize --from-diffusion``'s reference photos) both call :func:`prepare_views`, so a reference is put on
the source's background exactly as in training.

Example:
    >>> from geometry.rig import load_rig
    >>> from datamodules.sources import build_source
    >>> rig = load_rig("facelift_6view")
    >>> src = build_source({"name": "p", "format": "procedural", "num_scenes": 1}, rig, 6, 32)
    >>> p = prepare_views(src, 0, src.cameras(0), [2], 16, rng=np.random.default_rng(0))
    >>> tuple(p.images.shape), p.views
    ((1, 3, 16, 16), [2])
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from datamodules.io import (
    EmptyMaskError,
    background_color,
    center_views,
    centering_box,
    composite,
    crop_views,
    estimate_background,
    resize_views,
    validate_pixels,
)
from datamodules.sources import SceneCameras, Source

EMPTY_ALPHA = 0.5 / 255  # alpha at or below it is transparent (an 8-bit 0)


@dataclasses.dataclass
class PreparedViews:
    """Views of one scene at the model's size: ``images`` [N, 3, S, S] composited over ``background`` [3] (or the
    photo's own background: ``as_is``), ``alpha`` [N, 1, S, S], ``fxfycxcy`` [N, 4] at S; row i is scene view
    ``views[i]`` (sorted, distinct; view 0 is decoded too when centring, its alpha gives the box)."""

    views: list[int]
    images: Tensor
    alpha: Tensor
    fxfycxcy: Tensor
    background: Tensor

    def rows(self, views: list[int]) -> Tensor:
        """Row indices of scene views ``views``."""
        pos = {v: i for i, v in enumerate(self.views)}
        return torch.tensor([pos[v] for v in views])


def prepare_views(source: Source, scene: int, cams: SceneCameras, views: list[int], image_size: int, *,
                  rng: np.random.Generator, center_crop: bool = False, center_fill: float = 0.6) -> PreparedViews:
    """Views ``views`` of ``source``'s scene ``scene`` (cameras ``cams``), prepared as the DataModule does
    (SampleError naming the scene for bad pixels; :class:`~datamodules.io.EmptyMaskError`, counted as ``empty_mask``,
    when every view is fully transparent and would be composited into a background-only image). Backgrounds:
    straight color times alpha over the source's ``background`` (``random``: drawn from ``rng``); ``as_is`` sources
    (and images without alpha) keep theirs, estimated for the sample's ``background``."""
    decode = sorted(set(views) | ({0} if center_crop else set()))
    rgb, alpha, _has_bg = source.pixels(scene, decode)
    sizes = None if cams.sizes is None else [cams.sizes[v] for v in decode]
    validate_pixels(rgb, alpha, cams.where, len(decode), sizes, views=decode)
    k = cams.fxfycxcy[decode]
    as_is = source.background == "as_is" or alpha is None
    if not as_is and not bool((alpha > EMPTY_ALPHA).any()):  # composited, every view would be the background alone
        raise EmptyMaskError(f"{cams.where}: views {decode} are fully transparent (empty_mask: alpha 0 everywhere), "
                             "nothing but background to learn from")
    if alpha is None:
        alpha = torch.ones_like(rgb[:, :1])
    premult = rgb if as_is else rgb * alpha
    if center_crop:
        premult, alpha, k = center_views(premult, alpha, k, image_size, center_fill, "border" if as_is else "zeros",
                                         box_alpha=alpha[decode.index(0)])
    else:
        premult, alpha, k = resize_views(premult, alpha, k, image_size)
    if as_is:
        images, bg = premult.clamp(0, 1), estimate_background(premult, alpha)
    else:
        bg = background_color(source.background, rng)
        images = composite(premult, alpha, bg)
    return PreparedViews(decode, images, alpha, k, bg)


def center_photo(rgb: Tensor, mask: Tensor | None, background: Tensor, fill: float = 0.6,
                 max_size: int = 1024) -> Tensor:
    """A photo of any size as a square model input, centred the DataModule's way: with a mask (alpha or a background
    remover's) the square box in which the mask's longer side is ``fill`` (``datamodules.io.center_views``, as
    ``prepare_views(center_crop=True)``), the premultiplied color composited over ``background``; without one, the
    photo padded to a square with its edge pixels. rgb [3, H, W], mask [1, H, W] | None -> [3, S, S], S = the box
    side in pixels (at least 16, at most ``max_size``)."""
    h, w = rgb.shape[-2:]
    if mask is not None and (mask > 0.5).any():
        box = centering_box(mask, fill)
        side = max(16, min(max_size, round(box[2] - box[0])))
        k = torch.zeros(1, 4)
        premult, alpha, _ = center_views((rgb * mask)[None], mask[None], k, side, fill, "zeros", box_alpha=mask)
        return composite(premult, alpha, background)[0]
    side = max(h, w)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return crop_views(rgb[None], box, max(16, min(max_size, side)), "border")[0]


__all__ = ["PreparedViews", "center_photo", "prepare_views"]
