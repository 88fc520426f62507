"""The pure PyTorch reference rasterizer (CPU or GPU, differentiable): EWA projection, tiles, compositing.

It follows gsplat's "classic" 3DGS rasterization so both backends give the same image:
EWA projection of the 3D covariance with the perspective Jacobian (clamped to 1.3x the field of view), a 0.3 px^2
low-pass added to the 2D covariance, per-pixel alpha = min(0.999, opacity * exp(-0.5 d^T conic d)) with alphas below
1/255 skipped, front-to-back compositing sorted by camera depth that stops before transmittance falls to 1e-4,
Gaussians nearer than ``near`` culled. ``depth`` is the expected camera z, sum(w z) / alpha (0 where nothing is).

Call it through :func:`geometry.render.rasterizer.rasterize` (argument checks, background, backend choice).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from geometry.cameras import invert_rigid
from geometry.render.gaussians import Gaussians, covariance_3d

ALPHA_MAX = 0.999  # gsplat's per-Gaussian alpha clamp (the original 3DGS kernel uses 0.99)
ALPHA_MIN = 1.0 / 255.0  # per-pixel contributions below this are skipped (both backends)
TRANSMITTANCE_MIN = 1e-4  # compositing stops before T would fall to this (exclusive, like gsplat)
EPS2D = 0.3  # low-pass filter added to the projected covariance's diagonal, in px^2
FOV_CLAMP_MARGIN = 0.3  # the Jacobian uses x/z, y/z clamped to the image plus 30% of the half field of view


@dataclasses.dataclass
class _Projected:
    """Gaussians of one view in screen space; all [N, ...]."""

    means2d: Tensor  # [N, 2] pixels
    conics: Tensor  # [N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [N] camera z
    opacities: Tensor  # [N]
    colors: Tensor  # [N, 3]
    radii: Tensor  # [N, 2] half extent in x, y (px) beyond which alpha < ALPHA_MIN; no grad
    visible: Tensor  # [N] bool


def project_gaussians(g: Gaussians, c2w: Tensor, k: Tensor, height: int, width: int, near: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of every scene's Gaussians into every view.

    Args:
        g: batch B, N Gaussians.  c2w: [B, V, 4, 4].  k: [B, V, 4].
    Returns:
        means2d [B, V, N, 2], conics [B, V, N, 3], depths [B, V, N], radii [B, V, N, 2] (no grad),
        visible [B, V, N] bool (in front of ``near``, footprint overlapping the image, opacity >= ALPHA_MIN).
    """
    w2c = invert_rigid(c2w)
    rot, trans = w2c[..., :3, :3], w2c[..., :3, 3]  # [B, V, 3, 3], [B, V, 3]
    cam = torch.einsum("bvij,bnj->bvni", rot, g.means) + trans[:, :, None]  # [B, V, N, 3]
    tx, ty, tz = cam.unbind(-1)
    fx, fy, cx, cy = (t[..., None] for t in k.unbind(-1))  # [B, V, 1]
    visible = tz > near
    z = torch.where(visible, tz, torch.ones_like(tz))  # keep culled ones finite (they get zero weight anyway)
    lim_xp = (width - cx) / fx + FOV_CLAMP_MARGIN * 0.5 * width / fx
    lim_xn = cx / fx + FOV_CLAMP_MARGIN * 0.5 * width / fx
    lim_yp = (height - cy) / fy + FOV_CLAMP_MARGIN * 0.5 * height / fy
    lim_yn = cy / fy + FOV_CLAMP_MARGIN * 0.5 * height / fy
    jx = z * torch.maximum(torch.minimum(tx / z, lim_xp), -lim_xn)
    jy = z * torch.maximum(torch.minimum(ty / z, lim_yp), -lim_yn)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * jx / z**2, zero, fy / z, -fy * jy / z**2], -1).unflatten(-1, (2, 3))
    cov_world = covariance_3d(g.quats, g.scales)  # [B, N, 3, 3]
    cov_cam = torch.einsum("bvij,bnjk,bvlk->bvnil", rot, cov_world, rot)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)  # [B, V, N, 2, 2]
    a = cov2d[..., 0, 0] + EPS2D
    bxy = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + EPS2D
    det = a * c - bxy * bxy
    visible = visible & (det > 0)
    det = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det, -bxy / det, a / det], -1)
    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], -1)
    with torch.no_grad():
        opac = g.opacities[:, None].expand_as(z)
        # alpha = opac * exp(-m^2 / 2) >= ALPHA_MIN  <=>  m <= sqrt(2 ln(opac / ALPHA_MIN)); the ellipse's bounding
        # box is |dx| <= m sqrt(cov_xx), |dy| <= m sqrt(cov_yy), so culling by it drops nothing that would be drawn.
        extend = torch.sqrt(2.0 * torch.log((opac / ALPHA_MIN).clamp_min(1.0)))
        radii = torch.stack([extend * a.sqrt(), extend * c.sqrt()], -1) + 0.5
        lo, hi = means2d - radii, means2d + radii
        on_image = (hi[..., 0] >= 0) & (lo[..., 0] <= width) & (hi[..., 1] >= 0) & (lo[..., 1] <= height)
        visible = visible & on_image & (opac >= ALPHA_MIN) & torch.isfinite(means2d).all(-1)
    return means2d, conics, tz, radii, visible


