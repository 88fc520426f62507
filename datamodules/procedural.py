"""Procedural mouse-like scenes: a few hundred 3D Gaussians rendered from a rig with our rasterizer.

Each scene is a creature built from ellipsoids filled with small Gaussians (body, head, two ears, eyes, nose, four
paws, a tail as a curved chain), with a random size, pose (yaw, pitch, roll, head turn), fur color and baked-in
top-down shading, centred at the rig's target and sized to about 0.6 of the frame of a radius-2.7, 50-degree camera.
Everything is deterministic per (seed, index).

``realistic=True`` renders what real captures look like: a textured, cluttered background baked into the RGB, a
lighting change, a small camera pose error (the image comes from perturbed cameras, the returned cameras are the
nominal ones), blur and sensor noise. ``alpha`` stays the object mask; ``has_background`` tells readers to use the
image as is instead of compositing it.

Example:
    >>> scene = make_scene(0, "facelift_6view", num_views=8, size=64)
    >>> scene["images"].shape, scene["c2w"].shape, scene["scene_id"]
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 4, 4]), 'proc_0_000000')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import up_change_matrix
from geometry.rig import Rig, load_rig
from lightning_modules.gaussians import Gaussians, rasterize

EXTRA_ELEVATION_DEG = (-20.0, 60.0)  # range of the random views beyond the rig's
FRAME_RADIUS = (0.8, 1.0)  # creature's bounding radius (world units); 0.6-0.7 of the frame at r=2.7, fov 50
LIGHT_DIR = np.array([0.3, -0.35, 1.0]) / np.linalg.norm([0.3, -0.35, 1.0])  # baked shading, from above-front

FUR_COLORS = {  # RGB in [0, 1]
    "white": (0.92, 0.91, 0.87), "black": (0.13, 0.12, 0.12), "agouti": (0.45, 0.34, 0.23),
    "grey": (0.55, 0.55, 0.56), "cream": (0.86, 0.76, 0.60), "chocolate": (0.32, 0.22, 0.16),
}
SKIN = (0.92, 0.62, 0.62)  # ears (inside), nose, paws, tail


@dataclasses.dataclass
class _Parts:
    """Gaussians under construction (numpy, creature-local frame: x forward, y left, z up)."""

    means: list[np.ndarray] = dataclasses.field(default_factory=list)
    rots: list[np.ndarray] = dataclasses.field(default_factory=list)  # [n, 3, 3]
    scales: list[np.ndarray] = dataclasses.field(default_factory=list)
    colors: list[np.ndarray] = dataclasses.field(default_factory=list)
    normals: list[np.ndarray] = dataclasses.field(default_factory=list)
    opacities: list[np.ndarray] = dataclasses.field(default_factory=list)
    tags: list[np.ndarray] = dataclasses.field(default_factory=list)  # 1 = head group (turns with the head)

    def add(self, means, rots, scales, colors, normals, opacities, head: bool = False) -> None:
        n = len(means)
        self.means.append(means)
        self.rots.append(np.broadcast_to(rots, (n, 3, 3)))
        self.scales.append(np.broadcast_to(scales, (n, 3)))
        self.colors.append(np.broadcast_to(colors, (n, 3)))
        self.normals.append(normals)
        self.opacities.append(np.broadcast_to(opacities, (n,)))
        self.tags.append(np.full(n, 1 if head else 0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(getattr(self, k)).astype(np.float64) for k in
                ("means", "rots", "scales", "colors", "normals", "opacities", "tags")}


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotmat_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), robust in every branch."""
    r = np.asarray(r, dtype=np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    cand = np.stack([  # 4*q_i^2 for i = w, x, y, z; use the largest one to divide by
        1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22,
    ], -1)
    best = cand.argmax(-1)
    q = np.empty(r.shape[:-2] + (4,))
    s = np.sqrt(np.maximum(np.take_along_axis(cand, best[..., None], -1)[..., 0], 1e-12)) * 2  # 4 * q_best
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    a01, a02, a12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    rows = {
        0: (s / 4, d21 / s, d02 / s, d10 / s),
        1: (d21 / s, s / 4, a01 / s, a02 / s),
        2: (d02 / s, a01 / s, s / 4, a12 / s),
        3: (d10 / s, a02 / s, a12 / s, s / 4),
    }
    for k, vals in rows.items():
        sel = best == k
        q[sel] = np.stack(vals, -1)[sel]
    q *= np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _ellipsoid(parts: _Parts, rng: np.random.Generator, center, radii, rot, n: int, color, opacity=(0.85, 0.98),
               blob=(0.26, 0.36), shell=(0.6, 0.9), head: bool = False) -> None:
    """Fill an ellipsoid (centre [3], radii [3], orientation [3, 3]) with ``n`` Gaussians aligned to its axes."""
    radii = np.asarray(radii, dtype=np.float64)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    local = dirs * radii * rng.uniform(*shell, size=(n, 1))
    normals = (dirs / radii) @ rot.T
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    scales = radii * rng.uniform(*blob, size=(n, 1)) * rng.uniform(0.85, 1.15, size=(n, 3))
    tint = np.clip(np.asarray(color) * rng.uniform(0.9, 1.1, size=(n, 1)) + rng.normal(0, 0.02, size=(n, 3)), 0, 1)
    parts.add(np.asarray(center) + local @ rot.T, rot, scales, tint, normals, rng.uniform(*opacity, size=n), head)


def _tail(parts: _Parts, rng: np.random.Generator, start: np.ndarray, color, segments: int = 30) -> None:
    """A tapering chain of Gaussians curling behind the body."""
    yaw, pitch = math.pi + rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.05)
    dyaw, dpitch = rng.uniform(-0.12, 0.12), rng.uniform(-0.02, 0.03)
    step = rng.uniform(0.026, 0.034)
    p = np.asarray(start, dtype=np.float64)
    for i in range(segments):
        yaw += dyaw + rng.normal(0, 0.03)
        pitch = float(np.clip(pitch + dpitch, -0.6, 0.3))
        d = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        p = p + d * step
        thick = 0.024 * (1 - i / segments) + 0.01
        x = d
        y = np.cross([0.0, 0.0, 1.0], x)
        y /= np.linalg.norm(y)
        rot = np.stack([x, y, np.cross(x, y)], -1)
        parts.add(p[None], rot, np.array([step * 0.9, thick, thick]), np.asarray(color)[None], np.array([[0, 0, 1.0]]),
                  np.array([0.95]))


