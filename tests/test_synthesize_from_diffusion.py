"""python -m tools.synthesize --from-diffusion: the diffusion model's views of real inputs as a FaceLift-layout data set
with the rig's cameras (Phase 3), accepted by ``tools.rig check`` and loaded by the MultiViewDataModule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny_checkpoints import SIZE, diffusion_checkpoint, diffusion_export, reconstruction_checkpoint

from datamodules.datamodule import MultiViewDataModule
from geometry.camera_files import read_camera_file
from geometry.rig import load_rig
from tools.rig import main as rig_main
from tools.synthesize import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo.yaml"
MOUSE, FACELIFT = "mouse_oblique20_6view", "facelift_6view"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth_models")
    torch.manual_seed(0)
    return {"mouse_export": diffusion_export(root / "diffusion_mouse", MOUSE),
            "facelift_ckpt": diffusion_checkpoint(root / "diffusion_facelift.ckpt", FACELIFT),
            "mouse_recon": reconstruction_checkpoint(root / "reconstruction_mouse.ckpt", MOUSE)}


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    """A FaceLift-layout folder of 3 small scenes (stands in for converted real captures)."""
    out = tmp_path_factory.mktemp("real") / "captures"
    assert main(["--out", str(out), "--scenes", "3", "--views", "2", "--size", "24", "--seed", "7"]) == 0
    return out


def test_views_of_a_data_configs_real_sources_form_a_rig_dataset_the_datamodule_loads(models, tmp_path, capsys):
    cfg = tmp_path / "mice.yaml"  # like configs/data/demo.yaml: a synthetic and a (procedural stand-in) real source
    cfg.write_text(yaml.safe_dump({
        "stage": "reconstruction", "rig": FACELIFT, "image_size": 64, "val_fraction": 0.1, "center_crop": True,
        "sources": [{"name": "synthetic", "kind": "synthetic", "format": "procedural", "num_scenes": 4},
                    {"name": "realistic", "kind": "synthetic", "format": "procedural", "realistic": True,
                     "num_scenes": 20, "seed": 1, "background": "as_is"}]}))
    out = tmp_path / "phase3"
    code = main(["--from-diffusion", str(models["mouse_export"]), "--inputs", str(cfg), "--out", str(out),
                 "--steps", "2", "--limit", "1", "--seed", "3", "--kind", "realistic"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["generator"] == "diffusion" and meta["rig"] == MOUSE
    assert meta["rig_fingerprint"] == load_rig(MOUSE).fingerprint and meta["views"] == 6 and meta["size"] == SIZE
    # only the realistic source (--kind realistic: synthetic captures); its held-out tail (val_fraction 0.1 of 20) stays held out
    assert [(s["source"], s["kind"], s["split"]) for s in meta["samples"]] == [
        ("realistic", "realistic", "train"), ("realistic", "realistic", "val")]
    assert [s["scene"] for s in meta["samples"]] == [0, 18]
    assert (meta["train"], meta["val"], meta["has_background"]) == (1, 1, True)
    assert (out / "data_train.txt").read_text().split() == [str((out / "sample_000000").resolve())]
    assert (out / "data_val.txt").read_text().split() == [str((out / "sample_000001").resolve())]
    c2w, k = load_rig(MOUSE).cameras(SIZE)
    for sample in ("sample_000000", "sample_000001"):
        cams = read_camera_file(out / sample / "opencv_cameras.json")
        torch.testing.assert_close(cams.c2w, c2w, atol=1e-5, rtol=0)
        torch.testing.assert_close(cams.fxfycxcy, k, atol=1e-4, rtol=0)
        for fp in cams.file_paths:
            img = Image.open(out / sample / fp)
            assert img.mode == "RGBA" and img.size == (SIZE, SIZE)
            assert (np.asarray(img)[..., 3] == 255).all()  # --matting opaque
        assert Image.open(out / sample / "reference.png").size == (SIZE, SIZE)

    assert rig_main(["check", str(out), "--rig", MOUSE]) == 0
    assert "OK" in capsys.readouterr().out
    assert rig_main(["check", str(out), "--rig", FACELIFT]) == 1  # and it is not the other rig

    sources = [{"name": "phase3", "kind": "synthetic", "format": "facelift", "list_file": str(out / "data_train.txt")}]
    val = [{"name": "phase3_val", "kind": "synthetic", "format": "facelift", "list_file": str(out / "data_val.txt")}]
    for stage in ("reconstruction", "diffusion"):  # diffusion: the cameras pass the data-vs-rig check too
        dm = MultiViewDataModule(stage=stage, rig=MOUSE, sources=sources, val_sources=val, image_size=SIZE,
                                 num_views=6, num_input_views=4, batch_size=1, num_workers=0, samples_per_epoch=1,
                                 val_samples=1, on_bad_sample="raise", augment={"enabled": False})
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["images"].shape == (1, 6, 3, SIZE, SIZE) and batch["rig"] == [MOUSE]
        assert next(iter(dm.val_dataloader()))["images"].shape[1] == 6


def test_folder_inputs_are_seeded_resumable_and_resizable(models, real_folder, tmp_path, capsys, caplog):
    def run(out: Path, *extra: str) -> int:
        return main(["--from-diffusion", str(models["facelift_ckpt"]), "--inputs", str(real_folder), "--out", str(out),
                     "--steps", "2", "--reference-view", "1", "--val-fraction", "0.34", "--size", "20", *extra])

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(a) == 0 and run(b) == 0 and run(c, "--seed", "1") == 0, capsys.readouterr().err
    meta = json.loads((a / "dataset.json").read_text())
    assert [s["split"] for s in meta["samples"]] == ["train", "train", "val"] and meta["size"] == 20
    assert meta["samples"][2]["scene_id"] == "proc_7_000002" and meta["settings"]["reference_view"] == 1
    img = "sample_000001/images/cam_004.png"
    assert (a / img).read_bytes() == (b / img).read_bytes()  # seeded
    assert (a / img).read_bytes() != (c / img).read_bytes()
    cams = read_camera_file(a / "sample_000000" / "opencv_cameras.json")
    torch.testing.assert_close(cams.c2w, load_rig(FACELIFT).cameras(20)[0], atol=1e-5, rtol=0)
    assert cams.sizes == [(20, 20)] * 6
    # the reference is the scene's view 1, as the DataModule prepares it (white background composite)
    ref = np.asarray(Image.open(a / "sample_000000" / "reference.png"))
    assert ref.shape == (SIZE, SIZE, 3)

    stamp = (a / img).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="mvlift.synthesize"):
        assert run(a, "--skip-existing") == 0
    assert (a / img).stat().st_mtime_ns == stamp and "3 kept" in caplog.text
    assert run(a, "--skip-existing", "--guidance", "2") == 2
    assert "guidance" in capsys.readouterr().err


def test_matting_callable_gives_the_alpha_and_mode_options_are_checked(models, real_folder, tmp_path, monkeypatch,
                                                                       capsys):
    (tmp_path / "matte.py").write_text(
        "import numpy as np\n"
        "def top_half(image):\n"
        "    m = np.zeros((image.height, image.width), np.uint8)\n"
        "    m[: image.height // 2] = 255\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "m"
    assert main(["--from-diffusion", str(models["mouse_export"]), "--inputs", str(real_folder), "--out", str(out),
                 "--steps", "1", "--limit", "1", "--matting", "matte:top_half"]) == 0, capsys.readouterr().err
    alpha = np.asarray(Image.open(out / "sample_000000" / "images" / "cam_002.png"))[..., 3]
    assert (alpha[: SIZE // 2] == 255).all() and (alpha[SIZE // 2:] == 0).all()
    assert json.loads((out / "dataset.json").read_text())["has_background"] is False

    base = ["--from-diffusion", str(models["mouse_export"]), "--inputs", str(real_folder), "--out", str(tmp_path / "x")]
    for extra, words in ((["--scenes", "3"], "--scenes"), (["--rig", FACELIFT], "rig"), (["--realistic"], "--realistic"),
                         (["--kind", "synthetic", "--inputs", str(DEMO), "--limit", "0"], "--limit")):
        assert main([*base, *extra]) == 2
        assert words in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "y"), "--inputs", str(real_folder)]) == 2
    assert "--from-diffusion" in capsys.readouterr().err
    assert main(["--from-diffusion", str(models["mouse_export"]), "--out", str(tmp_path / "z")]) == 2
    assert "--inputs" in capsys.readouterr().err


def test_rig_guard_refuses_a_reconstruction_checkpoint_of_another_rig_before_writing(models, real_folder, tmp_path,
                                                                                     capsys, caplog):
    def run(diffusion: str, out: Path, *extra: str) -> int:
        return main(["--from-diffusion", str(models[diffusion]), "--inputs", str(real_folder), "--out", str(out),
                     "--steps", "1", "--limit", "1", *extra])

    recon = ["--reconstruction", str(models["mouse_recon"])]
    refused = tmp_path / "refused"
    assert run("facelift_ckpt", refused, *recon) == 2  # the user's FaceLift-rig diffusion + 20° mouse-rig GS-LRM
    err = capsys.readouterr().err
    assert "rig mismatch" in err and repr(FACELIFT) in err and repr(MOUSE) in err and "--allow-rig-mismatch" in err
    assert not refused.exists()

    allowed = tmp_path / "allowed"
    with caplog.at_level(logging.WARNING, logger="mvlift.rig"):
        assert run("facelift_ckpt", allowed, *recon, "--allow-rig-mismatch") == 0, capsys.readouterr().err
    assert "rig mismatch" in caplog.text
    check = json.loads((allowed / "dataset.json").read_text())["rig_check"]
    assert (check["diffusion_rig"], check["reconstruction_rig"]) == (FACELIFT, MOUSE)
    assert (check["match"], check["mismatch_allowed"]) == (False, True)

    matching = tmp_path / "matching"
    assert run("mouse_export", matching, *recon) == 0, capsys.readouterr().err
    meta = json.loads((matching / "dataset.json").read_text())
    assert meta["rig_check"]["match"] is True and meta["train"] == 1
    assert meta["rig_check"]["reconstruction"] == str(models["mouse_recon"].resolve())

    for extra, words in ((["--allow-rig-mismatch"], "--reconstruction"),
                         (["--reconstruction", str(models["facelift_ckpt"])], "is a diffusion checkpoint")):
        assert run("mouse_export", tmp_path / "x", *extra) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["--out", str(tmp_path / "y"), *recon]) == 2  # a --from-diffusion option
    assert "--reconstruction" in capsys.readouterr().err
