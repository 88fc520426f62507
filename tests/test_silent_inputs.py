"""Inputs that used to pass silently (issue 27, "Silent"): each is now refused by name or counted."""

from __future__ import annotations

import pytest

# ---- numeric options: refused at parse time -------------------------------------------------------------------------
INFER = ["x.png", "--diffusion", "d", "--reconstruction", "r", "--out", "o"]
EVALUATE = ["--ckpt", "a", "--data", "b", "--out", "o"]
SYNTHESIZE = ["--out", "o"]
BAD_OPTIONS = [
    ("infer", INFER, "--guidance", "nan"), ("infer", INFER, "--guidance", "inf"), ("infer", INFER, "--guidance", "-1"),
    ("infer", INFER, "--guidance", "1e30"), ("infer", INFER, "--steps", "0"), ("infer", INFER, "--seed", "-1"),
    ("infer", INFER, "--turntable-frames", "0"), ("infer", INFER, "--turntable-size", "-5"),
    ("infer", INFER, "--fps", "0"), ("infer", INFER, "--reference-view", "-1"),
    ("evaluate", EVALUATE, "--guidance", "nan"), ("evaluate", EVALUATE, "--steps", "-3"),
    ("evaluate", EVALUATE, "--batches", "0"), ("evaluate", EVALUATE, "--batch-size", "0"),
    ("evaluate", EVALUATE, "--num-input-views", "0"), ("evaluate", EVALUATE, "--grid-scenes", "-1"),
    ("evaluate", EVALUATE, "--num-workers", "-1"), ("evaluate", EVALUATE, "--seed", "nan"),
    ("synthesize", SYNTHESIZE, "--guidance", "nan"), ("synthesize", SYNTHESIZE, "--val-fraction", "nan"),
    ("synthesize", SYNTHESIZE, "--val-fraction", "1.5"), ("synthesize", SYNTHESIZE, "--camera-jitter-deg", "inf"),
    ("synthesize", SYNTHESIZE, "--scenes", "0"), ("synthesize", SYNTHESIZE, "--size", "-64"),
    ("synthesize", SYNTHESIZE, "--steps", "0"), ("synthesize", SYNTHESIZE, "--limit", "0"),
]


