"""Recordings whose truth is known: procedural mice filmed by a lab's cameras, calibrated in mm, cm or m.

A lab's recording as ``tools.import_captures`` reads it (one image folder and one mask folder per camera, an OpenCV
JSON calibration), made from procedural mice (``datamodules.procedural``: frame f is scene ``indices[f]``) rendered
through cameras placed as real rigs place them: distances that differ per camera, elevations from below to nearly
overhead, each aimed a little off the animal, frames of different and non-square sizes, optional lens distortion.
The lab's world is the procedural world moved (a yaw and an offset: the arena's origin is not the animal) and
expressed in the calibration's unit, ``PROC_UNIT_IN`` per procedural unit: a mouse ~10 cm long filmed from 30-50 cm.

``truth.json`` holds what the import must recover: per camera its c2w and intrinsics in the procedural world (where
the mouse's centre is the origin), the similarity lab -> procedural, the scene of every frame.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> truth = write_procedural_recording(out, [0], units="mm", cameras=LAB_CAMERAS[:2], size_scale=0.25)
    >>> sorted(p.name for p in out.iterdir())
    ['calibration.json', 'images', 'masks', 'truth.json']
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules.procedural import plan_scene, rotmat_to_quat, straight_colour
from geometry.camera_files import read_camera_file
from geometry.cameras import camera_position, invert_rigid, look_at
from geometry.files import write_atomic
from geometry.images import resize_images, save_png
from geometry.render import Gaussians, rasterize
from geometry.render.gaussians import quat_to_rotmat

PROC_UNIT_IN = {"mm": 150.0, "cm": 15.0, "m": 0.15}  # one procedural unit (the rig's 2.7 = 405 mm) in each unit
LAB_YAW_DEG = 30.0  # the lab world's axes against the mouse's
LAB_OFFSET = (0.8, -2.3, 0.25)  # where the mouse sits in the lab world (procedural units, before the unit scale)


@dataclasses.dataclass(frozen=True)
class LabCamera:
    """One camera about the mouse (procedural units and degrees): where it is, its frame (H, W), its horizontal field
    of view, where it aims (an offset from the mouse's centre), OpenCV distortion (k1, k2, p1, p2, k3)."""

    azimuth: float
    elevation: float
    distance: float
    size: tuple[int, int] = (256, 288)
    fov_deg: float = 50.0
    aim: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dist: tuple[float, ...] = ()


# the user's ranges: distances 2.0-3.4 (mean 2.7), elevations -51..+78, frames of several sizes, aimed off the mouse
LAB_CAMERAS = (
    LabCamera(10, -51, 2.0, (256, 288), 55, (0.05, -0.04, 0.02)),
    LabCamera(60, 20, 2.6, (240, 320), 48, (-0.06, 0.03, 0.0)),
    LabCamera(120, 78, 3.4, (288, 256), 40, (0.02, 0.05, -0.03)),
    LabCamera(190, 35, 2.3, (256, 256), 52, (-0.03, -0.05, 0.04)),
    LabCamera(250, 5, 3.0, (270, 300), 44, (0.04, 0.02, 0.03)),
    LabCamera(310, 50, 2.9, (256, 288), 46, (-0.02, 0.0, -0.05)),
)


def lab_from_proc(units: str) -> Tensor:
    """The similarity [4, 4] (s R | t) taking procedural-world points to the lab's world in ``units``."""
    if units not in PROC_UNIT_IN:
        raise ValueError(f"units must be one of {sorted(PROC_UNIT_IN)}, got {units!r}")
    s, a = PROC_UNIT_IN[units], math.radians(LAB_YAW_DEG)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = s * torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1]],
                                 dtype=torch.float64)
    m[:3, 3] = s * torch.tensor(LAB_OFFSET, dtype=torch.float64)
    return m


def camera_truth(cam: LabCamera, size_scale: float = 1.0) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """(c2w [4, 4] in the procedural world, fxfycxcy [4], (H, W)) of one lab camera; pixels are slightly non-square
    and the principal point is off the frame centre, as calibrations report them."""
    eye = torch.tensor(camera_position(cam.azimuth, cam.elevation, cam.distance), dtype=torch.float64)
    up = torch.tensor([0.0, 0.015, 1.0], dtype=torch.float64)  # the user's "roughly Z-up" cameras
    c2w = look_at(eye, torch.tensor(cam.aim, dtype=torch.float64), up)
    h, w = (max(8, round(x * size_scale)) for x in cam.size)
    fx = 0.5 * w / math.tan(math.radians(cam.fov_deg) / 2)
    k = torch.tensor([fx, fx * 1.002, 0.5 * w + 0.013 * w, 0.5 * h - 0.011 * h], dtype=torch.float64)
    return c2w, k, (h, w)


def _distort(x: Tensor, k: Tensor, dist: Sequence[float]) -> Tensor:
    """The image [C, H, W] a lens with OpenCV distortion ``dist`` records of the pinhole image ``x`` (same K)."""
    from kornia.geometry.calibration import undistort_points

    h, w = x.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    kmat = torch.tensor([[k[0], 0, k[2]], [0, k[1], k[3]], [0, 0, 1]], dtype=torch.float64)
    # OpenCV's pixel convention (integer centres) for kornia, ours (centres at +0.5) around it
    pts = torch.stack([u.flatten() - 0.5, v.flatten() - 0.5], -1)[None]
    src = undistort_points(pts, kmat[None], torch.tensor(dist, dtype=torch.float64)[None])[0] + 0.5
    grid = torch.stack([2 * src[:, 0] / w - 1, 2 * src[:, 1] / h - 1], -1).reshape(1, h, w, 2).float()
    return torch.nn.functional.grid_sample(x[None], grid, mode="bilinear", align_corners=False)[0]


