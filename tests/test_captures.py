"""Real-recording import: calibration formats, normalization about the animal, rejected frames, the derived rig.

The recording is made here: an ellipsoid "mouse" (off the world origin, moving a little per frame) seen by 6 known
cameras at distances 2.0-3.4 (x10: centimetres), elevations -51..+78 deg, each looking near but not at the mouse.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle

import numpy as np
import pytest
import torch
import yaml

from datamodules.captures import ImportSettings, import_recording, normalize_frame
from geometry.calibration import load_calibration, rodrigues, rodrigues_vector
from geometry.camera_files import read_camera_file
from geometry.cameras import (
    camera_position,
    invert_rigid,
    look_at,
    normalize_about_subject,
    project_points,
    subject_center,
)
from geometry.images import save_png
from geometry.rig import load_rig

H, W, UNIT = 80, 96, 10.0  # image size; world units: cm (the rig below is in tenths of the calibration's units)
AZ = [10, 60, 120, 190, 250, 310]
EL = [-51, 20, 78, 35, 5, 50]
DIST = [2.0, 2.6, 3.4, 2.3, 3.0, 2.8]
MOUSE = np.array([0.3, -0.2, 0.1])  # the animal's centre, off the origin
AXES = np.array([0.35, 0.15, 0.13])


def known_cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """c2w [6, 4, 4] (world in cm, origin offset) and fxfycxcy [6, 4] for 96x80 images."""
    c2w = []
    for i, (a, e, d) in enumerate(zip(AZ, EL, DIST)):
        eye = torch.tensor(camera_position(a, e, d), dtype=torch.float64) + torch.tensor(MOUSE)
        aim = torch.tensor(MOUSE) + 0.08 * torch.tensor([np.sin(i), np.cos(i), 0.3])  # not exactly at the mouse
        up = torch.tensor([0.05 * np.sin(3 * i), 0.015, 1.0], dtype=torch.float64)
        m = look_at(eye, aim, up)
        m[:3, 3] *= UNIT
        c2w.append(m)
    f = torch.tensor([95.0, 110.0, 140.0, 100.0, 125.0, 118.0], dtype=torch.float64)
    k = torch.stack([f, f * 1.001, torch.full_like(f, W / 2 + 1.5), torch.full_like(f, H / 2 - 2.0)], dim=-1)
    return torch.stack(c2w), k


def render_blob(c2w: torch.Tensor, k: torch.Tensor, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rgb [H, W, 3], mask [H, W]) of the ellipsoid at ``center`` (world units = cm) seen by one camera."""
    fx, fy, cx, cy = k.tolist()
    v, u = np.mgrid[0:H, 0:W] + 0.5
    d_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
    rot, o = c2w[:3, :3].numpy(), c2w[:3, 3].numpy() / UNIT
    d = d_cam @ rot.T
    oc = (o - center) / AXES
    dd = d / AXES
    a, b, c = (dd * dd).sum(-1), 2 * (dd * oc).sum(-1), (oc * oc).sum() - 1
    mask = b * b - 4 * a * c > 0
    shade = 0.4 + 0.5 * (u / W)
    rgb = np.stack([shade, 0.6 * shade, np.full_like(u, 0.3)], -1) * mask[..., None]
    return rgb.astype(np.float32), mask.astype(np.float32)


def mouse_at(frame: int) -> np.ndarray:
    return MOUSE + np.array([0.02 * frame, -0.015 * frame, 0.0])


def write_recording(root, frames: int = 4, mask_cases: dict | None = None):
    """Frame folders per camera under root/images/cam{v}, masks under root/masks/cam{v}; ``mask_cases``: frame ->
    'empty' | 'border' | 'missing' for camera 1."""
    c2w, k = known_cameras()
    mask_cases = mask_cases or {}
    for v in range(6):
        for f in range(frames):
            rgb, mask = render_blob(c2w[v], k[v], mouse_at(f))
            case = mask_cases.get(f) if v == 1 else None
            if case == "empty":
                mask[:] = 0
            elif case == "border":
                mask[:, :3] = 1
            save_png(root / "images" / f"cam{v}" / f"{f:04d}.png", torch.from_numpy(rgb).permute(2, 0, 1))
            if case != "missing":
                save_png(root / "masks" / f"cam{v}" / f"{f:04d}.png", torch.from_numpy(mask)[None].expand(3, -1, -1))
            elif f == frames - 1:
                pass
    return c2w, k


