"""python -m tools.evaluate: checkpoint x data x rig tables (JSON / CSV / Markdown / grids), metric sanity, the chained
pipeline's rig guard (the user's FaceLift-rig diffusion + mouse-rig GS-LRM failure), checkpoint loading."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tiny_checkpoints import (
    diffusion_checkpoint,
    diffusion_export,
    reconstruction_checkpoint,
    reconstruction_export,
    reconstruction_module,
    save_lightning_checkpoint,
)

from lightning_modules.evaluation import jsonable, markdown, score_views, summarize
from tools.evaluate import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo.yaml"
FACELIFT, MOUSE = "facelift_6view", "mouse_oblique20_6view"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    return {
        "rec_facelift_ckpt": reconstruction_checkpoint(root / "rec_facelift" / "checkpoints" / "last.ckpt", FACELIFT),
        "rec_mouse_export": reconstruction_export(root / "rec_mouse_export", MOUSE),
        "diff_facelift_ckpt": diffusion_checkpoint(root / "diff_facelift.ckpt", FACELIFT),
        "diff_facelift_export": diffusion_export(root / "diff_facelift_export", FACELIFT),
    }


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_two_checkpoints_x_demo_data_x_two_rigs_write_json_csv_md_and_grids(ckpts, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["--ckpt", f"pretrained={ckpts['rec_facelift_ckpt']}", "--ckpt", f"finetuned={ckpts['rec_mouse_export']}",
                 "--data", str(DEMO), "--rig", FACELIFT, "--rig", MOUSE, "--out", str(out), "--batches", "1",
                 "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    demo_sources = {src["name"]: src["kind"] for src in yaml.safe_load(DEMO.read_text())["sources"]}
    assert sorted(demo_sources.values()) == ["synthetic", "synthetic"]  # a clean and a realistic source
    assert [(r["checkpoint"], r["data"], r["rig"]) for r in rows] == [
        ("pretrained", "demo", FACELIFT), ("pretrained", "demo", MOUSE),
        ("finetuned", "demo", FACELIFT), ("finetuned", "demo", MOUSE)]
    assert [r["checkpoint_rig"] for r in rows] == [FACELIFT, FACELIFT, MOUSE, MOUSE]
    assert [r["rig_match"] for r in rows] == [True, False, False, True]
    assert [r["rig_worst_angle_deg"] for r in rows] == pytest.approx([0.0, 20.0, 20.0, 0.0], abs=1e-3)
    for r in rows:
        assert r["mode"] == "reconstruction" and r["scenes"] == 2 and r["image_size"] == 16 and "error" not in r
        m = r["metrics"]
        assert set(m["all"]) == {"psnr", "psnr_fg", "psnr_fg_empty", "ssim", "ssim_fg", "ssim_fg_empty", "iou",
                                    "iou_empty", "n"}  # no LPIPS without local weights
        assert _finite(m["all"]["psnr"]) and _finite(m["all"]["ssim"]) and -1 <= m["all"]["ssim"] <= 1
        assert _finite(m["all"]["psnr_fg"]) and isinstance(m["all"]["psnr_fg_empty"], int)  # views without fg
        assert all(len(s["psnr_fg"]) == 2 for s in r["per_scene"])
        assert set(m["kind"]) == {"synthetic", "realistic"}  # demo data: 0.7 clean / 0.3 realistic, both synthetic
        assert set(m["source"]) == set(demo_sources)
        assert set(m["view"]) <= {"front", "front_right", "right", "back", "left", "front_left"} and m["view"]
        assert all(len(s["psnr"]) == len(s["views"]) == 2 for s in r["per_scene"])  # 6 views, 4 inputs
        assert r["cameras"] == {name: f"rendered from rig {r['rig']}" for name in demo_sources}
        grid = Image.open(out / r["grid"])
        assert grid.size[0] >= 16 * (4 + 2 + 2) and grid.size[1] >= 2 * 16
    # the same scenes through each rig, the same scenes for each checkpoint
    ids = [[s["scene_id"] for s in r["per_scene"]] for r in rows]
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert results["lpips"]["computed"] is False and "left out" in results["lpips"]["note"]

    with open(out / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert [(x["checkpoint"], x["rig"], x["rig_match"]) for x in lines] == [
        ("pretrained", FACELIFT, "True"), ("pretrained", MOUSE, "False"), ("finetuned", FACELIFT, "False"),
        ("finetuned", MOUSE, "True")]
    for x, r in zip(lines, rows):
        assert float(x["psnr"]) == pytest.approx(r["metrics"]["all"]["psnr"])
        assert float(x["ssim/realistic"]) == pytest.approx(r["metrics"]["kind"]["realistic"]["ssim"])
        assert float(x["psnr_fg"]) == pytest.approx(r["metrics"]["all"]["psnr_fg"])
        assert float(x["psnr_fg/synthetic"]) == pytest.approx(r["metrics"]["kind"]["synthetic"]["psnr_fg"])
        assert int(x["psnr_fg_empty"]) == r["metrics"]["all"]["psnr_fg_empty"]
        assert any(k.startswith("psnr_fg/view:") for k in x)
        assert "lpips" not in x

    md = (out / "results.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith(("| pretrained", "| finetuned"))]
    assert len(table) == 8  # main table + per-view table
    head = next(ln for ln in md.splitlines() if ln.startswith("| checkpoint | data | rig | checkpoint rig"))
    assert "PSNR synthetic" in head and "SSIM synthetic (realistic)" in head and "LPIPS" not in head
    assert "SSIM real" not in head  # the realistic procedural source is synthetic
    assert "| PSNR | PSNR fg | SSIM |" in head and "PSNR fg synthetic (realistic)" in head and "- PSNR fg: PSNR over the pixels" in md
    assert "| finetuned | demo | facelift_6view | mouse_oblique20_6view | **no** (20.0°) | 2 |" in md
    assert "LPIPS: left out" in md


def test_perfect_prediction_scores_inf_and_one_and_the_path_matches_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 3, 32, 32, generator=g)
    perfect = score_views(target.clone(), target)
    assert torch.isinf(perfect["psnr"]).all() and torch.allclose(perfect["ssim"], torch.ones(2, 3))
    pred = (target + 0.05 * torch.randn(2, 3, 3, 32, 32, generator=g)).clamp(0, 1)
    s = score_views(pred, target)
    for b in range(2):
        for v in range(3):
            p, t = pred[b, v][None], target[b, v][None]
            assert s["psnr"][b, v] == pytest.approx(float(peak_signal_noise_ratio(p, t, data_range=1.0)), rel=1e-5)
            assert s["ssim"][b, v] == pytest.approx(float(structural_similarity_index_measure(p, t, data_range=1.0)),
                                                    rel=1e-5)
    # aggregation: a scene's mean over views, then the mean over scenes (per kind / source / view too)
    scenes = [{"scene_id": str(b), "source": "src", "kind": ["synthetic", "real"][b], "views": ["a", "b", "c"],
               "psnr": s["psnr"][b].tolist(), "ssim": s["ssim"][b].tolist()} for b in range(2)]
    summary = summarize(scenes, ["psnr", "ssim"])
    assert summary["all"]["psnr"] == pytest.approx(float(s["psnr"].mean()), rel=1e-6)
    assert summary["kind"]["real"]["ssim"] == pytest.approx(float(s["ssim"][1].mean()), rel=1e-6)
    assert summary["view"]["b"]["psnr"] == pytest.approx(float(s["psnr"][:, 1].mean()), rel=1e-6)
    perfect_scene = [{**scenes[0], "psnr": perfect["psnr"][0].tolist(), "ssim": perfect["ssim"][0].tolist()}]
    top = summarize(perfect_scene, ["psnr", "ssim"])
    assert math.isinf(top["all"]["psnr"]) and top["all"]["ssim"] == pytest.approx(1.0)
    assert jsonable(top)["all"]["psnr"] == "inf"  # strict JSON has no Infinity
    row = {"checkpoint": "gt", "data": "d", "rig": "r", "checkpoint_rig": "r", "rig_match": True, "mode": "x",
           "scenes": 1, "metrics": top}
    md = markdown({"rows": [row], "settings": {"split": "val", "batches": 1, "batch_size": 1, "seed": 0,
                                               "device": "cpu"}, "lpips": {"note": "left out"}})
    assert "| gt | d | r | r | yes | 1 | ∞ | 1.0000 |" in md


def test_users_failure_in_the_chained_evaluation_stops_naming_both_rigs_unless_allowed(ckpts, tmp_path, capsys,
                                                                                         caplog):
    out = tmp_path / "chained"
    args = ["--diffusion", str(ckpts["diff_facelift_ckpt"]), "--ckpt", f"mouse={ckpts['rec_mouse_export']}",
            "--data", str(DEMO), "--rig", FACELIFT, "--out", str(out), "--batches", "1", "--batch-size", "2",
            "--steps", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'facelift_6view'" in err and "'mouse_oblique20_6view'" in err
    assert "front_right" in err and "20.00" in err and "--allow-rig-mismatch" in err
    assert not out.exists()  # stopped before any work

    with caplog.at_level(logging.WARNING):
        assert main([*args, "--allow-rig-mismatch"]) == 0
    assert "rig mismatch" in caplog.text and "mouse_oblique20_6view" in caplog.text
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["mode"] == "chained" and row["diffusion_rig"] == FACELIFT and row["diffusion_rig_match"] is False
    assert row["rig"] == FACELIFT and row["checkpoint_rig"] == MOUSE and row["rig_match"] is False
    assert _finite(row["metrics"]["all"]["psnr"]) and _finite(row["generated_metrics"]["all"]["psnr"])
    assert set(row["metrics"]["view"]) == {"front", "front_right", "right", "back", "left", "front_left"}
    md = (out / "results.md").read_text()
    assert "diffusion rig match" in md and "**no** (facelift_6view, allowed)" in md


def test_matching_chain_and_a_diffusion_checkpoint_alone(ckpts, tmp_path, capsys):
    out = tmp_path / "diff"
    rec = reconstruction_export(tmp_path / "rec_facelift", FACELIFT)
    assert main(["--diffusion", str(ckpts["diff_facelift_export"]), "--ckpt", str(rec), "--data", str(DEMO),
                 "--rig", FACELIFT, "--out", str(out / "chain"), "--batches", "1", "--batch-size", "1",
                 "--steps", "1"]) == 0
    (row,) = json.loads((out / "chain" / "results.json").read_text())["rows"]
    assert row["diffusion_rig_match"] is True and row["rig_match"] is True
    assert main(["--ckpt", str(ckpts["diff_facelift_export"]), "--data", str(DEMO), "--rig", MOUSE, "--out",
                 str(out / "alone"), "--batches", "1", "--batch-size", "1", "--steps", "1"]) == 0
    (row,) = json.loads((out / "alone" / "results.json").read_text())["rows"]
    assert row["mode"] == "diffusion" and row["stage"] == "diffusion" and row["rig_match"] is False
    assert len(row["per_scene"][0]["views"]) == 6 and _finite(row["metrics"]["all"]["psnr"])
    # a GS-LRM checkpoint given as --diffusion is refused, naming the file
    assert main(["--diffusion", str(rec), "--ckpt", str(rec), "--data", str(DEMO), "--out", str(out / "bad")]) == 2
    assert "rec_facelift" in capsys.readouterr().err


def test_bad_rows_are_recorded_and_the_exit_code_says_so(ckpts, tmp_path):
    cfg = tmp_path / "missing.yaml"
    cfg.write_text("stage: reconstruction\nsources: [{name: gone, kind: real, format: facelift, "
                   f"path: {tmp_path / 'nowhere'}}}]\n")
    out = tmp_path / "bad"
    assert main(["--ckpt", str(ckpts["rec_mouse_export"]), "--data", f"broken={cfg}", "--out", str(out)]) == 1
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert "nowhere" in row["error"] and row["data"] == "broken"
    assert "error:" in (out / "results.md").read_text()


def test_load_stage_reads_ckpt_and_export_and_the_ema_shadow(tmp_path):
    from callbacks.ema import EMA
    from lightning_modules.loading import checkpoint_stage, default_label, load_stage

    m = reconstruction_module(MOUSE)
    ema = EMA(decay=0.9)
    ema.shadow = {k: v.detach().clone() + 1.0 for k, v in m.net.state_dict().items()}
    ckpt = save_lightning_checkpoint(m, tmp_path / "run" / "checkpoints" / "step=5.ckpt", callbacks=[ema])
    assert checkpoint_stage(ckpt) == "reconstruction" and default_label(ckpt) == "run/step=5"
    key = "pixel_gaussian_decoder.1.weight"
    plain = load_stage(ckpt, "reconstruction")
    assert torch.equal(plain.net.state_dict()[key], m.net.state_dict()[key]) and not plain.training
    averaged = load_stage(ckpt, "reconstruction", ema=True)
    assert torch.equal(averaged.net.state_dict()[key], m.net.state_dict()[key] + 1.0)
    with pytest.raises(ValueError, match="reconstruction checkpoint, but a diffusion checkpoint"):
        load_stage(ckpt, "diffusion")
    bare = save_lightning_checkpoint(reconstruction_module(MOUSE), tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no EMA callback state"):
        load_stage(bare, ema=True)


def test_lpips_is_a_column_only_with_local_weights(ckpts, tmp_path, capsys):
    from lightning_modules.reconstruction.losses import _vgg16_features

    torch.manual_seed(0)
    vgg = {f"features.{k}": v.half() for k, v in _vgg16_features().state_dict().items()}  # random: plumbing only
    torch.save(vgg, tmp_path / "vgg16.pth")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, tmp_path / "lpips_vgg.pth")
    out = tmp_path / "lp"
    base = ["--ckpt", str(ckpts["rec_mouse_export"]), "--data", str(DEMO), "--out", str(out), "--batches", "1",
            "--batch-size", "1"]
    assert main([*base, "--lpips-weights", str(tmp_path / "lpips_vgg.pth"), "--vgg-weights",
                 str(tmp_path / "vgg16.pth")]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["lpips"]["computed"] is True
    (row,) = results["rows"]
    assert _finite(row["metrics"]["all"]["lpips"]) and len(row["per_scene"][0]["lpips"]) == 2
    assert "| LPIPS |" in (out / "results.md").read_text()
    assert main([*base, "--lpips-weights", str(tmp_path / "nope.pth"), "--vgg-weights",
                 str(tmp_path / "vgg16.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_a_checkpoint_trained_with_other_shared_settings_than_the_datas_is_reported_for_every_key(ckpts, tmp_path,
                                                                                                  caplog):
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING):  # the export: mouse rig, 16 px, 2 inputs; the demo data: mouse, 64 px, 4
        assert main(["--ckpt", f"m={ckpts['rec_mouse_export']}", "--data", str(DEMO), "--out", str(out),
                     "--batches", "1", "--batch-size", "1"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["shared_settings_differ"] == {"image_size": [16, 64], "num_input_views": [2, 4]}
    assert "image_size 16 (checkpoint) vs 64 (data)" in caplog.text and "num_input_views 2 (checkpoint) vs 4" in caplog.text
    assert "num_input_views 2 (checkpoint) vs 4 (data)" in (out / "results.md").read_text()


def test_csv_per_view_columns_follow_the_rig_and_grid_tiles_name_their_views(ckpts, tmp_path):
    from geometry.rig import load_rig

    out = tmp_path / "eval"
    assert main(["--ckpt", f"m={ckpts['rec_mouse_export']}", "--data", str(DEMO), "--out", str(out),
                 "--batches", "2", "--batch-size", "2", "--num-input-views", "2"]) == 0
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    views = [c.split("view:", 1)[1] for c in header if c.startswith("psnr/view:")]
    order = list(load_rig(MOUSE).view_names)
    assert len(views) >= 2 and views == sorted(views, key=order.index), views
    grid = Image.open(next((out / "grids").glob("*.png")))
    assert grid.size[0] > 0  # input / render / ground-truth columns with each tile's view name (labelled_grid tests)


def test_the_report_has_a_per_view_chart_of_every_row(ckpts, tmp_path):
    out = tmp_path / "eval"
    assert main(["--ckpt", f"a={ckpts['rec_mouse_export']}", "--ckpt", f"b={ckpts['rec_facelift_ckpt']}",
                 "--data", str(DEMO), "--out", str(out), "--batches", "1", "--batch-size", "2"]) == 0
    with Image.open(out / "chart.png") as im:
        assert im.format == "PNG" and im.size[0] >= 500 and im.size[1] >= 500  # two panels: PSNR, SSIM (trimmed)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(300)) > 50  # bars, labels: not blank
    assert "![PSNR and SSIM per view](chart.png)" in (out / "results.md").read_text()
