"""Writes stay below the folder the user named (issue 27, "Writes that escape"): every path a tool derives from user
input is tried with ``..``, an absolute path and a symlink leading outside."""

from __future__ import annotations

import errno
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_sources import _write_scene
from tiny_checkpoints import diffusion_checkpoint, reconstruction_export

from datamodules.io import SampleError
from datamodules.sources import ShardSource

RIG = "facelift_6view"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ---- tools.infer: one folder per photo, always below --out ------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("escape_ckpts")
    torch.manual_seed(0)
    return {"diffusion": diffusion_checkpoint(root / "diffusion.ckpt", RIG),
            "reconstruction": reconstruction_export(root / "gslrm", RIG)}


def _photo(path: Path) -> Path:
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[6:18, 6:18] = [180, 120, 90, 255]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba).save(path, format="PNG")
    return path


def _infer(ckpts, images, out, *extra) -> int:
    from tools.infer import main

    return main([*map(str, images), "--diffusion", str(ckpts["diffusion"]), "--reconstruction",
                 str(ckpts["reconstruction"]), "--out", str(out), "--steps", "1", "--turntable-frames", "2",
                 "--turntable-size", "16", *extra])


def test_infer_output_names_stay_below_out(ckpts, tmp_path, capsys):
    """``...png`` has the stem ``..``: its outputs went to the parent of --out. Now each photo's folder is one plain
    name below --out."""
    photos = tmp_path / "photos"
    dots, plain = _photo(photos / "...png"), _photo(photos / "mouse.png")
    parent = tmp_path / "work"
    out = parent / "out"
    assert _infer(ckpts, [dots, plain], out) == 0, capsys.readouterr().err
    assert _files(parent) - {"out"} == {p for p in _files(parent) if p.startswith("out/")}, "wrote beside --out"
    assert sorted(p.name for p in out.iterdir()) == ["__", "mouse"]
    info = json.loads((out / "__" / "info.json").read_text())
    assert info["output"] == "__" and info["image"] == str(dots)
    assert not list(out.glob(".*")), "no temporary folder left"
    from tools.infer import output_name

    assert [output_name(Path(n)) for n in ("...png", "..png", "a b.png", "x.y.png")] == ["__", "_", "a_b", "x.y"]


def test_infer_refuses_an_output_folder_that_is_a_symlink_leading_outside(ckpts, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "mouse").symlink_to(outside, target_is_directory=True)
    assert _infer(ckpts, [_photo(tmp_path / "mouse.png")], out) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "outside" in err and "Traceback" not in err
    assert _files(outside) == set()