def calibration_dicts(c2w, k):
    w2c = invert_rigid(c2w)
    cams = []
    for i in range(len(c2w)):
        fx, fy, cx, cy = k[i].tolist()
        cams.append({"name": f"cam{i}", "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "R": w2c[i, :3, :3].tolist(),
                     "T": w2c[i, :3, 3].tolist(), "dist": [0, 0, 0, 0, 0], "size": [W, H]})
    return cams


def points():
    g = torch.linspace(-0.3, 0.3, 3, dtype=torch.float64)
    return (torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + torch.tensor(MOUSE)) * UNIT


def assert_same_projection(cams, c2w, k):
    assert len(cams) == len(c2w)
    for i, cam in enumerate(cams):
        uv, _ = project_points(points(), cam.c2w(), cam.fxfycxcy())
        ref, _ = project_points(points(), c2w[i], k[i])
        assert (uv - ref).abs().max() < 0.5, i


@pytest.mark.parametrize("fmt", ["json", "yaml", "anipose", "pickle"])
def test_calibration_round_trip(tmp_path, fmt):
    c2w, k = known_cameras()
    cams = calibration_dicts(c2w, k)
    if fmt == "json":
        path = tmp_path / "cal.json"
        path.write_text(json.dumps({"cameras": cams}))
    elif fmt == "yaml":
        path = tmp_path / "cal.yaml"
        path.write_text(yaml.safe_dump({c["name"]: c for c in cams}))
    elif fmt == "anipose":
        path = tmp_path / "calibration.toml"
        lines = []
        for i, c in enumerate(cams):
            rvec = rodrigues_vector(torch.tensor(c["R"])).tolist()
            lines += [f"[cam_{i}]", f'name = "{c["name"]}"', f"size = {c['size']}", f"matrix = {c['K']}",
                      "distortions = [0.0, 0.0, 0.0, 0.0, 0.0]", f"rotation = {rvec}", f"translation = {c['T']}", ""]
        lines += ["[metadata]", "adjusted = false"]
        path.write_text("\n".join(lines))
    else:  # markerless_mouse_1's new_cam.pkl: list of dicts of numpy arrays, read without --trust-pickle
        path = tmp_path / "new_cam.pkl"
        path.write_bytes(pickle.dumps([{"K": np.array(c["K"]), "R": np.array(c["R"]), "T": np.array(c["T"])[:, None]}
                                       for c in cams]))
    assert_same_projection(load_calibration(path), c2w, k)


def test_rodrigues_and_unsafe_pickle(tmp_path):
    r = rodrigues(torch.tensor([0.3, -0.5, 0.9]))
    assert torch.allclose(rodrigues(rodrigues_vector(r)), r, atol=1e-10)
    path = tmp_path / "cal.pkl"
    path.write_bytes(pickle.dumps([{"K": np.eye(3), "R": np.eye(3), "T": np.zeros(3), "x": torch.nn.Identity}]))
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_calibration(path)
    cams = load_calibration(path, trust=True)
    assert len(cams) == 1


