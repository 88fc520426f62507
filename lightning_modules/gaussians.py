"""3D Gaussians: the container, a differentiable rasterizer (pure PyTorch reference + gsplat CUDA) and PLY I/O.

Conventions (docs/ARCHITECTURE.md): OpenCV cameras ``c2w`` [B, V, 4, 4], intrinsics ``fxfycxcy`` [B, V, 4] in pixels
with pixel centres at (u + 0.5, v + 0.5). A :class:`Gaussians` holds tensors with a leading batch dim:
``means`` [B, N, 3], ``quats`` [B, N, 4] (w, x, y, z; not necessarily normalized), ``scales`` [B, N, 3] (linear),
``opacities`` [B, N] in [0, 1], ``colors`` [B, N, 3] in [0, 1] (:meth:`Gaussians.from_sh0` takes SH degree-0
coefficients instead).

The torch backend follows gsplat's "classic" 3DGS rasterization so both give the same image:
EWA projection of the 3D covariance with the perspective Jacobian (clamped to 1.3x the field of view), a 0.3 px^2
low-pass added to the 2D covariance, per-pixel alpha = min(0.999, opacity * exp(-0.5 d^T conic d)) with alphas below
1/255 skipped, front-to-back compositing sorted by camera depth that stops before transmittance falls to 1e-4,
Gaussians nearer than ``near`` culled. ``depth`` is the expected camera z, sum(w z) / alpha (0 where nothing is).

Example:
    >>> g = Gaussians(means=torch.zeros(1, 1, 3), quats=torch.tensor([[[1.0, 0, 0, 0]]]),
    ...               scales=torch.full((1, 1, 3), 0.05), opacities=torch.full((1, 1), 0.8),
    ...               colors=torch.tensor([[[1.0, 0.0, 0.0]]]))
    >>> c2w = look_at(torch.tensor([0.0, -2.7, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    >>> out = rasterize(g, c2w[None, None], torch.tensor([[[40.0, 40.0, 16.5, 16.5]]]), 32, 32, torch.ones(3))
    >>> out["rgb"].shape, round(out["alpha"].max().item(), 2)
    (torch.Size([1, 1, 3, 32, 32]), 0.8)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from geometry.cameras import intrinsics_matrix, invert_rigid, look_at  # noqa: F401  (look_at: docstring example)
from geometry.files import write_atomic

ALPHA_MAX = 0.999  # gsplat's per-Gaussian alpha clamp (the original 3DGS kernel uses 0.99)
ALPHA_MIN = 1.0 / 255.0  # per-pixel contributions below this are skipped (both backends)
TRANSMITTANCE_MIN = 1e-4  # compositing stops before T would fall to this (exclusive, like gsplat)
EPS2D = 0.3  # low-pass filter added to the projected covariance's diagonal, in px^2
FOV_CLAMP_MARGIN = 0.3  # the Jacobian uses x/z, y/z clamped to the image plus 30% of the half field of view
SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic; 3DGS stores f_dc = (rgb - 0.5) / SH_C0

PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)


# ---- container ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Gaussians:
    """A batch of 3D Gaussian scenes (shapes in the module docstring). Fields are plain tensors (autograd-friendly)."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> Gaussians:
        """Same as ``Tensor.to`` on every field (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def select(self, b: int) -> Gaussians:
        """Scene ``b`` keeping a batch dim of 1."""
        return self._map(lambda t: t[b: b + 1])

    def subset(self, index: Tensor) -> Gaussians:
        """Gaussians ``index`` (a [N] bool mask or [K] long indices) of every scene."""
        return self._map(lambda t: t[:, index])

    @staticmethod
    def cat(items: Sequence[Gaussians], dim: int = 1) -> Gaussians:
        """Concatenate scenes (dim=0, same N) or the Gaussians of each scene (dim=1, same B)."""
        if not items:
            raise ValueError("Gaussians.cat needs at least one item")
        if dim not in (0, 1):
            raise ValueError(f"Gaussians.cat: dim must be 0 (scenes) or 1 (Gaussians), got {dim}")
        names = [f.name for f in dataclasses.fields(Gaussians)]
        return Gaussians(**{n: torch.cat([getattr(g, n) for g in items], dim=dim) for n in names})

    @classmethod
    def from_sh0(cls, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, sh0: Tensor) -> Gaussians:
        """Build from degree-0 spherical-harmonic colour coefficients ``sh0`` [B, N, 3] instead of RGB.

        ``colors = clamp(sh0 * SH_C0 + 0.5, 0, 1)`` (view-independent 3DGS colour, clamped like GS-LRM's head), so the
        rasterizer and every other consumer keep seeing RGB in [0, 1].
        """
        return cls(means, quats, scales, opacities, (sh0 * SH_C0 + 0.5).clamp(0.0, 1.0))

    @staticmethod
    def unbatched(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor) -> Gaussians:
        """Build a B=1 batch from per-scene tensors ([N, 3], [N, 4], [N, 3], [N], [N, 3])."""
        return Gaussians(means[None], quats[None], scales[None], opacities[None], colors[None])

    def validate(self, where: str = "gaussians") -> None:
        """Raise ValueError naming ``where`` when shapes disagree with the contract."""
        if self.means.dim() != 3 or self.means.shape[-1] != 3:
            raise ValueError(f"{where}: means must be [B, N, 3], got {tuple(self.means.shape)}")
        b, n = self.means.shape[:2]
        want = {"quats": (b, n, 4), "scales": (b, n, 3), "opacities": (b, n), "colors": (b, n, 3)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{where}: {name} must be {list(shape)} to match means {[b, n, 3]}, got {list(got)}")


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z), normalized first."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S^T R^T [..., 3, 3] of quaternions [..., 4] and linear scales [..., 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


# ---- backend selection ----------------------------------------------------------------------------------------------
def gsplat_available() -> bool:
    """True when gsplat imports (it is optional: ``pip install mvlift[gpu]``)."""
    try:
        import gsplat  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or a broken CUDA build raising at import)
        return False
    return True


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
        return _rasterize_gsplat(gaussians, c2w, fxfycxcy, height, width, bg, near)
    return _rasterize_torch(gaussians, c2w, fxfycxcy, height, width, bg, near)


def _background(background, batch: int, like: Tensor) -> Tensor:
    if background is None:
        return torch.zeros(batch, 3, dtype=like.dtype, device=like.device)
    bg = torch.as_tensor(background).to(like)
    if bg.shape == (3,):
        return bg.expand(batch, 3)
    if bg.shape != (batch, 3):
        raise ValueError(f"rasterize: background must be [3] or [B={batch}, 3], got {list(bg.shape)}")
    return bg


# ---- gsplat backend -------------------------------------------------------------------------------------------------
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


def _rasterize_gsplat(g: Gaussians, c2w: Tensor, k: Tensor, height: int, width: int, bg: Tensor,
                      near: float) -> dict[str, Tensor]:
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


# ---- torch backend --------------------------------------------------------------------------------------------------
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


def _rasterize_torch(g: Gaussians, c2w: Tensor, k: Tensor, height: int, width: int, bg: Tensor, near: float,
                     tile: int = 8, budget: int = 1 << 21) -> dict[str, Tensor]:
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


# ---- PLY --------------------------------------------------------------------------------------------------------
def _single_scene(g: Gaussians, where: str) -> dict[str, np.ndarray]:
    fields = {f.name: getattr(g, f.name).detach().cpu().double() for f in dataclasses.fields(g)}
    if fields["means"].dim() == 3:
        if fields["means"].shape[0] != 1:
            raise ValueError(f"{where}: a PLY holds one scene; got a batch of {fields['means'].shape[0]} "
                             "(use gaussians.select(b))")
        fields = {k: v[0] for k, v in fields.items()}
    Gaussians.unbatched(**fields).validate(where)
    return {k: v.numpy() for k, v in fields.items()}


def save_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write one scene (B=1 or unbatched fields) as a standard 3DGS PLY (binary little endian), atomically.

    Attributes: x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3 with f_dc = (rgb - 0.5) / SH_C0,
    opacity as a logit, scales as logs and unit quaternions (w, x, y, z), so common splat viewers open it.
    """
    if isinstance(path, Gaussians):  # tolerate save_ply(gaussians, path)
        path, gaussians = gaussians, path
    path = Path(path)
    s = _single_scene(gaussians, f"save_ply({path})")
    n = s["means"].shape[0]
    opac = np.clip(s["opacities"], 1e-7, 1 - 1e-7)
    quats = s["quats"] / np.maximum(np.linalg.norm(s["quats"], axis=-1, keepdims=True), 1e-12)
    cols = [
        s["means"], np.zeros((n, 3)), (s["colors"] - 0.5) / SH_C0, np.log(opac / (1 - opac))[:, None],
        np.log(np.maximum(s["scales"], 1e-12)), quats,
    ]
    data = np.concatenate(cols, axis=1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in PLY_PROPERTIES) + "end_header\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, header.encode("ascii") + np.ascontiguousarray(data).tobytes())


_PLY_TYPES = {
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1", "char": "i1",
    "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
}


def _read_ply_header(f, path: Path) -> tuple[int, list[tuple[str, str]], str]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic)")
    fmt, count, props, in_vertex = None, None, [], False
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            if count is not None and in_vertex:
                raise ValueError(f"{path}: only a single 'vertex' element is supported, found also {words[1]!r}")
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
            elif count is None:
                raise ValueError(f"{path}: element {words[1]!r} before 'vertex' is not supported")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list":
                raise ValueError(f"{path}: list properties in 'vertex' are not supported")
            if words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY property type {words[1]!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt != "binary_little_endian":
        raise ValueError(f"{path}: PLY format {fmt!r} is not supported (need binary_little_endian)")
    if count is None:
        raise ValueError(f"{path}: PLY has no 'vertex' element")
    return count, props, fmt


def load_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS PLY (as written by :func:`save_ply` or 3DGS trainers; extra attributes such as f_rest_* are
    ignored) -> Gaussians with B = 1 in float32 (colors from f_dc, opacities sigmoid, scales exp)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: PLY file is missing")
    with open(path, "rb") as f:
        count, props, _ = _read_ply_header(f, path)
        names = [p for p, _ in props]
        missing = [p for p in PLY_PROPERTIES if p not in names and p not in ("nx", "ny", "nz")]
        if missing:
            raise ValueError(f"{path}: PLY lacks 3DGS attributes {missing}")
        dtype = np.dtype([(p, "<" + t) for p, t in props])
        raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{path}: PLY is truncated ({len(raw)} bytes of vertex data, header promises "
                         f"{count * dtype.itemsize})")
    v = np.frombuffer(raw, dtype=dtype, count=count)

    def cols(*ps: str) -> Tensor:
        return torch.from_numpy(np.stack([v[p].astype(np.float32) for p in ps], axis=-1))

    means = cols("x", "y", "z")
    colors = cols("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5
    opacities = torch.sigmoid(cols("opacity")[:, 0])
    scales = torch.exp(cols("scale_0", "scale_1", "scale_2"))
    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    if not all(torch.isfinite(t).all() for t in (means, colors, opacities, scales, quats)):
        raise ValueError(f"{path}: PLY has non-finite Gaussian attributes")
    return Gaussians.unbatched(means, quats, scales, opacities, colors)


__all__ = [
    "PLY_PROPERTIES",
    "SH_C0",
    "Gaussians",
    "covariance_3d",
    "gsplat_available",
    "load_ply",
    "project_gaussians",
    "quat_to_rotmat",
    "rasterize",
    "resolve_backend",
    "save_ply",
]