def write_procedural_recording(out: str | Path, indices: Sequence[int], units: str = "mm", seed: int = 0,
                               cameras: Sequence[LabCamera] = LAB_CAMERAS, size_scale: float = 1.0,
                               background: float = 0.35, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Write the recording (module docstring) of procedural scenes ``indices`` under ``out``; returns the truth.

    ``size_scale`` scales every camera's frame (and focal length). Images: the mouse over a plain ``background``
    grey; masks: the rendered alpha > 0.5. ``device``: where to rasterize (CUDA: gsplat).
    """
    device = torch.device(device)
    backend = "torch" if device.type == "cpu" else "auto"
    out = Path(out)
    m = lab_from_proc(units)
    truths = [camera_truth(c, size_scale) for c in cameras]
    cal = []
    for i, ((c2w, k, (h, w)), cam) in enumerate(zip(truths, cameras)):
        lab_c2w = m @ c2w  # the camera centre moved and scaled; its rotation turned by the lab's yaw, unscaled
        lab_c2w[:3, :3] /= PROC_UNIT_IN[units]
        w2c = invert_rigid(lab_c2w)
        fx, fy, cx, cy = k.tolist()
        cal.append({"name": f"cam{i}", "size": [w, h], "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                    "R": w2c[:3, :3].tolist(), "T": w2c[:3, 3].tolist(),
                    "dist": list(cam.dist) if cam.dist else [0.0] * 5})
    for f, index in enumerate(indices):
        plan = plan_scene(int(index), "mouse_oblique20_6view", num_views=1, size=64, seed=seed)
        for i, ((c2w, k, (h, w)), cam) in enumerate(zip(truths, cameras)):
            r = rasterize(plan.gaussians.to(device), c2w[None, None].float().to(device),
                          k[None, None].float().to(device), h, w, torch.zeros(3, device=device), backend=backend)
            premult, alpha = r["rgb"][0, 0].clamp(0, 1).cpu(), r["alpha"][0, 0].clamp(0, 1).cpu()
            rgb = (premult + (1 - alpha) * background).clamp(0, 1)
            if cam.dist:
                rgb, alpha = _distort(rgb, k, cam.dist), _distort(alpha, k, cam.dist)
            save_png(out / "images" / f"cam{i}" / f"{f:04d}.png", rgb)
            save_png(out / "masks" / f"cam{i}" / f"{f:04d}.png", (alpha > 0.5).float().expand(3, -1, -1))
    write_atomic(out / "calibration.json", json.dumps({"cameras": cal}, indent=1) + "\n")
    truth = {"units": units, "proc_unit_in_units": PROC_UNIT_IN[units], "lab_from_proc": m.tolist(), "seed": seed,
             "frames": [int(i) for i in indices],
             "cameras": [{"c2w": c2w.tolist(), "fxfycxcy": k.tolist(), "size": [h, w]} for c2w, k, (h, w) in truths]}
    write_atomic(out / "truth.json", json.dumps(truth, indent=1) + "\n")
    return truth


def truth_in_import(recording: str | Path, scene: str | Path) -> Gaussians:
    """The mouse of an imported frame (``scene``: a ``frame_NNNNNN`` folder of ``tools.import_captures`` run on
    ``recording``) as Gaussians in the import's world: the procedural mouse moved by the lab's known similarity
    (truth.json), then by the import's recorded centre and scale (capture.json)."""
    truth = json.loads((Path(recording) / "truth.json").read_text())
    meta = json.loads((Path(scene) / "capture.json").read_text())
    g = plan_scene(truth["frames"][meta["frame"]], "mouse_oblique20_6view", num_views=1, size=64,
                   seed=truth["seed"]).gaussians
    lab = torch.tensor(truth["lab_from_proc"], dtype=torch.float64)
    unit, s = float(truth["proc_unit_in_units"]), float(meta["scale"])
    means = (g.means[0].double() @ lab[:3, :3].T + lab[:3, 3] - torch.tensor(meta["center"])) * s
    rot = lab[:3, :3] / unit  # the lab's yaw turns each Gaussian too
    quats = torch.from_numpy(rotmat_to_quat((rot @ quat_to_rotmat(g.quats[0]).double()).numpy())).float()
    return Gaussians.unbatched(means=means.float(), quats=quats, scales=g.scales[0] * unit * s,
                               opacities=g.opacities[0], colors=g.colors[0])


def render_truth(recording: str | Path, scene: str | Path, supersample: int = 8) -> tuple[Tensor, Tensor]:
    """The imported frame's views rendered directly from the truth (:func:`truth_in_import` through the imported
    cameras), at ``supersample`` x the imported size and area-averaged down, as a camera integrates light (a render
    at the small size itself is fatter: the rasterizer's 0.3 px low-pass): (images [V, 3, S, S] straight colour,
    alpha [V, 1, S, S]) — what a perfect import of a perfect recording writes."""
    cams = read_camera_file(Path(scene) / "opencv_cameras.json")
    h, w = cams.sizes[0]
    k = cams.fxfycxcy.double() * supersample
    out = rasterize(truth_in_import(recording, scene), cams.c2w[None].float(), k[None].float(), h * supersample,
                    w * supersample, torch.zeros(3), backend="torch")
    premult, alpha = (resize_images(out[key][0].clamp(0, 1), (h, w)) for key in ("rgb", "alpha"))
    return straight_colour(premult, alpha), alpha


__all__ = ["LAB_CAMERAS", "PROC_UNIT_IN", "LabCamera", "camera_truth", "lab_from_proc", "render_truth",
           "truth_in_import", "write_procedural_recording"]
