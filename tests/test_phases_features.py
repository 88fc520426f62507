"""What the Phases 1-3 study (issue 29) needs, feature by feature: a realistic procedural source scored against its
scene's clean truth (``truth: clean``), inputs that are a rig's views (``input_views: first``), chained evaluation at
held-out cameras with a diffusion export's EMA weights beside GS-LRM exports without any, Phase-3 data that holds the
generated views and the scene's truth (``tools.synthesize --from-diffusion --with-truth``), and the chain's panel of
``tools.plot``. The study itself, at toy size: tests/test_phases_study.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from tiny_checkpoints import reconstruction_module

from datamodules.augment import DomainGapAugment
from datamodules.datamodule import MultiViewDataModule
from datamodules.dataset import collate_samples
from datamodules.sources import build_source
from datamodules.views import reconstruction_views
from geometry.rig import load_rig

RIG = "mouse_oblique20_6view"


def _source(realistic: bool, truth: str | None = None, seed: int = 7) -> dict:
    cfg = {"name": "mice", "kind": "synthetic", "format": "procedural", "num_scenes": 3,
           "num_views": 8, "seed": seed, "device": "cpu", "realistic": realistic}
    if truth:
        cfg["truth"] = truth
    return cfg


def _batch(source: dict, stage: str = "diffusion", extra_views: int = 0, **kw) -> dict:
    args = {"stage": stage, "rig": RIG, "image_size": 24, "sources": [source], "val_fraction": 0.5, "batch_size": 2,
            "num_workers": 0, "samples_per_epoch": 2, "val_samples": 2, "augment": {"enabled": False}, **kw}
    dm = MultiViewDataModule(**args)
    dm.setup("validate")
    dm.builder = dataclasses.replace(dm.builder, extra_views=extra_views)
    return next(iter(dm.val_dataloader()))


def test_a_realistic_source_with_clean_truth_serves_the_clean_scene_and_shows_the_model_the_capture():
    clean = _batch(_source(False), extra_views=2)
    real = _batch(_source(True, "clean"), extra_views=2)
    capture = _batch(_source(True), extra_views=2)
    assert clean["scene_id"] == real["scene_id"] == capture["scene_id"]
    # the views (the truth) are the clean source's, pixel for pixel, at the same cameras (rig views + 2 beyond)
    assert real["images"].shape[1] == 8 and torch.equal(real["images"], clean["images"])
    assert torch.equal(real["c2w"], clean["c2w"]) and torch.equal(real["alpha"], clean["alpha"])
    # what the model sees is the capture: the realistic source's own reference (noise, blur, mask errors)
    assert torch.equal(real["input_images"], capture["ref_images"])
    assert torch.equal(real["input_alpha"], capture["ref_alpha"])
    assert (real["input_images"] - real["ref_images"]).abs().mean() > 0.005
    # reconstruction: the observed inputs are the first num_input_views views
    rec = _batch(_source(True, "clean"), "reconstruction", num_views=8, num_input_views=6, input_views="first")
    assert rec["input_images"].shape[1] == 6 and rec["index"][0, :6, 0].tolist() == list(range(6))


def test_truth_clean_is_refused_where_no_clean_truth_exists():
    rig = load_rig(RIG)
    with pytest.raises(ValueError, match="truth: clean is for realistic sources"):
        build_source(_source(False, "clean"), rig, 6, 16)
    with pytest.raises(ValueError, match="truth must be one of"):
        build_source(_source(True, "noisy"), rig, 6, 16)
    with pytest.raises(ValueError, match="truth is for procedural sources"):
        build_source({"name": "f", "format": "facelift", "path": "x", "truth": "clean"}, rig, 6, 16)


def test_first_input_views_are_the_scenes_first_views_and_the_rest_random():
    rng = np.random.default_rng(0)
    views = reconstruction_views(10, 8, 6, rng, "first")
    assert views[:6] == list(range(6)) and len(set(views)) == 8 and all(v >= 6 for v in views[6:])


def test_collate_fills_the_model_input_of_samples_without_observed_views_and_augment_starts_from_them():
    a = {"ref_images": torch.zeros(1, 3, 4, 4), "ref_alpha": torch.ones(1, 1, 4, 4)}
    b = {"ref_images": torch.ones(1, 3, 4, 4), "ref_alpha": torch.ones(1, 1, 4, 4),
         "input_images": torch.full((1, 3, 4, 4), 0.5), "input_alpha": torch.zeros(1, 1, 4, 4)}
    out = collate_samples([a, b])
    assert torch.equal(out["input_images"][0], a["ref_images"])
    assert torch.equal(out["input_images"][1], b["input_images"])
    aug = DomainGapAugment({"real": {"noise": {"p": 0.0, "std": 0.1}}}, seed=0)  # no op: the input passes through
    batch = {"ref_images": torch.zeros(1, 1, 3, 4, 4), "input_images": torch.full((1, 1, 3, 4, 4), 0.5),
             "kind": ["real"]}
    assert torch.equal(aug(batch, "diffusion", 0)["input_images"], torch.full((1, 1, 3, 4, 4), 0.5))


# ---- chained evaluation at held-out cameras -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases_exports")
    torch.manual_seed(0)
    from lightning_modules.diffusion.module import DiffusionModule

    diff = DiffusionModule(rig=RIG, view_embeddings="learned", view_init="scratch", image_size=16, view_tokens=4,
                           autoencoder="pixel", unet_channels=[8, 16], unet_attention_levels=[False, True],
                           unet_layers_per_block=1, unet_head_dim=8, camera_rays=True)
    ema = {k: v.clone() for k, v in diff.unet.state_dict().items()}
    return {"diffusion": diff.export(root / "diff", ema_weights=ema),
            "gslrm": reconstruction_module(RIG, num_input_views=6).export(root / "gslrm")}


def _heldout_data(tmp_path, realistic: bool) -> str:
    src = _source(realistic, "clean" if realistic else None)
    src.update(num_scenes=4)
    path = tmp_path / ("realistic.yaml" if realistic else "clean.yaml")
    path.write_text(yaml.safe_dump({"rig": RIG, "image_size": 16, "num_views": 8, "num_input_views": 6,
                                    "input_views": "first", "val_fraction": 1.0, "sources": [src]}))
    return str(path)


def test_chained_rows_score_held_out_cameras_copy_and_generated_views_against_the_clean_truth(exports, tmp_path):
    from tools.evaluate import main

    clean, real = _heldout_data(tmp_path, False), _heldout_data(tmp_path, True)
    out = tmp_path / "chain"
    assert main(["--diffusion", f"d={exports['diffusion']}", "--diffusion-ema", "--ckpt", f"g={exports['gslrm']}",
                 "--data", f"clean={clean}", "--data", f"realistic={real}", "--heldout-views", "2", "--steps", "1",
                 "--guidance", "1.0", "--batches", "1", "--batch-size", "2", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["diffusion_ema"] is True and res["settings"]["heldout_views"] == 2
    rows = {r["data"]: r for r in res["rows"]}
    for row in rows.values():
        assert row["diffusion"] == "d" and len(row["per_scene"][0]["views"]) == 8
        assert set(row["heldout_metrics"]["view"]) == {"view_006", "view_007"}
        for m in ("psnr", "psnr_fg", "ssim_fg", "iou"):
            assert m in row["heldout_metrics"]["all"] and m in row["heldout_copy_ref_metrics"]["all"]
        assert len(row["generated_novel_metrics"]["view"]) == 5  # the rig's views but the photo's
    # the same scenes and truth for both photos: the copies differ only by what the photo is
    assert rows["clean"]["per_scene"][0]["scene_id"] == rows["realistic"]["per_scene"][0]["scene_id"]
    assert rows["clean"]["heldout_copy_ref_metrics"]["all"]["psnr"] != rows["realistic"]["heldout_copy_ref_metrics"][
        "all"]["psnr"]
    assert "heldout/psnr_fg" in (out / "results.csv").read_text() and "held-out PSNR fg" in (
        out / "results.md").read_text()
    # baseline: the captured rig views straight into the GS-LRM, scored at the same held-out cameras
    base = tmp_path / "base"
    assert main(["--ckpt", f"g={exports['gslrm']}", "--data", f"realistic={real}", "--input-views", "first",
                 "--num-input-views", "6", "--batches", "1", "--batch-size", "2", "--out", str(base)]) == 0
    (row,) = json.loads((base / "results.json").read_text())["rows"]
    assert set(row["heldout_metrics"]["view"]) == {"view_006", "view_007"} == set(row["metrics"]["view"])
    # the chain's panel of tools.plot: both results folders, one bar group per model, one bar per data
    from tools.plot import main as plot_main

    assert plot_main(["--chain", str(out), "--chain", str(base / "results.json"), "--out",
                      str(tmp_path / "chain.png")]) == 0
    assert (tmp_path / "chain.png").stat().st_size > 1000
    assert plot_main(["--chain", str(out), str(out), "--out", str(tmp_path / "x.png")]) == 2


def test_a_diffusion_runs_default_curves_show_its_views_against_the_copy(tmp_path):
    from callbacks.run_curves import default_panels, load_curves

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/gen_psnr,val/copy_ref_psnr\n0,9,0.5,,\n0,9,,18.0,17.0\n")
    panels = default_panels([load_curves(csv)])
    assert panels[-1].columns == ["val/copy_ref_psnr", "val/gen_psnr"]


def test_heldout_views_and_diffusion_ema_need_a_chain(exports, tmp_path, capsys):
    from tools.evaluate import main

    data = _heldout_data(tmp_path, False)
    assert main(["--ckpt", str(exports["gslrm"]), "--data", data, "--heldout-views", "2", "--out",
                 str(tmp_path / "x")]) == 2
    assert "need --diffusion" in capsys.readouterr().err


# ---- Phase-3 data: generated views + the scene's truth, a source a fit config mixes ------------------------------
def test_generated_views_with_the_scenes_truth_form_a_mixable_reconstruction_source(exports, tmp_path):
    from geometry.camera_files import read_camera_file
    from tools.synthesize import main

    inputs = tmp_path / "inputs.yaml"
    src = _source(False, seed=3)
    src.update(num_scenes=3)
    inputs.write_text(yaml.safe_dump({"rig": RIG, "image_size": 16, "val_fraction": 0.34, "sources": [src]}))
    out = tmp_path / "phase3"
    assert main(["--from-diffusion", str(exports["diffusion"]), "--ema", "--inputs", str(inputs), "--kind", "all",
                 "--out", str(out), "--steps", "1", "--guidance", "1.0", "--with-truth", "--batch-size", "2"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["truth_views"] == [8] and meta["settings"]["with_truth"] and meta["scenes"] == 3
    assert [s["seed"] for s in meta["samples"]] == [0, 0, 2]  # one seed per batch of two
    cams = read_camera_file(out / "sample_000000" / "opencv_cameras.json")
    truth = build_source(src, load_rig(RIG), 8, 16).cameras(0)
    assert len(cams.c2w) == 14 and torch.allclose(cams.c2w[6:], truth.c2w, atol=1e-5)  # placement: identity here
    rig_c2w, _ = load_rig(RIG).cameras(16)
    assert torch.allclose(cams.c2w[:6], rig_c2w, atol=1e-5)
    # mixed with procedural scenes: the generated views are the inputs, the supervision the scene's true views
    phase3 = {"name": "phase3", "kind": "synthetic", "format": "facelift", "list_file": str(out / "data_train.txt"),
              "weight": 0.5}
    dm = MultiViewDataModule(stage="reconstruction", rig=RIG, image_size=16, num_views=8, num_input_views=6,
                             input_views="first", sources=[phase3, {**_source(False), "weight": 0.5}],
                             val_fraction=0.0, batch_size=4, num_workers=0, samples_per_epoch=4,
                             augment={"enabled": False})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(set(batch["source"])) == ["mice", "phase3"] and batch["images"].shape[1] == 8
    assert (batch["index"][:, 6:, 0] >= 6).all()  # supervision: never a generated view