def test_normalization_invariants():
    c2w, k = known_cameras()
    c2w, k = c2w.clone(), k.clone()
    c2w[:, :3, 3] /= UNIT
    uv = torch.stack([project_points(torch.tensor(MOUSE)[None], c2w[i], k[i])[0][0] for i in range(6)])
    center = subject_center(c2w, k, uv)
    assert torch.allclose(center, torch.tensor(MOUSE), atol=1e-6)  # the animal, not the optical axes' meeting point
    new_c2w, new_k, _ = normalize_about_subject(c2w, k, center)
    assert torch.allclose(new_c2w[:, :3, 3].norm(dim=-1), torch.full((6,), 2.7, dtype=torch.float64), atol=1e-9)
    before, _ = project_points(center.expand(6, 1, 3), c2w, k)
    after, _ = project_points(torch.zeros(6, 1, 3, dtype=torch.float64), new_c2w, new_k)
    assert (before - after).abs().max() < 1e-6  # the centre stays at its pixel
    offs = torch.tensor([[0.02, 0, 0], [0, 0.02, 0], [0, 0, 0.02]], dtype=torch.float64)
    size_before = (project_points(center + offs, c2w[:, None].expand(6, 1, 4, 4)[:, 0], k)[0] - before).norm(dim=-1)
    size_after = (project_points(offs, new_c2w, new_k)[0] - after).norm(dim=-1)
    assert ((size_after / size_before.clamp_min(1e-9) - 1)[size_before > 0.5].abs().max()) < 0.02  # pixel size kept


def test_import_frame_folders_and_report(tmp_path):
    c2w, k = write_recording(tmp_path, frames=6, mask_cases={2: "empty", 3: "border", 4: "missing"})
    cams = load_calibration(_write_json(tmp_path, c2w, k))
    s = ImportSettings(size=64, end=8, skip={5})
    report = import_recording(cams, [tmp_path / "images" / f"cam{v}" for v in range(6)], tmp_path / "out",
                              [tmp_path / "masks" / f"cam{v}" for v in range(6)], settings=s, progress=False)
    assert [r["frame"] for r in report.kept] == [0, 1]
    assert report.counts == {"skipped": 1, "outside_range": 2, "no_mask": 1, "empty_mask": 1,
                             "mask_touches_border": 1}
    assert report.frames_considered == len(report.kept) + len(report.rejected) == 8
    assert report.units == "cm"
    saved = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert saved["rejected_by_reason"] == report.counts and saved["kept"] == 2
    for f in (0, 1):
        scene = tmp_path / "out" / f"frame_{f:06d}"
        cf = read_camera_file(scene / "opencv_cameras.json")
        d = cf.c2w[:, :3, 3].norm(dim=-1)  # one similarity: the mean distance is 2.7, the rig's spread is kept
        assert float(d.mean()) == pytest.approx(2.7, abs=1e-4) and float(d.max() / d.min()) > 1.5
        uv, _ = project_points(torch.zeros(1, 3), cf.c2w, cf.fxfycxcy)
        assert (uv - 32).abs().max() < 1e-3  # the animal's centre at the middle of every view
        assert torch.allclose(cf.fxfycxcy[:, 0], cf.fxfycxcy[0, 0], rtol=2e-3)  # one focal length: a rig's views
        from datamodules.photos import read_image

        _rgb, alpha = read_image(scene / "images" / "cam_000.png")
        assert alpha is not None and tuple(alpha.shape) == (1, 64, 64) and alpha.sum() > 50
        meta = json.loads((scene / "capture.json").read_text())
        assert np.allclose(meta["center"], mouse_at(f) * UNIT, atol=0.05 * UNIT)


def _write_json(root, c2w, k):
    path = root / "cal.json"
    path.write_text(json.dumps(calibration_dicts(c2w, k)))
    return path


def test_normalized_frame_projects_the_mouse(tmp_path):
    """A 3D point of the mouse lands on the same part of the cropped image as in the raw one (intrinsics follow
    the pixels): its pixel in the output equals the crop of its raw pixel, within 0.5 px."""
    c2w, k = known_cameras()
    masks = [torch.from_numpy(render_blob(c2w[v], k[v], MOUSE)[1])[None] for v in range(6)]
    s = ImportSettings(size=64)
    geo = normalize_frame(c2w, k, masks, s)
    center, c2w_n, k_out, boxes = geo.center, geo.c2w, geo.fxfycxcy, geo.boxes
    p = center[None]
    for v in range(6):
        raw, _ = project_points(p, c2w[v], k[v])
        x0, y0, x1, y1 = boxes[v]
        expect = torch.stack([(raw[0, 0] - x0) * 64 / (x1 - x0), (raw[0, 1] - y0) * 64 / (y1 - y0)])
        got, _ = project_points(torch.zeros(1, 3, dtype=torch.float64), c2w_n[v], k_out[v])
        assert (got[0] - expect).abs().max() < 0.5


