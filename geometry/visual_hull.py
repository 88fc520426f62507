"""Do a scene's masks and cameras agree? The visual hull carved from all views, projected back into each view.

For silhouettes that agree with their cameras, the visual hull (the 3D points inside every view's mask) projects back
onto every view's mask exactly: its silhouette IoU is 1 up to sampling. A camera in the wrong place, in the wrong
units or in another order than its video, a mask from another frame, or an image cropped without its intrinsics
carves the hull away where the others see the animal, and the IoU of some views drops. This is the check
``tools.import_captures`` and ``tools.rig check`` report per view (``datamodules.captures``).

The hull is sampled along every pixel's ray (``samples`` points across a sphere of radius ``bound`` about
``center``); a point counts as inside a view when it projects onto a mask pixel (> 0.5) or outside that view's
frame (where the view cannot tell).

Example:
    >>> import torch
    >>> from geometry.rig import load_rig
    >>> c2w, k = load_rig("facelift_6view").cameras(32)
    >>> v, u = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    >>> disc = (((u - 16) ** 2 + (v - 16) ** 2) < 36).float()[None]  # a sphere seen by every camera
    >>> iou = silhouette_iou(c2w, k, disc.expand(6, 1, 32, 32), bound=1.0)
    >>> bool((iou > 0.9).all())
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.cameras import project_points, scale_intrinsics
from geometry.images import resize_images


def _lookup(masks: Tensor, uv: Tensor) -> Tensor:
    """masks [V, H, W] bool, uv [V, N, 2] continuous pixels -> [V, N] bool; outside the frame: True (the view says
    nothing there, so it carves nothing: subjects cut by a frame's border keep their hull)."""
    h, w = masks.shape[-2:]
    col, row = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
    return ~inside | torch.gather(masks.flatten(1), 1, flat)


def bound_from_masks(c2w: Tensor, fxfycxcy: Tensor, masks: Tensor, center: Tensor | None = None) -> float:
    """A radius about ``center`` (default origin) that holds the subject: 1.5 x the widest lateral extent any view
    of masks [V, 1, H, W] sees (mask pixels' distance from the centre's pixel, at the centre's depth); 1.0 when every
    mask is empty."""
    c2w, k = c2w.double(), fxfycxcy.double()
    center = torch.zeros(3, dtype=c2w.dtype) if center is None else torch.as_tensor(center, dtype=c2w.dtype)
    uv0, depth = project_points(center.expand(len(c2w), 1, 3), c2w, k)
    widest = 0.0
    for m, u, kk, d in zip(masks, uv0[:, 0], k, depth[:, 0]):
        ys, xs = torch.nonzero(m[0] > 0.5, as_tuple=True)
        if len(xs) and d > 0:
            r = ((xs + 0.5 - u[0]) ** 2 + (ys + 0.5 - u[1]) ** 2).sqrt().max() / kk[0] * d
            widest = max(widest, float(r))
    return 1.5 * widest if widest > 0 else 1.0


def hull_points(c2w: Tensor, fxfycxcy: Tensor, masks: Tensor, bound: float, center: Tensor | None = None,
                samples: int = 96) -> tuple[Tensor, Tensor]:
    """Sample the visual hull along every pixel ray of every view.

    Args:
        c2w: [V, 4, 4].  fxfycxcy: [V, 4] for the masks' size.  masks: [V, 1, H, W] (> 0.5 is the subject).
        bound: radius of the sphere about ``center`` (default origin) that holds the subject.
    Returns:
        (points [V, H*W, S, 3] world samples of each view's rays, inside [V, H*W, S] bool: in every view's mask).
    """
    c2w, k = c2w.double(), fxfycxcy.double()
    m = masks[:, 0] > 0.5
    nv, h, w = m.shape
    center = torch.zeros(3, dtype=c2w.dtype) if center is None else torch.as_tensor(center, dtype=c2w.dtype)
    v, u = torch.meshgrid(torch.arange(h, dtype=c2w.dtype) + 0.5, torch.arange(w, dtype=c2w.dtype) + 0.5,
                          indexing="ij")
    cam = torch.stack([(u.flatten()[None] - k[:, 2:3]) / k[:, 0:1], (v.flatten()[None] - k[:, 3:4]) / k[:, 1:2],
                       torch.ones(nv, h * w, dtype=c2w.dtype)], -1)  # [V, HW, 3]
    dirs = torch.nn.functional.normalize(cam @ c2w[:, :3, :3].transpose(-1, -2), dim=-1)
    origin = c2w[:, None, :3, 3]
    mid = ((center - c2w[:, :3, 3]) * c2w[:, :3, 2]).sum(-1)  # the centre's depth along each optical axis
    t = torch.linspace(-1.0, 1.0, samples, dtype=c2w.dtype) * bound
    depth = (mid[:, None] + t[None]).clamp_min(1e-6)  # [V, S]
    points = (origin[:, :, None] + dirs[:, :, None] * depth[:, None, :, None]).float()  # [V, HW, S, 3]
    flat = points.reshape(-1, 3)
    alive = torch.arange(len(flat))
    for j in range(nv):  # one view at a time, projecting only the samples no view has carved yet
        uv, z = project_points(flat[alive], c2w[j].float(), k[j].float())
        alive = alive[_lookup(m[j:j + 1], uv[None])[0] & (z > 0)]
    inside = torch.zeros(len(flat), dtype=torch.bool)
    inside[alive] = True
    return points, inside.reshape(nv, h * w, samples)


def silhouette_iou(c2w: Tensor, fxfycxcy: Tensor, masks: Tensor, bound: float, center: Tensor | None = None,
                   samples: int = 96) -> Tensor:
    """Per view, the IoU [V] of the visual hull's silhouette (from all views) with the view's own mask.

    Args: as :func:`hull_points`. An empty mask gives IoU 0 for that view (and carves away every other view's hull).
    """
    return silhouette_iou_from(hull_points(c2w, fxfycxcy, masks, bound, center, samples)[1], masks)


def hull_at_size(c2w: Tensor, fxfycxcy: Tensor, masks: list[Tensor], size: int = 64, samples: int = 96
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """The hull check of one scene: masks [1, H_v, W_v] per view (any sizes, with their intrinsics fxfycxcy [V, 4])
    resized to ``size`` px, the subject bounded by :func:`bound_from_masks`, the hull sampled (:func:`hull_points`
    about the origin). Returns (points [V, size², S, 3], inside [V, size², S], silhouette IoU [V])."""
    small = torch.stack([resize_images(m.float(), size) for m in masks])
    k = torch.stack([scale_intrinsics(kv.double(), m.shape[-2:], (size, size)) for kv, m in zip(fxfycxcy, masks)])
    points, inside = hull_points(c2w, k, small, bound_from_masks(c2w, k, small), samples=samples)
    return points, inside, silhouette_iou_from(inside, small)


def silhouette_iou_from(inside: Tensor, masks: Tensor) -> Tensor:
    """IoU [V] of the hull's silhouettes (``inside`` [V, H*W, S] of :func:`hull_points`) with masks [V, 1, H, W]."""
    sil = inside.any(-1)
    m = (masks[:, 0] > 0.5).flatten(1)
    inter, union = (sil & m).sum(-1).double(), (sil | m).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


__all__ = ["bound_from_masks", "hull_at_size", "hull_points", "silhouette_iou", "silhouette_iou_from"]
