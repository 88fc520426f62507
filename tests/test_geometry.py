"""Camera conventions, rigs and rays: each convention written once in geometry/ and pinned here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from geometry.camera_files import CameraFile, read_camera_file, write_camera_file
from geometry.cameras import (
    blender_to_opencv,
    change_up,
    check_c2w,
    check_intrinsics,
    crop_intrinsics,
    focal_from_fov,
    invert_rigid,
    look_at,
    normalize_cameras,
    opencv_to_blender,
    project_points,
    scale_intrinsics,
    scene_center_from_rays,
    spherical_from_c2w,
)
from geometry.rays import nearest_point_to_origin, pixel_rays, plucker
from geometry.rig import Rig, available_rigs, load_rig

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACELIFT_CAMS = SHARED / "compat" / "facelift_mvdiffusion_6view_cameras.json"


def random_c2w(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2 + 0.1
    target = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.2
    return look_at(eye, target, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 3))


def test_facelift_rig_reproduces_facelift_camera_file():
    if not FACELIFT_CAMS.exists():
        pytest.skip(f"FaceLift camera file not found at {FACELIFT_CAMS} (../shared absent)")
    frames = json.loads(FACELIFT_CAMS.read_text())["frames"]
    w2c_file = torch.tensor([f["w2c"] for f in frames], dtype=torch.float64)
    k_file = torch.tensor([[f["fx"], f["fy"], f["cx"], f["cy"]] for f in frames], dtype=torch.float64)
    c2w, k = load_rig("facelift_6view").cameras(512, dtype=torch.float64)
    perm = [2, 1, 0, 5, 4, 3]  # view k of the rig is camera perm[k] of FaceLift's file
    assert torch.allclose(invert_rigid(c2w), w2c_file[perm], atol=1e-4)
    assert torch.allclose(k, k_file[perm], atol=1e-4)


def test_rig_front_camera_and_mouse_elevation():
    c2w, k = load_rig("facelift_6view").cameras()
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([0.0, -2.7, 0.0]), atol=1e-6)
    assert k[0, 0].item() == pytest.approx(548.99, abs=0.01)
    mouse, _ = load_rig("mouse_oblique20_6view").cameras()
    left = load_rig("mouse_oblique20_6view").view_names.index("left")
    assert torch.allclose(mouse[left, :3, 3], torch.tensor([2.537, 0.0, 0.923]), atol=2e-3)
    _, el, dist = spherical_from_c2w(mouse)
    assert torch.allclose(el, torch.full((6,), 20.0), atol=1e-4) and torch.allclose(dist, torch.full((6,), 2.7))


def test_rig_cameras_look_at_target_and_intrinsics_scale_with_size():
    rig = load_rig("mouse_oblique20_6view")
    c2w, k512 = rig.cameras(512)
    _, k128 = rig.cameras(128)
    assert torch.allclose(k128, k512 / 4)
    uv, depth = project_points(torch.zeros(6, 1, 3), c2w, k512)
    assert torch.allclose(uv, torch.full_like(uv, 256.0), atol=1e-3) and (depth > 0).all()


def test_projection_matches_kornia_pinhole():
    kornia_camera = pytest.importorskip("kornia.geometry.camera")
    from geometry.cameras import intrinsics_matrix

    c2w = random_c2w(4).float()
    k = torch.tensor([[300.0, 310.0, 128.0, 120.0]]).expand(4, 4)
    k4 = torch.eye(4).repeat(4, 1, 1)
    k4[:, :3, :3] = intrinsics_matrix(k)
    cam = kornia_camera.PinholeCamera(k4, invert_rigid(c2w), torch.full((4,), 240.0), torch.full((4,), 256.0))
    pts = torch.randn(4, 10, 3) * 0.3
    uv, depth = project_points(pts, c2w, k)
    assert torch.allclose(uv, cam.project(pts), atol=1e-3)
    assert (depth > 0).all()


def test_c2w_w2c_and_blender_opencv_round_trips():
    c2w = random_c2w(8)
    assert torch.allclose(invert_rigid(invert_rigid(c2w)), c2w, atol=1e-12)
    assert torch.allclose(invert_rigid(c2w) @ c2w, torch.eye(4, dtype=c2w.dtype).expand(8, 4, 4), atol=1e-12)
    assert torch.allclose(opencv_to_blender(blender_to_opencv(c2w)), c2w)
    gl = opencv_to_blender(c2w)  # an OpenGL camera looks down its -z
    assert torch.allclose(gl[:, :3, 2], -c2w[:, :3, 2]) and torch.allclose(gl[:, :3, 1], -c2w[:, :3, 1])


def test_zup_yup_round_trip_keeps_azimuth_and_elevation():
    c2w = random_c2w(5)
    yup = change_up(c2w, "z", "y")
    assert torch.allclose(change_up(yup, "y", "z"), c2w, atol=1e-12)
    for a, b in zip(spherical_from_c2w(c2w, up="z"), spherical_from_c2w(yup, up="y")):
        assert torch.allclose(a, b, atol=1e-6)
    y_rig = Rig.from_dict({**load_rig("mouse_oblique20_6view").to_dict(), "name": "y", "up_axis": "y"})
    z_cams, _ = load_rig("mouse_oblique20_6view").cameras(dtype=torch.float64)
    assert torch.allclose(change_up(y_rig.cameras(dtype=torch.float64)[0], "y", "z"), z_cams, atol=1e-9)


def test_scale_intrinsics_is_pixel_centre_exact():
    k = torch.tensor([500.0, 500.0, 256.0, 256.0])
    c2w = random_c2w(1).float()[0]
    pts = torch.randn(20, 3) * 0.2
    uv, _ = project_points(pts, c2w, k)
    uv2, _ = project_points(pts, c2w, scale_intrinsics(k, (512, 512), (128, 96)))
    assert torch.allclose(uv2, uv * torch.tensor([96 / 512, 128 / 512]), atol=1e-3)


def test_crop_intrinsics_moves_points_with_the_pixels():
    k = torch.tensor([500.0, 480.0, 250.0, 260.0])
    c2w = random_c2w(1).float()[0]
    pts = torch.randn(20, 3) * 0.2
    uv, _ = project_points(pts, c2w, k)
    box, out = (100.0, 80.0, 420.0, 400.0), (64, 64)
    uv2, _ = project_points(pts, c2w, crop_intrinsics(k, box, out))
    expect = (uv - torch.tensor(box[:2])) * torch.tensor([out[1] / 320, out[0] / 320])
    assert torch.allclose(uv2, expect, atol=1e-3)


def test_pixel_rays_match_brute_force_unprojection():
    c2w = random_c2w(2)
    k = torch.tensor([[40.0, 42.0, 15.5, 12.0], [30.0, 30.0, 16.0, 16.0]], dtype=torch.float64)
    o, d = pixel_rays(c2w, k, 24, 32)
    assert o.shape == (2, 24, 32, 3) and torch.allclose(d.norm(dim=-1), torch.ones(2, 24, 32, dtype=torch.float64))
    for b in range(2):
        for (i, j) in [(0, 0), (5, 17), (23, 31)]:
            x = torch.tensor([(j + 0.5 - k[b, 2]) / k[b, 0], (i + 0.5 - k[b, 3]) / k[b, 1], 1.0], dtype=torch.float64)
            world = c2w[b, :3, :3] @ x
            assert torch.allclose(d[b, i, j], world / world.norm())
            assert torch.allclose(o[b, i, j], c2w[b, :3, 3])
    # points along a pixel's ray project back onto that pixel's centre
    uv, _ = project_points((o[0, 5, 17] + 3.0 * d[0, 5, 17])[None], c2w[0], k[0])
    assert torch.allclose(uv[0], torch.tensor([17.5, 5.5], dtype=torch.float64))


def test_nearest_point_to_origin_and_plucker():
    g = torch.Generator().manual_seed(1)
    o = torch.randn(50, 3, generator=g, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    p = nearest_point_to_origin(o, d)
    ts = torch.linspace(-5, 5, 20001, dtype=torch.float64)
    brute = (o[:, None] + ts[None, :, None] * d[:, None]).norm(dim=-1).min(dim=1).values
    assert torch.allclose(p.norm(dim=-1), brute, atol=1e-3)
    assert torch.allclose((p * d).sum(-1), torch.zeros(50, dtype=torch.float64), atol=1e-12)
    pl = plucker(o, d)
    assert torch.allclose(pl[:, 3:], plucker(o + 2.5 * d, d)[:, 3:])  # moment independent of the point on the ray


def test_normalization_recovers_centre_and_radius():
    c2w, _ = load_rig("mouse_oblique20_6view").cameras(dtype=torch.float64)
    moved = c2w.clone()
    centre = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    moved[:, :3, 3] = moved[:, :3, 3] * 1.3 + centre
    assert torch.allclose(scene_center_from_rays(moved), centre, atol=1e-9)
    norm, _c, scale = normalize_cameras(moved, target_radius=2.7)
    assert torch.allclose(norm, c2w, atol=1e-9) and scale == pytest.approx(1 / 1.3)
    parallel = c2w[:1].expand(3, 4, 4).clone()
    with pytest.raises(ValueError, match="parallel"):
        scene_center_from_rays(parallel)


def test_bad_cameras_are_named():
    c2w = random_c2w(1)[0]
    bad = c2w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scene_7.*non-finite"):
        check_c2w(bad, "scene_7")
    skew = c2w.clone()
    skew[:3, 0] *= 2
    with pytest.raises(ValueError, match="orthonormal"):
        check_c2w(skew, "x")
    with pytest.raises(ValueError, match="positive"):
        check_intrinsics(torch.tensor([0.0, 1.0, 1.0, 1.0]), "x")


def test_rig_fingerprint_is_stable_and_tracks_cameras():
    a = load_rig("facelift_6view")
    assert a.fingerprint == load_rig(a.to_dict()).fingerprint
    renamed = Rig.from_dict({**a.to_dict(), "name": "other"})
    assert renamed.fingerprint == a.fingerprint
    assert load_rig("mouse_oblique20_6view").fingerprint != a.fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        Rig.from_dict({**load_rig("mouse_oblique20_6view").to_dict(), "fingerprint": a.fingerprint})
    assert {"facelift_6view", "mouse_oblique20_6view"} <= set(available_rigs())
    with pytest.raises(ValueError, match="unknown rig"):
        load_rig("no_such_rig")


def test_rig_focal_px_is_an_alternative_to_fov_deg():
    named = load_rig("facelift_6view")
    yaml_keys = {k: v for k, v in named.to_dict().items() if k != "fov_deg"}
    exact = Rig.from_dict({**yaml_keys, "focal_px": 256 / math.tan(math.radians(25.0))})  # = 548.99377 at 512 px
    printed = Rig.from_dict({**yaml_keys, "focal_px": 548.99})  # the YAML comment's 2-decimal figure
    half = Rig.from_dict({**yaml_keys, "image_size": 256, "focal_px": 548.99 / 2})  # focal is at the rig's size
    for rig in (exact, printed, half):
        c2w, k = rig.cameras(512, dtype=torch.float64)
        c2w_named, k_named = named.cameras(512, dtype=torch.float64)
        assert torch.allclose(c2w, c2w_named, atol=1e-4) and torch.allclose(k, k_named, atol=1e-2)
        assert rig.fov_deg == pytest.approx(50.0, abs=1e-3) and "focal_px" not in rig.to_dict()
    assert exact.fingerprint == named.fingerprint and torch.allclose(exact.cameras()[1], named.cameras()[1], atol=1e-4)
    assert printed.focal() == pytest.approx(548.99, abs=1e-9)
    assert printed.fingerprint != named.fingerprint  # 548.99 px is fov 50.0003 deg: a (slightly) different camera
    with pytest.raises(ValueError, match="facelift_6view.*not both"):
        Rig.from_dict({**named.to_dict(), "focal_px": 548.99})
    with pytest.raises(ValueError, match="focal_px must be > 0"):
        Rig.from_dict({**yaml_keys, "focal_px": 0})
    assert Rig.from_dict(yaml_keys).fov_deg == Rig.fov_deg == 50.0  # neither key: the dataclass default

def test_rig_compare_reports_per_view_degrees():
    a, b = load_rig("facelift_6view"), load_rig("mouse_oblique20_6view")
    assert a.compare(a).ok
    diff = a.compare(b)
    assert not diff.ok and diff.worst_angle_deg == pytest.approx(20.0, abs=1e-4)
    assert all(v.elevation_b == pytest.approx(20.0, abs=1e-4) for v in diff.per_view)
    assert "MISMATCH" in str(diff) and "front_right" in str(diff)
    c2w, _ = a.cameras()
    assert not a.compare_cameras(c2w[[1, 0, 2, 3, 4, 5]]).ok  # view order matters


def test_camera_file_round_trip(tmp_path):
    c2w, k = load_rig("mouse_oblique20_6view").cameras(256)
    cams = CameraFile("s", c2w, k, [(256, 256)] * 6, [f"images/cam_{i:03d}.png" for i in range(6)])
    write_camera_file(tmp_path / "opencv_cameras.json", cams)
    back = read_camera_file(tmp_path / "opencv_cameras.json")
    assert torch.allclose(back.c2w, c2w, atol=1e-6) and torch.equal(back.fxfycxcy, k)
    (tmp_path / "bad.json").write_text('{"frames": [{"w2c": [[1,0,0,0]], "fx": 1}]}')
    with pytest.raises(ValueError, match="bad.json frame 0: missing"):
        read_camera_file(tmp_path / "bad.json")


@pytest.mark.parametrize("frame, key, value, problem", [
    (3, "w2c", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "camera matrix has non-finite"),
    (4, "w2c", [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.7], [0, 0, 0, 1]], "rotation is not orthonormal"),
    (1, "fx", -5.0, "focal lengths must be positive"),
    (5, "w2c", [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "must be 4x4"),
])
def test_camera_file_errors_name_the_frame_and_the_problem(tmp_path, frame, key, value, problem):
    import json

    c2w, k = load_rig("mouse_oblique20_6view").cameras(64)
    write_camera_file(tmp_path / "opencv_cameras.json", CameraFile("s", c2w, k, [(64, 64)] * 6, [None] * 6))
    meta = json.loads((tmp_path / "opencv_cameras.json").read_text())
    meta["frames"][frame][key] = value
    (tmp_path / "opencv_cameras.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"opencv_cameras.json frame {frame}: .*{problem}"):
        read_camera_file(tmp_path / "opencv_cameras.json")


def test_rig_cli_compare_and_check(tmp_path, capsys):
    from tools.rig import main

    assert main(["compare", "facelift_6view", "facelift_6view"]) == 0
    assert main(["compare", "facelift_6view", "mouse_oblique20_6view"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["show", "facelift_6view", "--size", "256", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["views"][0]["focal_px"] == pytest.approx(focal_from_fov(50.0, 256), abs=1e-3)
    # a data set in rig order with cameras at the wrong distance fails the check and says why
    c2w, k = load_rig("facelift_6view").cameras(64)
    c2w[:, :3, 3] *= 3.2 / 2.7
    (tmp_path / "sample_000").mkdir()
    write_camera_file(tmp_path / "sample_000" / "opencv_cameras.json", CameraFile("s", c2w, k, [(64, 64)] * 6, [None] * 6))
    assert main(["check", str(tmp_path), "--rig", "facelift_6view"]) == 1
    assert "normalization" in capsys.readouterr().out
    assert math.isfinite(float(k[0, 0]))


def test_rig_check_compares_the_first_rig_views_of_scenes_with_more_views_and_flags_short_ones(tmp_path, capsys):
    """8-view scenes rotated 30 degrees were reported OK: only scenes of exactly the rig's view count were compared."""
    from datamodules.rig_check import check_dataset

    rig = load_rig("facelift_6view")
    c2w, k = rig.cameras(64)
    turn = torch.eye(4)
    turn[:2, :2] = torch.tensor([[math.cos(math.pi / 6), -math.sin(math.pi / 6)],
                                 [math.sin(math.pi / 6), math.cos(math.pi / 6)]])
    rotated = turn @ torch.cat([c2w, c2w[:2]])  # 8 views, the rig's six first, all turned 30 deg about up (z)
    (tmp_path / "turned").mkdir()
    write_camera_file(tmp_path / "turned" / "opencv_cameras.json",
                      CameraFile("t", rotated, torch.cat([k, k[:2]]), [(64, 64)] * 8, [None] * 8))
    report = check_dataset(tmp_path, "facelift_6view")
    assert not report["ok"] and report["rig_order_scenes"][0]["worst_angle_deg"] == pytest.approx(30.0, abs=0.1)
    (tmp_path / "short").mkdir()
    write_camera_file(tmp_path / "short" / "opencv_cameras.json",
                      CameraFile("s", c2w[:4], k[:4], [(64, 64)] * 4, [None] * 4))
    report = check_dataset(tmp_path, "facelift_6view")
    assert any("fewer views than the rig's 6" in p for p in report["problems"])
    (tmp_path / "uncalibrated" / "images").mkdir(parents=True)
    report = check_dataset(tmp_path, "facelift_6view")
    assert report["scenes_without_cameras"] == [str(tmp_path / "uncalibrated")]
    assert any("no opencv_cameras.json" in p for p in report["problems"])