def _creature(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Gaussians (numpy, world Z-up, centred, sized to the frame) and a description of the draw."""
    fur_name = list(FUR_COLORS)[rng.integers(len(FUR_COLORS))]
    fur = np.clip(np.array(FUR_COLORS[fur_name]) + rng.normal(0, 0.03, 3), 0, 1)
    belly = np.clip(fur + (0.25 if fur.mean() < 0.7 else 0.0) * (1 - fur), 0, 1)
    skin = np.clip(np.array(SKIN) * (0.75 if fur.mean() < 0.3 else 1.0) + rng.normal(0, 0.03, 3), 0, 1)
    body_r = np.array([0.42, 0.24, 0.21]) * rng.uniform(0.85, 1.15, 3)
    eye = np.eye(3)
    parts = _Parts()
    _ellipsoid(parts, rng, [0, 0, 0], body_r, eye, 200, fur)
    body_colors = parts.colors[-1].copy()  # lighter belly
    under = np.clip(-parts.normals[-1][:, 2], 0, 1)[:, None]
    parts.colors[-1] = body_colors * (1 - under) + belly * under
    # head group: built around the neck, turned as one
    neck = np.array([body_r[0] * 0.8, 0.0, body_r[2] * 0.2])
    hc = np.array([0.14, 0.0, 0.03])  # head centre relative to the neck
    head_r = np.array([0.19, 0.135, 0.125]) * rng.uniform(0.9, 1.1)
    tilt = _rot("y", rng.uniform(0.05, 0.3))  # nose slightly down
    _ellipsoid(parts, rng, hc, head_r, tilt, 70, fur, head=True)
    for side in (-1.0, 1.0):
        ear_c = hc + np.array([-0.04, side * 0.1, 0.14])
        ear_rot = _rot("x", side * rng.uniform(0.3, 0.6)) @ _rot("z", side * 0.3)
        ear_color = 0.5 * skin + 0.5 * fur
        _ellipsoid(parts, rng, ear_c, np.array([0.02, 0.09, 0.085]) * rng.uniform(0.9, 1.2), ear_rot, 14, ear_color,
                   opacity=(0.9, 0.98), shell=(0.0, 0.5), head=True)
        eye_p = hc + tilt @ np.array([head_r[0] * 0.45, side * head_r[1] * 0.78, head_r[2] * 0.35])
        parts.add(eye_p[None], eye, np.full(3, 0.024), np.array([[0.03, 0.03, 0.04]]), np.array([[0, side, 0.0]]),
                  np.array([1.0]), head=True)
    nose_p = hc + tilt @ np.array([head_r[0] * 1.02, 0.0, 0.0])
    parts.add(nose_p[None], eye, np.full(3, 0.026), skin[None], np.array([[1.0, 0, 0]]), np.array([0.97]), head=True)
    for fx in (-1.0, 1.0):  # paws
        for side in (-1.0, 1.0):
            c = np.array([fx * body_r[0] * 0.55, side * body_r[1] * 0.6, -body_r[2] * 0.85])
            _ellipsoid(parts, rng, c, [0.06, 0.035, 0.06], eye, 6, 0.6 * skin + 0.4 * fur, shell=(0.0, 0.4))
    _tail(parts, rng, np.array([-body_r[0] * 0.95, 0.0, -body_r[2] * 0.25]), 0.8 * skin + 0.2 * fur)

    a = parts.arrays()
    head = a["tags"] == 1
    turn = _rot("z", rng.uniform(-0.45, 0.45)) @ _rot("y", rng.uniform(-0.2, 0.2))
    a["means"][head] = a["means"][head] @ turn.T + neck
    a["rots"][head] = turn @ a["rots"][head]
    a["normals"][head] = a["normals"][head] @ turn.T
    pose = _rot("z", rng.uniform(0, 2 * math.pi)) @ _rot("y", rng.uniform(-0.17, 0.17)) @ _rot("x",
                                                                                               rng.uniform(-0.14, 0.14))
    means = a["means"] @ pose.T
    normals = a["normals"] @ pose.T
    rots = pose @ a["rots"]
    shade = 0.55 + 0.45 * np.clip(normals @ LIGHT_DIR, 0, 1)
    colors = np.clip(a["colors"] * shade[:, None], 0, 1)
    # centre the bounding box and size the creature to the frame
    ext = a["scales"].max(-1, keepdims=True) * 2
    lo, hi = (means - ext).min(0), (means + ext).max(0)
    means = means - (lo + hi) / 2
    radius = rng.uniform(*FRAME_RADIUS)
    factor = radius / np.max(np.linalg.norm(means, axis=-1) + ext[:, 0])
    gauss = {"means": means * factor, "quats": rotmat_to_quat(rots), "scales": a["scales"] * factor,
             "opacities": np.clip(a["opacities"], 0, 1), "colors": colors}
    return gauss, {"fur": fur_name, "radius": float(radius)}


def _to_gaussians(g: dict[str, np.ndarray], rig: Rig) -> Gaussians:
    """numpy Z-up creature -> Gaussians (B=1) in the rig's world, centred at its target."""
    means, quats = g["means"], g["quats"]
    if rig.up_axis != "z":
        r = up_change_matrix("z", rig.up_axis)[:3, :3].double().numpy()
        means = means @ r.T
        rq = rotmat_to_quat(r)
        quats = _quat_mul(rq, quats)
    means = means + np.asarray(rig.target)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in
         {"means": means, "quats": quats, "scales": g["scales"], "opacities": g["opacities"],
          "colors": g["colors"]}.items()}
    return Gaussians.unbatched(**t)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions, broadcasting."""
    aw, ax, ay, az = np.moveaxis(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape)), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


# ---- cameras -------------------------------------------------------------------------------------------------------
def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation [3, 3] about a random axis by an angle uniform in [0, max_deg]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _orbit_about_target(c2w: Tensor, rot: np.ndarray, target: Tensor) -> Tensor:
    """Move a camera [4, 4] rigidly about ``target`` by ``rot`` (it keeps looking at the target)."""
    r = torch.from_numpy(rot).to(c2w)
    out = c2w.clone()
    out[:3, :3] = r @ c2w[:3, :3]
    out[:3, 3] = target + r @ (c2w[:3, 3] - target)
    return out


def scene_cameras(rig: Rig, num_views: int, size: int, rng: np.random.Generator,
                  camera_jitter_deg: float = 0.0) -> tuple[Tensor, Tensor]:
    """The rig's views in rig order (jittered about the target by up to ``camera_jitter_deg``), then random views on
    the rig's sphere (elevation in EXTRA_ELEVATION_DEG) looking at its target: (c2w [V, 4, 4], fxfycxcy [V, 4])."""
    c2w, k = rig.cameras(size, dtype=torch.float64)
    n_rig = min(num_views, rig.num_views)
    c2w, k = c2w[:n_rig], k[:n_rig]
    target = torch.tensor(rig.target, dtype=torch.float64)
    if camera_jitter_deg > 0:
        c2w = torch.stack([_orbit_about_target(m, _random_rotation(rng, camera_jitter_deg), target) for m in c2w])
    extra = num_views - n_rig
    if extra > 0:
        az = tuple(float(a) for a in rng.uniform(0.0, 360.0, extra))
        el = tuple(float(e) for e in rng.uniform(*EXTRA_ELEVATION_DEG, extra))
        ring = dataclasses.replace(rig, name=f"{rig.name}_random", view_names=tuple(f"random_{i}" for i in range(extra)),
                                   azimuths_deg=az, elevations_deg=el)
        c2w_x, k_x = ring.cameras(size, dtype=torch.float64)
        c2w, k = torch.cat([c2w, c2w_x]), torch.cat([k, k_x])
    return c2w.float(), k.float()


