"""Procedural mouse-like scenes: a few hundred 3D Gaussians rendered from a rig with our rasterizer.

Each scene is a creature built from ellipsoids filled with small Gaussians (body, head, two ears, eyes, nose, four
paws, a tail as a curved chain), with a random size, pose (yaw, pitch, roll, head turn), fur color and baked-in
top-down shading, centred at the rig's target and sized to about 0.6 of the frame of a radius-2.7, 50-degree camera.
Everything is deterministic per (seed, index).

``realistic=True`` is a captured scene whose every nuisance a 3D reconstruction can either explain or is told to
ignore. In the scene (3D-consistent, so in the targets too): fur colour and shape variety, shading, a per-scene
lighting gain. From the capture (per view): a cluttered background, lens blur, sensor noise, a small calibration
error (the pixels come from perturbed cameras, the returned cameras are the nominal ones). From the segmenter:
``alpha`` is an imperfect binary mask (silhouette moved in or out, wobbly edge), as real data's masks are. The
background is not kept: readers composite the photo with that mask over the configured colour, exactly as real
captures are read, so the clutter survives only where the mask errs at the silhouette. Per-view nuisances no 3D
scene explains (background colour, JPEG, extra blur/noise, lighting shifts, pose error of the inputs) belong to the
domain-gap augmentation of the model's inputs (``datamodules.augment``), never to the targets.

Scenes render on the CPU one at a time (the torch rasterizer, ~0.3 s at 128 px) or in batches on a GPU
(:func:`make_scenes` with ``device="cuda"``: gsplat; ``bench/procedural_throughput.py``).

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
from kornia.geometry.conversions import rotation_matrix_to_quaternion
from torch import Tensor

from geometry.cameras import up_change_matrix
from geometry.render import Gaussians, rasterize
from geometry.rig import Rig, load_rig

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
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z; w >= 0), in float64
    (``kornia.geometry.conversions.rotation_matrix_to_quaternion``)."""
    q = rotation_matrix_to_quaternion(torch.from_numpy(np.asarray(r, dtype=np.float64))).numpy()
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
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
    """A tapering chain of Gaussians curling behind the body (vectorized: one draw per quantity)."""
    yaw0, pitch0 = math.pi + rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.05)
    dyaw, dpitch = rng.uniform(-0.12, 0.12), rng.uniform(-0.02, 0.03)
    step = rng.uniform(0.026, 0.034)
    i = np.arange(1, segments + 1)
    yaw = yaw0 + np.cumsum(dyaw + rng.normal(0, 0.03, segments))
    pitch = np.clip(pitch0 + i * dpitch, -0.6, 0.3)  # a constant increment: clipping the sum = clipping each step
    x = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], -1)  # [n, 3]
    means = np.asarray(start, dtype=np.float64) + np.cumsum(x * step, axis=0)
    y = np.stack([-x[:, 1], x[:, 0], np.zeros(segments)], -1)  # (0, 0, 1) x x
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    rots = np.stack([x, y, np.cross(x, y)], -1)
    thick = 0.024 * (1 - (i - 1) / segments) + 0.01
    scales = np.stack([np.full(segments, step * 0.9), thick, thick], -1)
    parts.add(means, rots, scales, np.asarray(color)[None], np.tile([0.0, 0.0, 1.0], (segments, 1)),
              np.full(segments, 0.95))


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
def _generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``rng`` (large pixel fields are drawn by torch, on the device)."""
    return torch.Generator(device).manual_seed(int(rng.integers(2**62)))


def _upload(x: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A small numpy draw on ``device`` without waiting for the GPU (a plain copy waits for every kernel this process
    queued). On an H100 beside four busy processes this saves nothing measurable in a pre-render (docs/benchmarks.md,
    "A realistic source pre-rendered on a shared GPU"), but it costs nothing either."""
    t = torch.from_numpy(np.asarray(x)).to(dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _draw_capture(rng: np.random.Generator, views: int, size: int, device: torch.device) -> dict[str, Any]:
    """One scene's capture effects drawn from its stream, in the stream's order: the background's generator and
    colours, floor, shapes (cx cy rx ry kind rgb) and their count; blur and noise strength, the noise's and the
    segmentation wobble's generators, the segmentation levels. Numbers are numpy; pixel fields come from the
    generators, on ``device``."""
    d: dict[str, Any] = {"background": _generator(rng, device)}
    d["base"] = rng.uniform(0.15, 0.85, (views, 3))
    d["floor"] = rng.uniform(0.0, 0.35, views)
    d["shapes"] = rng.uniform(0, 1, (views, 8, 8))
    d["count"] = rng.integers(3, 9, views)
    d["sigma"], d["noise"] = float(rng.uniform(0.4, 1.1)) * size / 128, float(rng.uniform(0.01, 0.035))
    d["noise_gen"], d["wobble_gen"] = _generator(rng, device), _generator(rng, device)
    d["level"] = rng.uniform(0.3, 0.7, views)
    return d


def _textured_backgrounds(draws: list[dict[str, Any]], base: Tensor, floor: Tensor, shapes: Tensor, count: Tensor,
                          size: int) -> Tensor:
    """Cluttered, colored backgrounds [B, 3, H, W], one per view of every scene: smooth color field, floor gradient,
    up to 8 random ellipses and boxes, fine texture. The views' draws on the device (_capture): base [B, 3], floor
    [B], shapes [B, 8, 8], count [B]; ``draws`` give the scenes' generators."""
    device = base.device
    coarse = torch.cat([torch.randn(len(d["base"]), 3, 4, 4, generator=d["background"], device=device)
                        for d in draws])
    bg = torch.nn.functional.interpolate(base[:, :, None, None] + 0.12 * coarse, size=(size, size),
                                         mode="bicubic", align_corners=False)
    ys = torch.linspace(0, 1, size, device=device)[:, None].expand(size, size)
    xs = torch.linspace(0, 1, size, device=device)[None, :].expand(size, size)
    bg = bg * (1.0 - floor[:, None, None, None] * ys)  # darker towards one edge (floor / vignetting)
    for j in range(8):
        cx, cy, rx, ry, kind = (shapes[:, j, i, None, None] for i in range(5))
        rx, ry = 0.03 + 0.22 * rx, 0.03 + 0.22 * ry
        ellipse = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) <= 1
        box = ((xs - cx).abs() <= rx) & ((ys - cy).abs() <= ry)
        mask = torch.where(kind < 0.5, ellipse, box) & (j < count)[:, None, None]
        color = shapes[:, j, 5:8, None, None]
        bg = torch.where(mask[:, None], 0.6 * color + 0.4 * bg, bg)
    texture = torch.cat([torch.randn(len(d["base"]), 3, size, size, generator=d["background"], device=device)
                         for d in draws])
    return (bg + 0.04 * texture).clamp(0, 1)  # fine texture


