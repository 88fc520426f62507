"""Procedural scenes: deterministic, on the rig, in frame; realistic mode; the synthesize CLI's FaceLift layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.procedural import EXTRA_ELEVATION_DEG, make_scene, rotmat_to_quat
from datamodules.synthesis import split_scenes
from geometry.camera_files import read_camera_file
from geometry.cameras import invert_rigid, project_points, spherical_from_c2w
from geometry.render import quat_to_rotmat
from geometry.rig import load_rig
from tools.synthesize import main as synthesize_main

SIZE = 48


@pytest.fixture(scope="module")
def rigs():
    return {name: load_rig(name) for name in ("facelift_6view", "mouse_oblique20_6view")}


def test_same_seed_and_index_give_the_same_scene():
    a = make_scene(3, "facelift_6view", 7, 32, seed=5)
    b = make_scene(3, "facelift_6view", 7, 32, seed=5)
    for key in ("images", "alpha", "c2w", "fxfycxcy"):
        assert torch.equal(a[key], b[key]), key
    assert a["scene_id"] == b["scene_id"] == "proc_5_000003"


def test_different_index_or_seed_gives_a_different_scene():
    base = make_scene(0, "facelift_6view", 6, 32, seed=0)
    for other in (make_scene(1, "facelift_6view", 6, 32, seed=0), make_scene(0, "facelift_6view", 6, 32, seed=1)):
        assert (base["alpha"] - other["alpha"]).abs().mean() > 0.01
        assert other["scene_id"] != base["scene_id"]


def test_rig_views_are_exactly_the_rig_cameras_and_extra_views_sit_on_its_sphere(rigs):
    for rig in rigs.values():
        scene = make_scene(2, rig, 9, SIZE)
        c2w, k = rig.cameras(SIZE)
        assert torch.equal(scene["c2w"][:6], c2w) and torch.equal(scene["fxfycxcy"][:6], k)
        extra = scene["c2w"][6:]
        _, elev, dist = spherical_from_c2w(extra.double())
        assert torch.allclose(dist, torch.full_like(dist, rig.radius), atol=1e-5)
        assert ((elev >= EXTRA_ELEVATION_DEG[0] - 1e-4) & (elev <= EXTRA_ELEVATION_DEG[1] + 1e-4)).all()
        uv, _ = project_points(torch.zeros(1, 3), extra, scene["fxfycxcy"][6:])  # they look at the target
        assert torch.allclose(uv, torch.full_like(uv, SIZE / 2), atol=1e-3)


def test_fewer_views_than_the_rig_keep_its_first_views_in_order(rigs):
    rig = rigs["facelift_6view"]
    scene = make_scene(0, rig, 3, 32)
    assert torch.equal(scene["c2w"], rig.cameras(32)[0][:3])


def test_camera_jitter_moves_rig_cameras_by_at_most_the_given_angle(rigs):
    rig = rigs["mouse_oblique20_6view"]
    scene = make_scene(4, rig, 6, 32, camera_jitter_deg=3.0)
    diff = rig.compare_cameras(scene["c2w"], angle_tol_deg=3.0)
    assert 0.05 < diff.worst_angle_deg <= 3.0 + 1e-3, str(diff)
    uv, _ = project_points(torch.zeros(1, 3), scene["c2w"], scene["fxfycxcy"])  # still aimed at the target
    assert torch.allclose(uv, torch.full_like(uv, 16.0), atol=1e-3)


def test_creature_is_inside_the_frame_of_every_rig_view_and_fills_a_sane_part(rigs):
    for rig in rigs.values():
        for index in range(6):
            alpha = make_scene(index, rig, rig.num_views, SIZE, seed=11)["alpha"][:, 0]
            for v, a in enumerate(alpha):
                ys, xs = torch.nonzero(a > 0.02, as_tuple=True)
                where = f"{rig.name} scene {index} view {v}"
                assert len(ys) > 0, where
                assert ys.min() > 0 and xs.min() > 0 and ys.max() < SIZE - 1 and xs.max() < SIZE - 1, where
                cover = (a > 0.5).float().mean().item()
                assert 0.015 < cover < 0.6, (where, cover)
                extent = max(ys.max() - ys.min(), xs.max() - xs.min()).item() / SIZE
                assert 0.15 < extent < 0.95, (where, extent)


def test_creature_is_many_gaussians_not_one_blob():
    g = make_scene(0, "facelift_6view", 1, 16)["gaussians"]
    assert 150 <= g.num_gaussians <= 1000
    assert g.colors.std(1).mean() > 0.01  # shading and parts, not a flat colour
    assert (g.opacities >= 0).all() and (g.opacities <= 1).all()


def test_clean_images_are_straight_rgb_with_the_object_mask():
    scene = make_scene(1, "facelift_6view", 6, 32)
    assert not scene["has_background"]
    assert scene["images"].shape == (6, 3, 32, 32) and scene["alpha"].shape == (6, 1, 32, 32)
    empty = scene["alpha"] < 1e-3
    assert (scene["images"].expand(-1, 3, -1, -1)[empty.expand(-1, 3, -1, -1)] == 0).all()
    assert scene["alpha"].min() >= 0 and scene["alpha"].max() <= 1


def test_realistic_scene_is_a_segmented_capture_a_3d_model_can_explain():
    clean = make_scene(5, "facelift_6view", 6, SIZE)
    real = make_scene(5, "facelift_6view", 6, SIZE, realistic=True)
    assert not real["has_background"]  # read like real data: photo composited with its mask
    assert torch.equal(real["c2w"], clean["c2w"]) and torch.equal(real["fxfycxcy"], clean["fxfycxcy"])
    outside = clean["alpha"] < 1e-3
    assert real["images"].expand(-1, 3, -1, -1)[outside.expand(-1, 3, -1, -1)].std() > 0.05  # a cluttered photo
    mask = real["alpha"]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}  # a segmenter's binary mask
    # the mask is the creature's silhouette, moved a little (segmentation error, pose error)
    m_real, m_clean = mask > 0.5, clean["alpha"] > 0.5
    iou = (m_real & m_clean).sum() / (m_real | m_clean).sum()
    assert 0.6 < iou.item() < 1.0
    # composited as readers do, the clutter survives only next to the silhouette: far from it the image is white
    composited = real["images"] * mask + (1 - mask)
    near = torch.nn.functional.max_pool2d(clean["alpha"], 7, stride=1, padding=3) > 1e-3
    far = ~near.expand(-1, 3, -1, -1)
    assert torch.equal(composited[far], torch.ones_like(composited[far]))
    # inside, it is the clean creature under a lighting gain, blur and noise: close, not equal
    inside = (m_real & m_clean).expand(-1, 3, -1, -1)
    diff = (composited - (clean["images"] * clean["alpha"] + 1 - clean["alpha"])).abs()[inside].mean()
    assert 0.005 < diff.item() < 0.25


@pytest.mark.parametrize("realistic", [False, True])
def test_scenes_rendered_in_a_batch_equal_scenes_rendered_alone(realistic):
    """Clean and realistic: a realistic batch's capture effects run at once (one blur of per-view strengths, one
    segmentation), each scene drawn from its own stream, so a scene is the same in any batch."""
    from datamodules.procedural import make_scenes

    batch = make_scenes([3, 4, 9], "facelift_6view", 6, SIZE, realistic=realistic)
    for i, scene in zip((3, 4, 9), batch):
        alone = make_scene(i, "facelift_6view", 6, SIZE, realistic=realistic)
        assert scene["scene_id"] == alone["scene_id"] and scene["meta"] == alone["meta"]
        assert torch.allclose(scene["images"], alone["images"], atol=1e-5)
        assert torch.allclose(scene["alpha"], alone["alpha"], atol=1e-5)
    if realistic:  # the scenes' blur differs, and the batch kept each scene's own
        assert len({s["meta"]["blur_sigma_px"] for s in batch}) == 3


def test_rotmat_to_quat_inverts_quat_to_rotmat():
    q = torch.nn.functional.normalize(torch.randn(200, 4, dtype=torch.float64), dim=-1)
    q = q * torch.sign(q[:, :1])
    back = torch.from_numpy(rotmat_to_quat(quat_to_rotmat(q).numpy()))
    assert torch.allclose(back, q, atol=1e-9)


def test_split_keeps_a_validation_tail():
    assert split_scenes(10, 0.1) == (list(range(9)), [9])
    assert split_scenes(3, 0.1) == ([0, 1], [2])
    assert split_scenes(1, 0.5) == ([0], [])
    assert split_scenes(4, 0.0) == ([0, 1, 2, 3], [])


def test_synthesize_writes_the_facelift_layout_with_round_tripping_cameras(tmp_path: Path):
    out = tmp_path / "ds"
    code = synthesize_main(["--out", str(out), "--scenes", "3", "--views", "7", "--size", "32",
                            "--rig", "mouse_oblique20_6view", "--seed", "4", "--val-fraction", "0.34"])
    assert code == 0
    samples = sorted(p.name for p in out.glob("sample_*"))
    assert samples == ["sample_000000", "sample_000001", "sample_000002"]
    train = (out / "data_train.txt").read_text().splitlines()
    val = (out / "data_val.txt").read_text().splitlines()
    assert train == [str((out / s).resolve()) for s in samples[:2]] and val == [str((out / samples[2]).resolve())]
    meta = json.loads((out / "dataset.json").read_text())
    rig = load_rig("mouse_oblique20_6view")
    assert meta["rig"] == rig.name and meta["rig_fingerprint"] == rig.fingerprint
    assert (meta["seed"], meta["realistic"], meta["scenes"], meta["train"], meta["val"]) == (4, False, 3, 2, 1)

    scene = make_scene(1, rig, 7, 32, seed=4)
    sample = out / "sample_000001"
    raw = json.loads((sample / "opencv_cameras.json").read_text())
    assert raw["id"] == "proc_4_000001" and len(raw["frames"]) == 7
    frame = raw["frames"][0]
    assert frame["file_path"] == "images/cam_000.png" and (frame["w"], frame["h"]) == (32, 32)
    w2c = torch.tensor([f["w2c"] for f in raw["frames"]], dtype=torch.float64)
    assert torch.allclose(invert_rigid(w2c).float(), scene["c2w"], atol=1e-5)
    cams = read_camera_file(sample / "opencv_cameras.json")
    assert torch.allclose(cams.c2w, scene["c2w"], atol=1e-5)
    assert torch.allclose(cams.fxfycxcy, scene["fxfycxcy"], atol=1e-4)
    for i, fp in enumerate(cams.file_paths):
        img = Image.open(sample / fp)
        assert img.mode == "RGBA" and img.size == (32, 32)
        rgba = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0).permute(2, 0, 1)
        assert (rgba[3] - scene["alpha"][i, 0]).abs().max() <= 0.5 / 255 + 1e-6
        assert (rgba[:3] - scene["images"][i]).abs().max() <= 0.5 / 255 + 1e-6


def test_synthesize_realistic_records_it_and_bad_arguments_fail(tmp_path: Path, capsys):
    out = tmp_path / "real"
    assert synthesize_main(["--out", str(out), "--scenes", "1", "--views", "2", "--size", "16", "--realistic",
                            "--camera-jitter-deg", "2"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["realistic"] and not meta["has_background"] and meta["camera_jitter_deg"] == 2.0
    assert synthesize_main(["--out", str(tmp_path / "bad"), "--scenes", "0"]) == 2
    assert "--scenes" in capsys.readouterr().err
    assert synthesize_main(["--out", str(tmp_path / "bad"), "--rig", "no_such_rig"]) == 2
    assert "unknown rig" in capsys.readouterr().err


def test_plans_drawn_in_worker_processes_equal_plans_drawn_here():
    from datamodules.procedural import ScenePlanner

    with ScenePlanner("mouse_oblique20_6view", 8, 32, realistic=True, workers=2) as pool:
        far = pool.plans([0, 1, 2])
    with ScenePlanner("mouse_oblique20_6view", 8, 32, realistic=True) as here:
        near = here.plans([0, 1, 2])
    for a, b in zip(far, near):
        assert a.scene_id == b.scene_id and a.meta == b.meta
        assert torch.equal(a.gaussians.means, b.gaussians.means) and torch.equal(a.render_c2w, b.render_c2w)
        assert a.capture_rng.bit_generator.state == b.capture_rng.bit_generator.state


def test_capture_draws_reach_the_device_unchanged_on_the_cpu():
    """_upload keeps a draw's values and dtype (the capture effects' backgrounds, shapes, counts, mask levels)."""
    from datamodules.procedural import _upload

    rng = np.random.default_rng(3)
    x, n = rng.uniform(0, 1, (2, 8, 8)), rng.integers(3, 9, 5)
    assert torch.equal(_upload(x, torch.device("cpu")), torch.from_numpy(x).float())
    up = _upload(n, torch.device("cpu"), torch.int64)
    assert up.dtype == torch.int64 and up.tolist() == n.tolist()


@pytest.mark.gpu
def test_capture_draws_uploaded_without_waiting_arrive_intact_on_a_busy_gpu():
    """Non-blocking uploads from pinned memory, issued behind queued kernels and their host arrays dropped at once,
    still carry every draw; a realistic scene rendered on the GPU keeps the CPU render's background colours (drawn
    by numpy, uploaded) within the texture noise that the two devices' generators draw differently."""
    from datamodules.procedural import _upload, make_scenes

    rng = np.random.default_rng(0)
    draws = [rng.uniform(0, 1, (6, 8, 8)) for _ in range(50)]
    busy = torch.randn(2048, 2048, device="cuda")
    ups = []
    for x in draws:
        busy = busy @ busy / 2048  # keeps the stream busy while the copies are queued
        ups.append(_upload(x, torch.device("cuda")))
    assert all(torch.equal(u.cpu(), torch.from_numpy(x).float()) for u, x in zip(ups, draws))
    cpu = make_scenes([2, 5], "mouse_oblique20_6view", 6, 64, realistic=True, seed=1)
    gpu = make_scenes([2, 5], "mouse_oblique20_6view", 6, 64, realistic=True, seed=1, device="cuda")
    for a, b in zip(cpu, gpu):
        mean_a, mean_b = a["images"].mean((2, 3)), b["images"].cpu().mean((2, 3))  # [V, 3]
        assert (mean_a - mean_b).abs().max() < 0.1, (mean_a - mean_b).abs().max()


def test_capture_effects_of_a_batch_are_a_few_batched_operations_not_hundreds_per_scene():
    """On a GPU every tensor operation is a kernel launch: a batch's capture effects must stay a fixed handful of
    batched operations: each scene more adds only its generators' draws (a few operations), not the ~500 of the
    per-scene code they replace."""
    from bench.realistic_render import count_capture_ops

    per_scene = (count_capture_ops(32, 16, 6) - count_capture_ops(16, 16, 6)) / 16
    assert 0 < per_scene < 10, per_scene


def test_the_pre_render_bench_times_its_parts_with_the_sources_planner_count(monkeypatch):
    """bench.realistic_render --parts (a GPU bench) runs its parts on any device, with the planner processes that
    ProceduralSource would start for that many scenes."""
    from bench.realistic_render import render_parts
    from datamodules import sources

    monkeypatch.setattr(sources.os, "cpu_count", lambda: 4)
    assert sources.planner_workers(8191) == 0 and sources.planner_workers(8192) == 2
    parts = render_parts(12, 16, 6, True, device="cpu")
    assert parts["planners"] == 0
    assert all(parts[k] >= 0 for k in ("planner_start_s", "plan_s")) and parts["render_s"] > 0, parts
