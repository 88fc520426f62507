"""Phase 2 on real data (issue 15): a tiny imported recording, the rig derived from it, tiny models of both stages;
chained tools.evaluate places the result in the real cameras' frame through the reference camera and scores
PSNR / SSIM (image and foreground box) and silhouette IoU; the reconstruction row on the same data is the baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from test_captures import _write_json, write_recording
from tiny_checkpoints import diffusion_export, reconstruction_export

from datamodules.captures import ImportSettings, import_recording
from geometry.calibration import load_calibration
from geometry.camera_files import read_camera_file
from geometry.cameras import cameras_into_frame, project_points
from geometry.render import Gaussians, rasterize
from geometry.rig import load_rig
from lightning_modules.evaluation.runner import rig_to_data_frame


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    c2w, k = write_recording(root, frames=2)
    import_recording(load_calibration(_write_json(root, c2w, k)), [root / "images" / f"cam{v}" for v in range(6)],
                     root / "scenes", [root / "masks" / f"cam{v}" for v in range(6)],
                     settings=ImportSettings(size=32), progress=False)
    from tools.rig import main

    assert main(["derive", str(root / "scenes"), "--name", "lab", "--out", str(root / "lab.yaml")]) == 0
    return root


def test_a_point_made_in_the_rig_frame_renders_where_the_real_camera_projects_it(recording):
    """The placement rule: a Gaussian at X in the rig's frame, rendered at the real cameras brought into the rig's
    frame, lands on the pixel where each real camera projects M X (M: rig camera K -> real camera K)."""
    rig = load_rig(recording / "lab.yaml")
    cams = read_camera_file(recording / "scenes" / "frame_000000" / "opencv_cameras.json")
    c2w, k = cams.c2w.double(), cams.fxfycxcy.double()
    for view in (0, 2):
        m, scale = rig_to_data_frame(rig, view, c2w[view][None])
        # the real camera's distance to the animal over the rig camera's (a derived rig has one per view)
        assert float(scale[0]) == pytest.approx(float(c2w[view, :3, 3].norm()) / rig.view_distances[view], rel=1e-4)
        assert float(scale[0]) == pytest.approx(1.0, rel=0.02)  # the rig was derived from these frames
        x_rig = torch.tensor([0.12, -0.08, 0.05], dtype=torch.float64)
        x_real = m[0, :3, :3] @ x_rig + m[0, :3, 3]
        g = Gaussians(means=x_rig.float()[None, None], quats=torch.tensor([[[1.0, 0, 0, 0]]]),
                      scales=torch.full((1, 1, 3), 0.01), opacities=torch.ones(1, 1), colors=torch.zeros(1, 1, 3))
        in_rig = cameras_into_frame(c2w[None], m).float()
        out = rasterize(g, in_rig, k.float()[None], 32, 32, torch.ones(3), backend="torch")
        for v in range(6):
            a = out["alpha"][0, v, 0]
            ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
            got = torch.stack([(a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()])
            want, _ = project_points(x_real[None], c2w[v], k[v])
            assert (got.double() - want[0]).abs().max() < 0.5, (view, v)
        if view == 0:  # the reference camera itself: the rig's camera K sees the point where the real one does
            rig_c2w, _ = rig.cameras(32, dtype=torch.float64)
            assert torch.allclose(in_rig[0, view].double(), rig_c2w[view], atol=1e-4)


def test_phase2_chained_and_baseline_rows_on_the_real_recording(recording, tmp_path):
    from tools.evaluate import main

    lab = str(recording / "lab.yaml")
    data = tmp_path / "real.yaml"
    data.write_text(yaml.safe_dump({
        "rig": lab, "image_size": 16, "num_views": 6, "num_input_views": 2, "val_fraction": 0,
        "sources": [{"name": "lab_frames", "kind": "real", "format": "facelift", "path": str(recording / "scenes")}]}))
    diff, rec = diffusion_export(tmp_path / "diff", lab), reconstruction_export(tmp_path / "gslrm", lab)
    common = ["--data", f"real={data}", "--split", "train", "--batches", "1", "--batch-size", "2"]
    assert main(["--diffusion", str(diff), "--ckpt", f"chained={rec}", *common, "--steps", "1",
                 "--out", str(tmp_path / "phase2")]) == 0
    assert main(["--ckpt", f"baseline={rec}", *common, "--out", str(tmp_path / "baseline")]) == 0
    for name, mode in (("phase2", "chained"), ("baseline", "reconstruction")):
        (row,) = json.loads((tmp_path / name / "results.json").read_text())["rows"]
        assert row["mode"] == mode and row["metrics"]["kind"]["real"]["n"] == 2
        for m in ("psnr", "psnr_fg", "ssim", "ssim_fg", "iou"):
            assert math.isfinite(row["metrics"]["all"][m]), (name, m)
        assert 0.0 <= row["metrics"]["all"]["iou"] <= 1.0
        head = (tmp_path / name / "results.md").read_text()
        assert "| IoU |" in head and "SSIM fg" in head and "iou" in (tmp_path / name / "results.csv").read_text()
    (row,) = json.loads((tmp_path / "phase2" / "results.json").read_text())["rows"]
    assert row["placement"]["scale_min"] == pytest.approx(1.0, rel=0.02)  # the rig was derived from these frames
    assert "rig's camera K" in row["placement"]["rule"]
    # the held-out views: every data view but the one the photo is, against copying the photo into them
    scene = row["per_scene"][0]
    novel = json.loads((tmp_path / "phase2" / "results.json").read_text())["rows"][0]["novel_metrics"]
    assert novel["all"]["n"] == 2 and math.isfinite(novel["all"]["psnr"])
    assert set(novel["view"]) < set(scene["views"]) and len(novel["view"]) == len(scene["views"]) - 1
    assert "copy-ref PSNR" in (tmp_path / "phase2" / "results.md").read_text()
