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
    from lightning_modules.diffusion_sampling import Sampling

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