def test_a_full_disk_is_named_and_leaves_no_partial_infer_folder(ckpts, tmp_path, capsys, monkeypatch):
    """An OSError ENOSPC from a write halfway through an image (after its views, at the PLY) is an error naming the
    image and the folder; the image's folder is not left half-written, and images done before it are whole."""
    from lightning_modules import pipeline

    photos = [_photo(tmp_path / "a.png"), _photo(tmp_path / "b.png")]
    calls = []

    def full_disk(gaussians, path):
        calls.append(path)
        if len(calls) == 2:  # the second image
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(gaussians, path)

    real = pipeline.save_scene_ply
    monkeypatch.setattr(pipeline, "save_scene_ply", full_disk)
    out = tmp_path / "out"
    assert _infer(ckpts, photos, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "b.png" in err and "No space left on device" in err and str(out / "b") in err
    assert sorted(p.name for p in out.iterdir()) == ["a"], "a partial folder (or a temporary) was left"
    assert (out / "a" / "info.json").is_file() and (out / "a" / "gaussians.ply").is_file()


# ---- tools.fit: --checkpoint.filename ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "subfolder"])
def test_fit_refuses_a_checkpoint_filename_leading_out_of_the_run(tmp_path, capsys, kind):
    from test_fit_cli import _config

    from tools.fit import cli_main

    target = {"absolute": str(tmp_path / "elsewhere" / "ck"), "dotdot": "../../../../x", "subfolder": "sub/x"}[kind]
    rc = cli_main(["-c", str(_config(tmp_path, run="r1")), "--checkpoint.filename", target])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "checkpoint filename" in err and repr(target) in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()
    assert _files(tmp_path) == {"fit.yaml"}


def test_the_path_resolver_refuses_such_a_filename_from_the_python_api(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from callbacks.paths import CheckpointPaths
    from callbacks.run_layout import PathError, RunPaths

    cb = CheckpointPaths(root=str(tmp_path), experiment="e", run="r")
    cb._paths = RunPaths(tmp_path, "e", "r")
    with pytest.raises(PathError, match="checkpoint filename"):
        cb.configure_checkpoint(ModelCheckpoint(filename="../x"))
    ok = ModelCheckpoint(filename="{epoch}-{step}")
    cb.configure_checkpoint(ok)
    assert ok.dirpath == str(tmp_path / "e" / "r" / "checkpoints")


# ---- tools.make_shards --prefix ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["../../x", "ABS", "a/b", ".."])
def test_make_shards_refuses_a_prefix_that_is_a_path(tmp_path, capsys, prefix):
    from tools.make_shards import main

    _write_scene(tmp_path / "src" / "s0", 3, 8, 0, 8)
    if prefix == "ABS":
        prefix = str(tmp_path / "abs" / "x")
    work = tmp_path / "work"
    work.mkdir()
    before = _files(tmp_path)
    assert main([str(tmp_path / "src"), str(work / "out"), "--prefix", prefix]) == 2
    err = capsys.readouterr().err
    assert "--prefix" in err and repr(prefix) in err and "Traceback" not in err
    assert _files(tmp_path) == before, "make_shards wrote something"
    assert main([str(tmp_path / "src"), str(work / "out"), "--prefix", "mice"]) == 0
    assert sorted(p.name for p in (work / "out").iterdir()) == ["mice-000000.tar"]


# ---- shards: a camera file's file_path is refused on read as on --to-folders -----------------------------------------
@pytest.mark.parametrize("bad", ["../..", "../../x.png", "/etc/hostname", "ABS"])
def test_the_shard_reader_refuses_file_paths_that_to_folders_refuses(tmp_path, bad):
    scene = tmp_path / "src" / "s"
    _write_scene(scene, 3, 8, 0, 8)
    cams = json.loads((scene / "opencv_cameras.json").read_text())
    if bad == "ABS":
        bad = str(tmp_path / "abs.png")
    cams["frames"][1]["file_path"] = bad
    members = {"00000000_s.cameras.json": json.dumps(cams).encode()}
    for v in range(3):
        members[f"00000000_s.{v:03d}.png"] = (scene / "images" / f"cam_{v:03d}.png").read_bytes()
    shard = tmp_path / "shards" / "shard-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    source = ShardSource("shards", "real", urls=str(shard))
    with pytest.raises(SampleError, match=r"frame 1: file_path") as e:
        source.cameras(0)
    assert repr(bad) in str(e.value) and "shard-000000.tar" in str(e.value)


# ---- tools.rig derive --name ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "ABS", "a/b", ".."])
def test_rig_derive_refuses_a_name_that_leaves_the_rig_folder(tmp_path, capsys, name):
    from geometry.rig import RIGS_DIR
    from tools.rig import main

    if name == "ABS":
        name = str(tmp_path / "x")
    before = _files(RIGS_DIR)
    assert main(["derive", str(tmp_path / "missing.json"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert "--name" in err and repr(name) in err
    assert _files(RIGS_DIR) == before and not (tmp_path / "x.yaml").exists()
    assert not (RIGS_DIR / f"{name}.yaml").resolve().exists() and not (RIGS_DIR.parent / "a").exists()


# ---- tools.synthesize --overwrite: clears only its own data set, never through a symlink ------------------------------
def test_synthesize_overwrite_never_deletes_through_a_symlink(tmp_path, capsys):
    from tools.synthesize import main

    out = tmp_path / "data"
    base = ["--out", str(out), "--views", "2", "--size", "16"]
    assert main([*base, "--scenes", "1"]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the data set's")
    (out / "sample_000009").symlink_to(outside, target_is_directory=True)  # looks like a sample, leads outside
    assert main([*base, "--scenes", "1", "--overwrite"]) == 0, capsys.readouterr().err
    assert (outside / "keep.txt").read_text() == "not the data set's"
    assert sorted(p.name for p in out.iterdir()) == ["data_train.txt", "data_val.txt", "dataset.json", "sample_000000"]
    (out / "elsewhere").symlink_to(outside / "keep.txt")
    assert main([*base, "--scenes", "1", "--overwrite"]) == 2
    assert "'elsewhere'" in capsys.readouterr().err and (outside / "keep.txt").is_file()
