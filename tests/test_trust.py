"""Checkpoint files are read without running code from them (issue 16): ``weights_only`` everywhere a user's file is
read, with the allow-list of ``lightning_modules.artifacts``; ``--trust-checkpoint`` is the only way past it."""

from __future__ import annotations

import argparse
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny_checkpoints import (
    SIZE,
    diffusion_checkpoint,
    reconstruction_checkpoint,
    reconstruction_module,
    save_lightning_checkpoint,
)

from lightning_modules.artifacts import (
    SAFE_GLOBALS,
    UntrustedCheckpointError,
    checkpoint_rig,
    load_checkpoint,
    unsafe_types,
)
from lightning_modules.loading import load_stage

RIG = "facelift_6view"


def _write_marker(path: str) -> str:  # what the payload would run
    Path(path).write_text("the payload ran")
    return "ran"


class WriteMarker:
    """A pickled payload: unpickling it calls ``_write_marker`` (any callable could stand here)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (_write_marker, (self.path,))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    out = {"diffusion": diffusion_checkpoint(root / "diffusion.ckpt", RIG),
           "reconstruction": reconstruction_checkpoint(root / "reconstruction.ckpt", RIG)}
    for stage in ("diffusion", "reconstruction"):
        ckpt = torch.load(out[stage], weights_only=False)  # our own file, written just above
        ckpt["mvlift"]["note"] = WriteMarker(root / f"marker_{stage}")
        torch.save(ckpt, root / f"evil_{stage}.ckpt")
        out[f"evil_{stage}"] = root / f"evil_{stage}.ckpt"
        out[f"marker_{stage}"] = root / f"marker_{stage}"
        ckpt["mvlift"]["note"] = argparse.Namespace(written_by="another tool")  # harmless, but not allow-listed
        torch.save(ckpt, root / f"namespace_{stage}.ckpt")
        out[f"namespace_{stage}"] = root / f"namespace_{stage}.ckpt"
    return out


def _no_payload_ran(ckpts) -> None:
    assert not ckpts["marker_diffusion"].exists() and not ckpts["marker_reconstruction"].exists(), "the payload ran"


def test_our_checkpoints_of_both_stages_need_nothing_beyond_the_allow_list(ckpts, tmp_path):
    for stage in ("diffusion", "reconstruction"):
        assert unsafe_types(ckpts[stage]) == []
        assert load_checkpoint(ckpts[stage])["mvlift"]["stage"] == stage
        assert load_stage(ckpts[stage], stage).rig.name == RIG
    # a module built in Python may hold pathlib paths in its hyper-parameters: the one allow-listed type
    path_ckpt = save_lightning_checkpoint(reconstruction_module(RIG, lpips_weights=Path("/nowhere/vgg.pth")),
                                          tmp_path / "path_hparams.ckpt")
    assert pathlib.PosixPath in SAFE_GLOBALS and unsafe_types(path_ckpt) == []
    assert load_stage(path_ckpt, "reconstruction").hparams.lpips_weights == Path("/nowhere/vgg.pth")


def test_a_pickled_payload_is_refused_by_every_reader_naming_the_file(ckpts):
    for stage in ("diffusion", "reconstruction"):
        evil = ckpts[f"evil_{stage}"]
        assert unsafe_types(evil) == [f"{__name__}._write_marker"]
        for read in (load_checkpoint, checkpoint_rig, lambda p, s=stage: load_stage(p, s),
                     lambda p, s=stage: load_stage(p, s, ema=True)):
            with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint") as e:
                read(evil)
            assert str(evil) in str(e.value) and "_write_marker" in str(e.value)
    _no_payload_ran(ckpts)


def _image(tmp_path: Path) -> Path:
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def _tool_commands(ckpts, tmp_path: Path, evil: str) -> dict[str, tuple]:
    from tools.evaluate import main as evaluate
    from tools.infer import main as infer
    from tools.synthesize import main as synthesize

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"rig": RIG, "sources": [{"name": "p", "format": "procedural", "num_scenes": 2}]}))
    return {
        "evaluate": (evaluate, ["--ckpt", str(ckpts[f"{evil}_reconstruction"]), "--data", str(data),
                                "--out", str(tmp_path / "eval")]),
        "evaluate --diffusion": (evaluate, ["--ckpt", str(ckpts["reconstruction"]), "--diffusion",
                                            str(ckpts[f"{evil}_diffusion"]), "--data", str(data),
                                            "--out", str(tmp_path / "eval2")]),
        "infer": (infer, [str(_image(tmp_path)), "--diffusion", str(ckpts[f"{evil}_diffusion"]), "--reconstruction",
                          str(ckpts["reconstruction"]), "--out", str(tmp_path / "infer")]),
        "infer (reconstruction)": (infer, [str(_image(tmp_path)), "--diffusion", str(ckpts["diffusion"]),
                                           "--reconstruction", str(ckpts[f"{evil}_reconstruction"]),
                                           "--out", str(tmp_path / "infer2")]),
        "synthesize --from-diffusion": (synthesize, ["--from-diffusion", str(ckpts[f"{evil}_diffusion"]),
                                                     "--inputs", str(data), "--out", str(tmp_path / "syn")]),
    }


@pytest.mark.parametrize("tool", ["evaluate", "evaluate --diffusion", "infer", "infer (reconstruction)",
                                  "synthesize --from-diffusion"])
def test_tools_refuse_a_payload_checkpoint_with_a_one_line_error_and_run_nothing(ckpts, tmp_path, capsys, tool):
    main, argv = _tool_commands(ckpts, tmp_path, "evil")[tool]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "evil_" in err and "refused to load" in err and "--trust-checkpoint" in err, err
    _no_payload_ran(ckpts)


FAST = {"evaluate": ["--batches", "1", "--batch-size", "1", "--grid-scenes", "1"],
        "infer": ["--steps", "1", "--turntable-frames", "1", "--turntable-size", "16"],
        "synthesize --from-diffusion": ["--steps", "1", "--limit", "1", "--kind", "all"]}


@pytest.mark.parametrize("tool", list(FAST))
def test_trust_checkpoint_gets_a_tool_past_the_refusal(ckpts, tmp_path, capsys, tool):
    """A checkpoint holding a type outside the allow-list (argparse.Namespace, harmless) is refused naming the type;
    with --trust-checkpoint the tool loads it and runs."""
    main, argv = _tool_commands(ckpts, tmp_path, "namespace")[tool]
    assert main([*argv, *FAST[tool]]) == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    assert main([*argv, *FAST[tool], "--trust-checkpoint"]) == 0, capsys.readouterr().err


def test_convert_refuses_a_payload_and_trust_checkpoint_converts_a_file_with_other_objects(tmp_path, capsys):
    from lightning_modules.reconstruction.gslrm import GSLRM, GSLRMConfig
    from tools.convert import main

    state = GSLRM(GSLRMConfig(image_size=16, patch_size=8, width=32, depth=1, head_dim=16)).state_dict()
    marker = tmp_path / "marker"
    torch.save({"model": state, "optimizer_config": WriteMarker(marker)}, tmp_path / "evil.pt")
    assert main(["facelift-gslrm", str(tmp_path / "evil.pt"), str(tmp_path / "out"), "--head-dim", "16"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "evil.pt") in err and "_write_marker" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out").exists()

    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "facelift.pt")  # a training script's
    assert main(["facelift-gslrm", str(tmp_path / "facelift.pt"), str(tmp_path / "out"), "--head-dim", "16"]) == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    assert main(["facelift-gslrm", str(tmp_path / "facelift.pt"), str(tmp_path / "out"), "--head-dim", "16",
                 "--image-size", "16", "--trust-checkpoint"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_fit_refuses_to_resume_from_a_payload_checkpoint(ckpts, tmp_path):
    from test_fit_cli import _config

    from tools.fit import main

    with pytest.raises(UntrustedCheckpointError, match="evil_reconstruction.ckpt"):
        main(["-c", str(_config(tmp_path, run="r1")), "--resume", str(ckpts["evil_reconstruction"])])
    _no_payload_ran(ckpts)