# ---- realistic capture effects -----------------------------------------------------------------------------------
def _textured_background(rng: np.random.Generator, size: int) -> Tensor:
    """A cluttered, colored background [3, H, W]: smooth color field, floor gradient, random blobs and boxes."""
    base = rng.uniform(0.15, 0.85, 3)
    coarse = torch.from_numpy(base[:, None, None] + rng.normal(0, 0.12, (3, 4, 4))).float()
    bg = torch.nn.functional.interpolate(coarse[None], size=(size, size), mode="bicubic", align_corners=False)[0]
    ys = torch.linspace(0, 1, size)[:, None].expand(size, size)
    xs = torch.linspace(0, 1, size)[None, :].expand(size, size)
    bg = bg * (1.0 - rng.uniform(0.0, 0.35) * ys)  # darker towards one edge (floor / vignetting)
    for _ in range(rng.integers(3, 9)):
        color = torch.from_numpy(rng.uniform(0, 1, 3)).float()[:, None, None]
        cx, cy, rx, ry = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.25), rng.uniform(0.03, 0.25)
        if rng.uniform() < 0.5:
            mask = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) <= 1
        else:
            mask = ((xs - cx).abs() <= rx) & ((ys - cy).abs() <= ry)
        bg = torch.where(mask, 0.6 * color + 0.4 * bg, bg)
    bg = bg + torch.from_numpy(rng.normal(0, 0.04, (3, size, size))).float()  # fine texture
    return bg.clamp(0, 1)


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [V, C, H, W] with reflect padding."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w = w / w.sum()
    c = img.shape[1]
    img = torch.nn.functional.pad(img, (r, r, r, r), mode="reflect")
    img = torch.nn.functional.conv2d(img, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(img, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _pose_error(c2w: Tensor, rng: np.random.Generator, rot_deg: float = 1.0, trans: float = 0.02) -> Tensor:
    """Cameras [V, 4, 4] each rotated about its own centre by <= rot_deg and moved by ~trans (world units)."""
    out = c2w.clone().double()
    for i in range(len(out)):
        out[i, :3, :3] = torch.from_numpy(_random_rotation(rng, rot_deg)) @ out[i, :3, :3]
        out[i, :3, 3] += torch.from_numpy(rng.normal(0, trans, 3))
    return out.to(c2w.dtype)


# ---- public -----------------------------------------------------------------------------------------------------
def make_scene(index: int, rig: Rig | str | dict, num_views: int, size: int, realistic: bool = False, seed: int = 0,
               camera_jitter_deg: float = 0.0) -> dict[str, Any]:
    """One procedural scene, deterministic per (seed, index).

    Args:
        index: scene number.  rig: a Rig or anything ``load_rig`` takes.  num_views: views to render; the first
            min(num_views, rig.num_views) are the rig's in rig order, the rest random on the rig's sphere.
        size: square image size in px.  realistic: bake capture effects (module docstring).
        camera_jitter_deg: rotate each rig camera about the target by up to this angle (returned cameras include it).
    Returns:
        {"images" [V, 3, H, W] straight (not premultiplied) RGB in [0, 1] (realistic: background baked in),
         "alpha" [V, 1, H, W], "c2w" [V, 4, 4], "fxfycxcy" [V, 4], "scene_id" str, "has_background" bool,
         "gaussians" Gaussians (B=1, what was rendered), "meta" dict (fur, radius, realistic settings)}.
    """
    rig = load_rig(rig)
    if num_views < 1 or size < 8:
        raise ValueError(f"make_scene: need num_views >= 1 and size >= 8, got {num_views} views, size {size}")
    rng = np.random.default_rng([int(seed), int(index)])
    creature, meta = _creature(rng)
    gaussians = _to_gaussians(creature, rig)
    c2w, k = scene_cameras(rig, num_views, size, rng, camera_jitter_deg)
    render_c2w = c2w
    if realistic:
        fx_rng = np.random.default_rng([int(seed), int(index), 1])  # separate stream: clean and realistic share the
        gain = fx_rng.uniform(0.7, 1.25) * (1 + fx_rng.normal(0, 0.06, 3))  # creature and the cameras
        gaussians = dataclasses.replace(gaussians, colors=(gaussians.colors * torch.from_numpy(gain).float()).clamp(0, 1))
        render_c2w = _pose_error(c2w, fx_rng)
        meta.update({"light_gain": [round(float(x), 4) for x in gain]})
    with torch.no_grad():
        out = rasterize(gaussians, render_c2w[None], k[None], size, size, torch.zeros(3), backend="torch")
    premult, alpha = out["rgb"][0].clamp(0, 1), out["alpha"][0].clamp(0, 1)
    if realistic:
        bg = torch.stack([_textured_background(fx_rng, size) for _ in range(num_views)])
        images = premult + (1 - alpha) * bg
        sigma = float(fx_rng.uniform(0.4, 1.1))
        noise = float(fx_rng.uniform(0.01, 0.035))
        images = _gaussian_blur(images, sigma)
        images = images + torch.from_numpy(fx_rng.normal(0, noise, images.shape)).float()
        images = images.clamp(0, 1)
        meta.update({"blur_sigma_px": round(sigma, 4), "noise_std": round(noise, 4)})
    else:
        images = torch.where(alpha > 1e-3, premult / alpha.clamp_min(1e-3), torch.zeros_like(premult)).clamp(0, 1)
    return {
        "images": images.contiguous(), "alpha": alpha.contiguous(), "c2w": c2w, "fxfycxcy": k,
        "scene_id": f"proc_{seed}_{index:06d}", "has_background": bool(realistic), "gaussians": gaussians,
        "meta": meta,
    }


__all__ = ["make_scene", "rotmat_to_quat", "scene_cameras"]