def _gaussian_blur(img: Tensor, sigma: float | list[float]) -> Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflect padding; ``sigma``: one for every image or one per image
    (an image's kernel reaches ceil(3 sigma) px, at least 1). All images in one grouped convolution."""
    b, c, h, w = img.shape
    sigmas = [float(sigma)] * b if isinstance(sigma, (int, float)) else [float(x) for x in sigma]
    radii = [max(1, math.ceil(3 * x)) for x in sigmas]
    r = max(radii)
    taps = np.arange(-r, r + 1, dtype=np.float32)
    kernels = np.zeros((b, 2 * r + 1), np.float32)
    for i, (x, ri) in enumerate(zip(sigmas, radii)):
        k = np.exp(-0.5 * (taps / np.float32(x)) ** 2) * (np.abs(taps) <= ri)
        kernels[i] = k / k.sum()
    k = _upload(kernels, img.device, img.dtype).repeat_interleave(c, 0)  # [B * C, taps]
    img = torch.nn.functional.pad(img, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    img = torch.nn.functional.conv2d(img, k.view(b * c, 1, 1, -1), groups=b * c)
    return torch.nn.functional.conv2d(img, k.view(b * c, 1, -1, 1), groups=b * c).view(b, c, h, w)


def _segmentation(alpha: Tensor, draws: list[dict[str, Any]], level: Tensor) -> Tensor:
    """An imperfect binary segmentation [B, 1, H, W] of the object alphas, as a real segmenter gives: the silhouette
    moved in or out by up to ~1.5 % of the frame, with a wobbly, low-frequency boundary error per view."""
    size = alpha.shape[-1]
    wobble = torch.cat([torch.randn(len(d["level"]), 1, 6, 6, generator=d["wobble_gen"], device=alpha.device)
                        for d in draws])
    wobble = torch.nn.functional.interpolate(wobble, size=(size, size), mode="bicubic", align_corners=False)
    soft = _gaussian_blur(alpha, max(0.5, size / 128))  # a band around the edge to move the threshold in
    return (soft + 0.12 * wobble > level[:, None, None, None]).to(alpha.dtype)


def _pose_error(c2w: Tensor, rng: np.random.Generator, rot_deg: float = 1.0, trans: float = 0.02) -> Tensor:
    """Cameras [V, 4, 4] each rotated about its own centre by <= rot_deg and moved by ~trans (world units)."""
    out = c2w.clone().double()
    for i in range(len(out)):
        out[i, :3, :3] = torch.from_numpy(_random_rotation(rng, rot_deg)) @ out[i, :3, :3]
        out[i, :3, 3] += torch.from_numpy(rng.normal(0, trans, 3))
    return out.to(c2w.dtype)


# ---- public -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ScenePlan:
    """Everything of one scene but its pixels (CPU, cheap): what :func:`render_plans` rasterizes."""

    scene_id: str
    gaussians: Gaussians  # B=1, what is rendered (realistic: with the scene's lighting gain)
    c2w: Tensor  # [V, 4, 4] nominal cameras (returned)
    fxfycxcy: Tensor  # [V, 4]
    render_c2w: Tensor  # [V, 4, 4] the cameras the pixels come from (realistic: with calibration error)
    meta: dict[str, Any]
    capture_rng: np.random.Generator | None  # realistic: the stream of the capture effects


def scene_id(seed: int, index: int) -> str:
    """The id of procedural scene ``index`` of ``seed`` (what samples and error messages carry)."""
    return f"proc_{seed}_{index:06d}"


def plan_scene(index: int, rig: Rig | str | dict, num_views: int, size: int, realistic: bool = False, seed: int = 0,
               camera_jitter_deg: float = 0.0) -> ScenePlan:
    """The creature, cameras and realism draws of scene ``index`` (see :func:`make_scene`)."""
    rig = load_rig(rig)
    if num_views < 1 or size < 8:
        raise ValueError(f"make_scene: need num_views >= 1 and size >= 8, got {num_views} views, size {size}")
    rng = np.random.default_rng([int(seed), int(index)])
    creature, meta = _creature(rng)
    gaussians = _to_gaussians(creature, rig)
    c2w, k = scene_cameras(rig, num_views, size, rng, camera_jitter_deg)
    render_c2w, fx_rng = c2w, None
    if realistic:
        fx_rng = np.random.default_rng([int(seed), int(index), 1])  # separate stream: clean and realistic share the
        gain = fx_rng.uniform(0.7, 1.25) * (1 + fx_rng.normal(0, 0.06, 3))  # creature and the cameras
        gaussians = dataclasses.replace(gaussians, colors=(gaussians.colors * torch.from_numpy(gain).float()).clamp(0, 1))
        render_c2w = _pose_error(c2w, fx_rng)
        meta.update({"light_gain": [round(float(x), 4) for x in gain]})
    return ScenePlan(scene_id(seed, index), gaussians, c2w, k, render_c2w, meta, fx_rng)


def _pad_gaussians(items: list[Gaussians], device: torch.device) -> Gaussians:
    """Scenes of different Gaussian counts as one batch: the shorter ones padded with transparent Gaussians."""
    n = max(g.num_gaussians for g in items)

    def pad(t: Tensor, fill: float) -> Tensor:
        extra = n - t.shape[1]
        return torch.cat([t, t.new_full((1, extra, *t.shape[2:]), fill)], 1) if extra else t

    fields = {"means": 0.0, "quats": 0.0, "scales": 1e-3, "opacities": 0.0, "colors": 0.0}
    out = {f: torch.cat([pad(getattr(g, f), v) for g in items]).to(device) for f, v in fields.items()}
    out["quats"][..., 0] = torch.where(out["opacities"] > 0, out["quats"][..., 0], torch.ones_like(out["opacities"]))
    return Gaussians(**out)


def straight_colour(premult: Tensor, alpha: Tensor) -> Tensor:
    """Premultiplied colour [..., 3, H, W] over alpha [..., 1, H, W] -> straight colour in [0, 1] (0 where
    alpha <= 1e-3)."""
    return torch.where(alpha > 1e-3, premult / alpha.clamp_min(1e-3), torch.zeros_like(premult)).clamp(0, 1)


@torch.no_grad()
def render_plans(plans: list[ScenePlan], size: int, device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Rasterize scene plans (views of a batch must agree in count) on ``device`` in one call and apply the
    realistic capture effects there: a list of :func:`make_scene` dicts with pixels on ``device``."""
    device = torch.device(device)
    views = {len(p.c2w) for p in plans}
    if len(views) != 1:
        raise ValueError(f"render_plans: scenes of one batch need one view count, got {sorted(views)}")
    g = _pad_gaussians([p.gaussians for p in plans], device)
    c2w = torch.stack([p.render_c2w for p in plans]).to(device)
    k = torch.stack([p.fxfycxcy for p in plans]).to(device)
    backend = "torch" if device.type == "cpu" else "auto"
    out = rasterize(g, c2w, k, size, size, torch.zeros(3, device=device), backend=backend)
    premult_all, alpha_all = out["rgb"].clamp(0, 1), out["alpha"].clamp(0, 1)
    captured = [i for i, p in enumerate(plans) if p.capture_rng is not None]
    capture: dict[int, tuple[Tensor, Tensor, dict[str, Any]]] = {}
    if captured:  # the realistic scenes' capture effects, all at once
        photos, masks, effects = _capture(premult_all[captured], alpha_all[captured],
                                          [plans[i].capture_rng for i in captured])
        capture = {i: (photos[k], masks[k], effects[k]) for k, i in enumerate(captured)}
    results = []
    for i, p in enumerate(plans):
        premult, alpha = premult_all[i], alpha_all[i]
        meta = dict(p.meta)
        if i in capture:
            images, mask, fx = capture[i]
            meta.update(fx)
        else:
            images = straight_colour(premult, alpha)
            mask = alpha
        results.append({
            "images": images.contiguous(), "alpha": mask.contiguous(), "object_alpha": alpha.contiguous(),
            "c2w": p.c2w, "fxfycxcy": p.fxfycxcy, "scene_id": p.scene_id, "has_background": False,
            "gaussians": p.gaussians, "meta": meta,
        })
    return results


def _capture(premult: Tensor, alpha: Tensor, rngs: list[np.random.Generator]
             ) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """What a real camera and segmenter give for N scenes at once (premult, alpha [N, V, C, H, W]; each scene's
    effects drawn from its own stream ``rngs[n]``, so a scene is the same in any batch): (photos [N, V, 3, H, W] with
    a cluttered background, blur and sensor noise; segmentation masks [N, V, 1, H, W]; each scene's settings). The
    scenes' numbers reach the device in one copy, and every step after it is one batched operation."""
    n, v, _, size, _ = premult.shape
    device = premult.device
    draws = [_draw_capture(rng, v, size, device) for rng in rngs]
    packed = np.concatenate([np.concatenate(
        [d["base"], d["floor"][:, None], d["shapes"].reshape(v, 64), d["count"][:, None], d["level"][:, None],
         np.full((v, 1), d["noise"])], axis=1) for d in draws])  # [N * V, 71]: one copy for every view's draws
    base, floor, shapes, count, level, noise_std = _upload(packed, device).split([3, 1, 64, 1, 1, 1], dim=1)
    premult, alpha = premult.flatten(0, 1), alpha.flatten(0, 1)
    photo = premult + (1 - alpha) * _textured_backgrounds(draws, base, floor[:, 0], shapes.view(-1, 8, 8),
                                                          count[:, 0], size)
    photo = _gaussian_blur(photo, [d["sigma"] for d in draws for _ in range(v)])
    noise = torch.cat([torch.randn(v, 3, size, size, generator=d["noise_gen"], device=device) for d in draws])
    photo = photo + noise_std[:, :, None, None] * noise
    mask = _segmentation(alpha, draws, level[:, 0])
    effects = [{"blur_sigma_px": round(d["sigma"], 4), "noise_std": round(d["noise"], 4)} for d in draws]
    return photo.clamp(0, 1).unflatten(0, (n, v)), mask.unflatten(0, (n, v)), effects


def _plan_star(args: tuple) -> ScenePlan:
    return plan_scene(*args)


def _plan_packed(args: tuple) -> tuple:
    """A plan with its tensors as numpy arrays: torch would move every tensor through its own shared-memory segment
    between processes (slower than planning)."""
    p = plan_scene(*args)
    g = {f.name: getattr(p.gaussians, f.name).numpy() for f in dataclasses.fields(p.gaussians)}
    return p.scene_id, g, p.c2w.numpy(), p.fxfycxcy.numpy(), p.render_c2w.numpy(), p.meta, p.capture_rng


def _unpack(packed: tuple) -> ScenePlan:
    scene_id, g, c2w, k, render_c2w, meta, rng = packed
    t = torch.from_numpy
    return ScenePlan(scene_id, Gaussians(**{n: t(a) for n, a in g.items()}), t(c2w), t(k), t(render_c2w), meta, rng)


class ScenePlanner:
    """Plans of many scenes, in ``workers`` processes (spawned, so a parent holding CUDA or OpenMP state is safe) or
    in this one (``workers`` <= 1). The plan (~2 ms of numpy a scene) bounds GPU generation; rendering a batch takes
    milliseconds. Use as a context manager, or call :meth:`close`.

    Example:
        >>> with ScenePlanner("facelift_6view", 6, 32) as planner:
        ...     [p.scene_id for p in planner.plans([0, 1])]
        ['proc_0_000000', 'proc_0_000001']
    """

    def __init__(self, rig: Rig | str | dict, num_views: int, size: int, realistic: bool = False, seed: int = 0,
                 camera_jitter_deg: float = 0.0, workers: int = 0) -> None:
        self.args = (load_rig(rig), num_views, size, realistic, seed, camera_jitter_deg)
        self._pool = None
        if workers > 1:
            import multiprocessing

            self._pool = multiprocessing.get_context("spawn").Pool(workers)

    def plans(self, indices: list[int]) -> list[ScenePlan]:
        jobs = [(i, *self.args) for i in indices]
        if self._pool is None:
            return [_plan_star(j) for j in jobs]
        chunk = max(1, len(jobs) // (4 * self._pool._processes))
        return [_unpack(p) for p in self._pool.map(_plan_packed, jobs, chunksize=chunk)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> ScenePlanner:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_scenes(indices: list[int], rig: Rig | str | dict, num_views: int, size: int, realistic: bool = False,
                seed: int = 0, camera_jitter_deg: float = 0.0, device: torch.device | str = "cpu",
                planner: ScenePlanner | None = None) -> list[dict[str, Any]]:
    """Scenes ``indices`` rendered together on ``device`` (CUDA: gsplat, a few ms for a batch of 64): see
    :func:`make_scene`. The plans are drawn on the CPU (by ``planner``'s processes when given: it must have been made
    with the same settings); the pixels stay on ``device``."""
    planner = planner or ScenePlanner(rig, num_views, size, realistic, seed, camera_jitter_deg)
    return render_plans(planner.plans(indices), size, device)


def make_scene(index: int, rig: Rig | str | dict, num_views: int, size: int, realistic: bool = False, seed: int = 0,
               camera_jitter_deg: float = 0.0) -> dict[str, Any]:
    """One procedural scene, deterministic per (seed, index) on the CPU (on another device: up to rasterizer
    rounding and that device's random streams).

    Args:
        index: scene number.  rig: a Rig or anything ``load_rig`` takes.  num_views: views to render; the first
            min(num_views, rig.num_views) are the rig's in rig order, the rest random on the rig's sphere.
        size: square image size in px.  realistic: a captured scene (module docstring).
        camera_jitter_deg: rotate each rig camera about the target by up to this angle (returned cameras include it).
    Returns:
        {"images" [V, 3, H, W] straight (not premultiplied) RGB in [0, 1] (realistic: the photo, background and all),
         "alpha" [V, 1, H, W] (clean: the object's alpha; realistic: the segmentation mask), "object_alpha" (the
         object's true alpha), "c2w" [V, 4, 4], "fxfycxcy" [V, 4], "scene_id" str, "has_background" False,
         "gaussians" Gaussians (B=1, what was rendered), "meta" dict (fur, radius, realistic settings)}.
    """
    return make_scenes([index], rig, num_views, size, realistic, seed, camera_jitter_deg)[0]


__all__ = [
    "ScenePlan",
    "ScenePlanner",
    "make_scene",
    "make_scenes",
    "plan_scene",
    "render_plans",
    "rotmat_to_quat",
    "scene_cameras",
    "scene_id",
    "straight_colour",
]