def _composite_tiles(pix: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, feats: Tensor,
                     valid: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians over tiles of pixels.

    Args:
        pix: [T, P, 2] pixel centres.  means2d: [T, K, 2], conics: [T, K, 3], opacities: [T, K],
        feats: [T, K, C] (colors and depth), valid: [T, K] bool (padding is False). K is depth-ordered.
    Returns:
        (accumulated features [T, P, C] = sum_i w_i f_i, alpha [T, P] = sum_i w_i).
    """
    d = pix[:, :, None, :] - means2d[:, None, :, :]  # [T, P, K, 2]
    dx, dy = d[..., 0], d[..., 1]
    ca, cb, cc = (t[:, None, :] for t in conics.unbind(-1))
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = (opacities[:, None, :] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    keep = valid[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    log_t = torch.cumsum(torch.log1p(-alpha), dim=-1)  # log T after each Gaussian
    alive = log_t > math.log(TRANSMITTANCE_MIN)  # exclusive stop, as in gsplat
    weights = torch.where(alive, alpha * torch.exp(log_t - torch.log1p(-alpha)), torch.zeros_like(alpha))
    return weights @ feats, weights.sum(-1)


def _tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, visible: Tensor, height: int, width: int,
                tile: int) -> tuple[Tensor, Tensor]:
    """Per tile, the depth-sorted indices of the Gaussians whose footprint box touches it.

    Returns:
        (index [T, Kmax] long into the N Gaussians, padded with N; count [T]).
    """
    ty, tx = math.ceil(height / tile), math.ceil(width / tile)
    order = torch.argsort(torch.where(visible, depths, torch.full_like(depths, float("inf"))))
    order = order[visible[order]]
    lo = (means2d[order] - radii[order]).detach()
    hi = (means2d[order] + radii[order]).detach()
    x0 = torch.arange(tx, device=lo.device, dtype=lo.dtype) * tile  # tile pixel-edge bounds
    y0 = torch.arange(ty, device=lo.device, dtype=lo.dtype) * tile
    hit_x = (hi[None, :, 0] >= x0[:, None]) & (lo[None, :, 0] <= x0[:, None] + tile)  # [tx, M]
    hit_y = (hi[None, :, 1] >= y0[:, None]) & (lo[None, :, 1] <= y0[:, None] + tile)  # [ty, M]
    hits = (hit_y[:, None, :] & hit_x[None, :, :]).reshape(ty * tx, -1)  # [T, M], columns depth-sorted
    count = hits.sum(-1)
    kmax = max(int(count.max().item()) if count.numel() else 0, 1)
    tile_id, col = torch.nonzero(hits, as_tuple=True)  # row-major: within a tile, columns stay depth-sorted
    slot = torch.arange(tile_id.numel(), device=lo.device) - (torch.cumsum(count, 0) - count)[tile_id]
    index = torch.full((ty * tx, kmax), means2d.shape[0], dtype=torch.long, device=lo.device)
    index[tile_id, slot] = order[col]
    return index, count


def _render_view_torch(p: _Projected, height: int, width: int, tile: int, budget: int) -> tuple[Tensor, Tensor]:
    """One view: (features [H, W, 4] = rgb + z sums, alpha [H, W])."""
    n, dev, dt = p.means2d.shape[0], p.means2d.device, p.means2d.dtype
    feats = torch.cat([p.colors, p.depths[:, None]], -1)  # [N, 4]
    index, count = _tile_lists(p.means2d, p.radii, p.depths, p.visible, height, width, tile)
    ty, tx = math.ceil(height / tile), math.ceil(width / tile)
    # pixel centres of every tile (tiles past the image edge are cropped at the end)
    ys = (torch.arange(ty * tile, device=dev, dtype=dt) + 0.5).view(ty, 1, tile, 1).expand(ty, tx, tile, tile)
    xs = (torch.arange(tx * tile, device=dev, dtype=dt) + 0.5).view(1, tx, 1, tile).expand(ty, tx, tile, tile)
    pix = torch.stack([xs, ys], -1).reshape(ty * tx, tile * tile, 2)
    pad = lambda t, v: torch.cat([t, torch.full_like(t[:1], v)], 0)
    m2, con = pad(p.means2d, 0.0), pad(p.conics, 0.0)
    opa, ft = pad(p.opacities, 0.0), pad(feats, 0.0)
    out_f = torch.zeros(ty * tx, tile * tile, 4, device=dev, dtype=dt)
    out_a = torch.zeros(ty * tx, tile * tile, device=dev, dtype=dt)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (m2, con, opa, ft))
    counts = count.tolist()
    tiles_with = sorted((t for t, c in enumerate(counts) if c > 0), key=counts.__getitem__)  # little padding
    start = 0
    while start < len(tiles_with):  # chunks of tiles whose [tiles, pixels, K] work fits the budget
        kmax = counts[tiles_with[start]]
        stop = start + 1
        while stop < len(tiles_with):
            k_next = max(kmax, counts[tiles_with[stop]])
            if (stop - start + 1) * tile * tile * k_next > budget:
                break
            kmax, stop = k_next, stop + 1
        sel = torch.tensor(tiles_with[start:stop], device=dev)
        idx = index[sel, :kmax]
        args = (pix[sel], m2[idx], con[idx], opa[idx], ft[idx], idx < n)
        if need_grad:  # recompute in backward: autograd memory stays one chunk, not H*W*K
            f, a = checkpoint(_composite_tiles, *args, use_reentrant=False)
        else:
            f, a = _composite_tiles(*args)
        out_f = out_f.index_put((sel,), f)
        out_a = out_a.index_put((sel,), a)
        start = stop

    def untile(t: Tensor) -> Tensor:
        t = t.view(ty, tx, tile, tile, -1).permute(0, 2, 1, 3, 4).reshape(ty * tile, tx * tile, -1)
        return t[:height, :width]

    return untile(out_f), untile(out_a)[..., 0]


def rasterize_torch(g: Gaussians, c2w: Tensor, k: Tensor, height: int, width: int, bg: Tensor, near: float,
                    tile: int = 8, budget: int = 1 << 21) -> dict[str, Tensor]:
    """:func:`geometry.render.rasterizer.rasterize` on the torch reference, after its checks (``bg`` [B, 3])."""
    means2d, conics, depths, radii, visible = project_gaussians(g, c2w, k, height, width, near)
    b, v = c2w.shape[:2]
    rgb, alpha, depth = [], [], []
    for i in range(b):
        for j in range(v):
            p = _Projected(means2d[i, j], conics[i, j], depths[i, j], g.opacities[i], g.colors[i], radii[i, j],
                           visible[i, j])
            f, a = _render_view_torch(p, height, width, tile, budget)
            a = a[..., None]
            rgb.append(f[..., :3] + (1.0 - a) * bg[i])
            alpha.append(a)
            depth.append(f[..., 3:] / a.clamp_min(1e-10))
    return {"rgb": _stack_views(rgb, b, v), "alpha": _stack_views(alpha, b, v), "depth": _stack_views(depth, b, v)}


def _stack_views(images: list[Tensor], b: int, v: int) -> Tensor:
    """B*V images [H, W, C] -> [B, V, C, H, W]."""
    return torch.stack(images).unflatten(0, (b, v)).permute(0, 1, 4, 2, 3)


__all__ = ["ALPHA_MAX", "ALPHA_MIN", "EPS2D", "FOV_CLAMP_MARGIN", "TRANSMITTANCE_MIN", "project_gaussians",
           "rasterize_torch"]