@pytest.mark.parametrize("tool,argv,flag,value", BAD_OPTIONS, ids=lambda x: x if isinstance(x, str) else "")
def test_non_finite_or_out_of_range_numbers_are_refused_at_parse_time(tool, argv, flag, value, capsys):
    import importlib

    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as e:
        module.build_parser().parse_args([*argv, flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and repr(value) in err, err


def test_good_numbers_still_parse():
    from tools import evaluate, infer, synthesize

    args = infer.build_parser().parse_args([*INFER, "--guidance", "0", "--steps", "1", "--seed", "7"])
    assert (args.guidance, args.steps, args.seed) == (0.0, 1, 7)
    assert evaluate.build_parser().parse_args([*EVALUATE, "--guidance", "1.5"]).guidance == 1.5
    assert synthesize.build_parser().parse_args([*SYNTHESIZE, "--val-fraction", "0"]).val_fraction == 0.0


def test_the_sampling_settings_refuse_a_non_finite_guidance_from_the_python_api():
    from lightning_modules.diffusion.sampling import Sampling

    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="--guidance"):
            Sampling(guidance=bad)


# ---- a bit-flipped checkpoint or export is a named error, not other numbers ---------------------------------------
def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _zip_member_data_offset(path, name_end: str) -> int:
    """Offset in the file of the data of the largest zip member whose name ends with ``name_end`` (torch.save stores
    tensors uncompressed, one member per storage)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if i.filename.endswith(name_end) or "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def test_a_bit_flipped_checkpoint_is_a_named_error(tmp_path):
    from tiny_checkpoints import reconstruction_checkpoint

    from lightning_modules.artifacts import CorruptWeightsError, load_checkpoint
    from lightning_modules.loading import load_stage

    ckpt = reconstruction_checkpoint(tmp_path / "rec.ckpt", "facelift_6view")
    good = load_stage(ckpt, "reconstruction")
    _flip_byte(ckpt, _zip_member_data_offset(ckpt, "/data/0"))
    assert load_checkpoint(ckpt)["state_dict"], "the flipped file still loads as a torch file"
    with pytest.raises(CorruptWeightsError, match=r"rec\.ckpt: the checkpoint's weights: 1 tensor \(net\.") as e:
        load_stage(ckpt, "reconstruction")
    assert "sha256" in str(e.value) and "corrupt" in str(e.value)
    assert good is not None


def test_a_bit_flipped_export_is_a_named_error_and_infer_says_so_in_one_line(tmp_path, capsys):
    import json

    from tiny_checkpoints import diffusion_export, reconstruction_export

    from lightning_modules.artifacts import HASH_KEY, CorruptWeightsError
    from lightning_modules.loading import load_stage
    from tools.infer import main

    export = reconstruction_export(tmp_path / "gslrm", "facelift_6view")
    stored = json.loads((export / "mvlift.json").read_text())[HASH_KEY]
    assert set(stored) == {"model.safetensors"} and len(stored["model.safetensors"]) == 64
    weights = export / "model.safetensors"
    _flip_byte(weights, weights.stat().st_size - 100)
    with pytest.raises(CorruptWeightsError, match=r"model\.safetensors: its sha256 differs"):
        load_stage(export, "reconstruction")
    diffusion = diffusion_export(tmp_path / "diffusion", "facelift_6view")
    assert "unet/diffusion_pytorch_model.safetensors" in json.loads((diffusion / "mvlift.json").read_text())[HASH_KEY]
    from PIL import Image

    Image.new("RGB", (16, 16), (90, 60, 30)).save(tmp_path / "p.png")
    rc = main([str(tmp_path / "p.png"), "--diffusion", str(diffusion), "--reconstruction", str(export),
               "--out", str(tmp_path / "out"), "--steps", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("infer:")]  # (diffusers' save bars above)
    assert rc == 2 and len(lines) == 1 and "model.safetensors: its sha256 differs" in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ---- tools.synthesize into a non-empty folder -------------------------------------------------------------------------
def test_synthesize_refuses_a_non_empty_out_unless_overwrite_which_replaces_it(tmp_path, capsys):
    import json

    from tools.synthesize import main

    out = tmp_path / "data"
    base = ["--out", str(out), "--views", "2", "--size", "16"]
    assert main([*base, "--scenes", "3"]) == 0
    assert main([*base, "--scenes", "1", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    assert len(list(out.glob("sample_*"))) == 3  # untouched
    assert main([*base, "--scenes", "1", "--seed", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("sample_*")) == ["sample_000000"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["scenes"] == 1 and meta["seed"] == 5
    # --overwrite never deletes what a data set of tools.synthesize does not hold
    (out / "notes.txt").write_text("mine")
    assert main([*base, "--scenes", "1", "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").is_file()
    assert (out / "sample_000000").is_dir()


# ---- all-transparent scenes and photos --------------------------------------------------------------------------------
def _transparent(scene) -> None:
    import numpy as np
    from PIL import Image

    for png in (scene / "images").glob("*.png"):
        rgba = np.asarray(Image.open(png).convert("RGBA")).copy()
        rgba[..., 3] = 0
        Image.fromarray(rgba).save(png)


def test_an_all_transparent_scene_is_skipped_and_counted_as_empty_mask(tmp_path):
    from test_data_sources import _write_scene

    from datamodules.datamodule import MultiViewDataModule
    from datamodules.io import SampleError

    root = tmp_path / "data"
    for name, seed in (("a", 0), ("empty", 1), ("c", 2)):
        _write_scene(root / name, 4, 16, seed, 8)
    _transparent(root / "empty")
    kw = {"stage": "reconstruction", "rig": "facelift_6view", "image_size": 16, "num_views": 4, "num_input_views": 2,
          "sources": [{"name": "f", "format": "facelift", "path": str(root)}], "num_workers": 0,
          "samples_per_epoch": 6, "batch_size": 1, "val_fraction": 0}
    dm = MultiViewDataModule(**kw, on_bad_sample="skip")
    dm.setup("fit")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert len(batches) == 6 and not any("empty" in b["scene_id"][0] for b in batches)
    report = dm.skip_report()
    assert report["total"] >= 1 and report["per_reason"] == {"empty_mask": report["total"]}
    assert all(e["reason"] == "empty_mask" and "fully transparent" in e["problem"] for e in report["examples"])
    strict = MultiViewDataModule(**kw, on_bad_sample="raise")
    strict.setup("fit")
    with pytest.raises(SampleError, match="fully transparent"):
        for _ in strict.train_dataloader():
            pass


def test_an_all_transparent_photo_is_refused_by_name(tmp_path):
    import numpy as np
    from PIL import Image

    from datamodules.photos import BackgroundRemoval, ImageInputError, read_image

    path = tmp_path / "ghost.png"
    Image.fromarray(np.zeros((24, 24, 4), np.uint8)).save(path)
    rgb, alpha = read_image(path)
    with pytest.raises(ImageInputError, match=r"ghost\.png: its alpha channel is fully transparent"):
        BackgroundRemoval("alpha")(rgb, alpha, str(path))
    image, mask, _ = BackgroundRemoval("none")(rgb, alpha, str(path))  # the way past it, said in the message
    assert mask is None and image.shape == (3, 24, 24)


# ---- --trust-pickle warns like --trust-checkpoint ---------------------------------------------------------------------
def test_trust_pickle_warns(tmp_path, caplog):
    import logging
    import pickle

    from geometry.calibration import read_pickle

    path = tmp_path / "cal.pkl"
    path.write_bytes(pickle.dumps([{"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]))
    with caplog.at_level(logging.WARNING):
        read_pickle(path)
        assert not caplog.records
        read_pickle(path, trust=True)
    assert any("--trust-pickle" in r.getMessage() and str(path) in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