def test_derived_rig_matches_frames(tmp_path):
    c2w, k = write_recording(tmp_path, frames=3)
    cams = load_calibration(_write_json(tmp_path, c2w, k))
    import_recording(cams, [tmp_path / "images" / f"cam{v}" for v in range(6)], tmp_path / "out",
                     [tmp_path / "masks" / f"cam{v}" for v in range(6)], settings=ImportSettings(size=64),
                     progress=False)
    from tools.rig import main

    assert main(["derive", str(tmp_path / "out"), "--name", "lab_test", "--out", str(tmp_path / "lab_test.yaml")]) == 0
    rig = load_rig(tmp_path / "lab_test.yaml")
    assert rig.num_views == 6 and rig.radius == pytest.approx(2.7, abs=1e-3)
    # the raw layout is recovered about the animal: elevations -51..+78 (not about the world origin)
    assert list(rig.elevations_deg) == pytest.approx(EL, abs=3.0)
    for f in range(3):
        cf = read_camera_file(tmp_path / "out" / f"frame_{f:06d}" / "opencv_cameras.json")
        diff = rig.compare_cameras(cf.c2w)
        assert max(v.angle_deg for v in diff.per_view) < 3.0  # stated tolerance: camera positions within 3 deg
        assert max(v.distance_diff for v in diff.per_view) < 0.05  # per-view distances: the mouse moves a little
    assert main(["check", str(tmp_path / "out"), "--rig", str(tmp_path / "lab_test.yaml"), "--angle-tol", "10"]) == 0


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None, reason="needs the video extra")
def test_markerless_layout_videos(tmp_path):
    import imageio.v2 as iio

    c2w, k = known_cameras()
    cams = calibration_dicts(c2w, k)
    (tmp_path / "videos_undist").mkdir()
    (tmp_path / "simpleclick_undist").mkdir()
    for v in range(6):
        kw = {"format": "FFMPEG", "fps": 5, "codec": "libx264", "quality": 10, "macro_block_size": 1,
              "pixelformat": "yuv444p"}
        w, wm = (iio.get_writer(tmp_path / d / f"{v}.mp4", **kw) for d in ("videos_undist", "simpleclick_undist"))
        for f in range(2):
            rgb, mask = render_blob(c2w[v], k[v], mouse_at(f))
            w.append_data((rgb * 255).astype(np.uint8))
            wm.append_data(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1))
        w.close()
        wm.close()
    (tmp_path / "new_cam.pkl").write_bytes(pickle.dumps(
        [{"K": np.array(c["K"]), "R": np.array(c["R"]), "T": np.array(c["T"])} for c in cams]))
    from tools.import_captures import main

    assert main(["--markerless", str(tmp_path), "--out", str(tmp_path / "out"), "--size", "32", "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["kept"] == 2 and report["rejected"] == 0


def test_center_photo_any_size():
    from datamodules.prepare import center_photo

    rgb = torch.zeros(3, 50, 120)
    mask = torch.zeros(1, 50, 120)
    mask[:, 10:30, 80:100] = 1  # a 20 px object off-centre in a wide photo
    rgb[:, 10:30, 80:100] = 0.5
    out = center_photo(rgb, mask, torch.ones(3))
    side = out.shape[-1]
    assert out.shape == (3, side, side) and side == round(20 / 0.6)
    dark = (out[0] < 0.75).nonzero()
    centre = dark.float().mean(0) + 0.5
    assert (centre - side / 2).abs().max() < 1.0  # the object in the middle, 0.6 of the frame
    assert center_photo(rgb, None, torch.ones(3)).shape == (3, 120, 120)


def test_diffusion_setup_refuses_a_source_whose_cameras_cannot_match_the_rig(tmp_path):
    """Imported frames feed the diffusion stage on the rig derived from them; on another rig the DataModule refuses
    the source at setup, naming the source, the view and the angle (never at the first draw)."""
    from datamodules.datamodule import MultiViewDataModule
    from datamodules.dataset import SourceRigError
    from tools.rig import main

    c2w, k = write_recording(tmp_path, frames=2)
    import_recording(load_calibration(_write_json(tmp_path, c2w, k)), [tmp_path / "images" / f"cam{v}" for v in range(6)],
                     tmp_path / "out", [tmp_path / "masks" / f"cam{v}" for v in range(6)],
                     settings=ImportSettings(size=32), progress=False)
    assert main(["derive", str(tmp_path / "out"), "--name", "lab", "--out", str(tmp_path / "lab.yaml")]) == 0
    kw = {"stage": "diffusion", "image_size": 16, "num_workers": 0, "batch_size": 1, "samples_per_epoch": 2,
          "val_fraction": 0, "rig_tolerance_deg": 10.0,
          "sources": [{"name": "lab_frames", "kind": "real", "format": "facelift", "path": str(tmp_path / "out")}]}
    dm = MultiViewDataModule(**kw, rig=str(tmp_path / "lab.yaml"))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (1, 6, 3, 16, 16)
    dm = MultiViewDataModule(**kw, rig="facelift_6view")
    with pytest.raises(SourceRigError, match=r"source 'lab_frames' cannot feed the diffusion stage: .*frame_000000: "
                                             r"cameras do not match rig 'facelift_6view' within 10\.0 deg.*worst view "
                                             r"'\w+' differs by \d+\.\d\d deg"):
        dm.setup("fit")
    # reconstruction keeps using sources with their own cameras whatever the rig
    rec = MultiViewDataModule(**{**kw, "stage": "reconstruction", "num_views": 6, "num_input_views": 2},
                              rig="facelift_6view")
    rec.setup("fit")


def test_undistort_moves_a_distorted_point_back_to_where_the_pinhole_camera_sees_it():
    """OpenCV's model (k1, k2, p1, p2, k3): a dot drawn where a point lands in the distorted image is, after
    ``undistort``, where the undistorted (pinhole) camera with the same K sees it."""
    from datamodules.captures import undistort
    from geometry.calibration import Camera

    h = w = 96
    k = torch.tensor([[80.0, 0, 48], [0, 80.0, 48], [0, 0, 1]], dtype=torch.float64)
    dist = torch.tensor([-0.35, 0.08, 0.002, -0.001, 0.0], dtype=torch.float64)
    cam = Camera("c", k, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), dist, (h, w))
    assert cam.distorted and not Camera("c", k, cam.R, cam.T).distorted
    k1, k2, p1, p2, k3 = dist.tolist()
    for u, v in ((88.0, 84.0), (12.0, 16.0), (80.0, 12.0)):  # pinhole pixel positions, near the corners
        x, y = (u - 48) / 80, (v - 48) / 80
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        ud, vd = 80 * xd + 48, 80 * yd + 48
        assert math.hypot(ud - u, vd - v) > 3.0  # the distortion moves this point visibly
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        dot = torch.exp(-((xs - ud) ** 2 + (ys - vd) ** 2) / (2 * 1.5**2))  # a blob at the distorted position
        out = undistort(dot.expand(3, h, w).clone(), cam)[0]
        assert out.shape == (h, w)
        cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
        assert math.hypot(float(cx) - u, float(cy) - v) < 0.75, (u, v, float(cx), float(cy))
    plain = torch.rand(3, h, w)
    assert undistort(plain, Camera("c", k, cam.R, cam.T)) is plain  # no distortion coefficients: untouched
