"""lightning_modules.artifacts: one format for both stages' .ckpt files and export folders, read back whole."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoints import diffusion_module, reconstruction_module, save_lightning_checkpoint

from callbacks.ema import EMA
from lightning_modules.artifacts import (
    EMA_WEIGHTS,
    METADATA_FILE,
    RIG_FILE,
    WEIGHTS,
    MissingMetadataError,
    checkpoint_background,
    checkpoint_ema_state,
    checkpoint_hparams,
    checkpoint_metadata,
    checkpoint_rig,
    checkpoint_stage,
    has_ema_weights,
)
from lightning_modules.loading import load_stage

RIG = "mouse_oblique20_6view"
BUILD = {"diffusion": diffusion_module, "reconstruction": reconstruction_module}


def _trained_module(stage: str):
    """A tiny module of ``stage`` that saw gray training backgrounds."""
    module = BUILD[stage](RIG)
    module.train_background.update(torch.full((3, 3), 0.5))
    return module


def _ema_state(module) -> dict[str, torch.Tensor]:
    """An EMA shadow that differs from the weights (so reading it back is visible)."""
    target = getattr(module, module.ema_target)
    return {k: v.detach().float() + 1.0 if v.is_floating_point() else v.clone() for k, v in target.state_dict().items()}


def _target_state(module) -> dict[str, torch.Tensor]:
    return getattr(module, module.ema_target).state_dict()


@pytest.mark.parametrize("stage", ["diffusion", "reconstruction"])
def test_a_ckpt_round_trips_stage_rig_hparams_background_and_ema(tmp_path, stage):
    module = _trained_module(stage)
    ema = EMA()
    ema.shadow = _ema_state(module)
    ckpt = save_lightning_checkpoint(module, tmp_path / "run" / "last.ckpt", callbacks=[ema])

    assert checkpoint_stage(ckpt) == stage
    assert checkpoint_rig(ckpt).fingerprint == module.rig.fingerprint
    assert checkpoint_background(ckpt)["color"] == [0.5, 0.5, 0.5]
    assert checkpoint_metadata(ckpt)["version"] == 1
    hparams = checkpoint_hparams(ckpt)
    assert hparams["image_size"] == module.hparams.image_size and hparams["rig"] == RIG
    shadow = checkpoint_ema_state(ckpt)
    assert all(torch.equal(shadow[k], v) for k, v in ema.shadow.items())

    back = load_stage(ckpt, stage)
    assert back.mvlift_metadata()["background"]["color"] == [0.5, 0.5, 0.5]
    averaged = load_stage(ckpt, stage, ema=True)
    for k, v in _target_state(averaged).items():
        if v.is_floating_point():
            assert torch.allclose(v.float(), ema.shadow[k]), k


@pytest.mark.parametrize("stage", ["diffusion", "reconstruction"])
def test_an_export_round_trips_stage_rig_hparams_background_and_ema(tmp_path, stage):
    module = _trained_module(stage)
    ema_state = _ema_state(module)
    out = module.export(tmp_path / "export", ema_weights=ema_state)

    assert {METADATA_FILE, RIG_FILE, WEIGHTS[stage], EMA_WEIGHTS[stage]} <= {p.name for p in out.iterdir()}
    assert not (out / "config.json").exists()  # one metadata file name for both stages
    assert checkpoint_stage(out) == stage
    assert checkpoint_rig(out).fingerprint == module.rig.fingerprint
    assert checkpoint_background(out)["color"] == [0.5, 0.5, 0.5]
    hparams = checkpoint_hparams(out)
    assert hparams["image_size"] == module.hparams.image_size
    assert not [k for k in hparams if k.startswith("_")] and "compile" not in hparams
    assert has_ema_weights(out, stage)

    back = type(module).from_export(out)
    assert back.stage == stage and back.rig.fingerprint == module.rig.fingerprint
    assert back.mvlift_metadata()["background"] == module.mvlift_metadata()["background"]
    for k, v in _target_state(module).items():
        assert torch.equal(_target_state(back)[k], v), k
    averaged = type(module).from_export(out, ema=True)
    for k, v in _target_state(averaged).items():
        if v.is_floating_point():
            assert torch.allclose(v.float(), ema_state[k]), k


@pytest.mark.parametrize("stage", ["diffusion", "reconstruction"])
def test_an_export_without_ema_weights_says_so_when_they_are_asked_for(tmp_path, stage):
    out = BUILD[stage](RIG).export(tmp_path / "export")
    assert not has_ema_weights(out, stage)
    with pytest.raises(FileNotFoundError, match=f"export.*{EMA_WEIGHTS[stage]}"):
        load_stage(out, stage, ema=True)


@pytest.mark.parametrize("stage", ["diffusion", "reconstruction"])
def test_an_export_without_its_metadata_file_is_an_error_naming_the_folder(tmp_path, stage):
    out = BUILD[stage](RIG).export(tmp_path / f"{stage}_export")
    (out / METADATA_FILE).unlink()
    for read in (checkpoint_stage, checkpoint_metadata, checkpoint_background, checkpoint_hparams,
                 lambda p, s=stage: load_stage(p, s), BUILD[stage](RIG).from_export):
        with pytest.raises(MissingMetadataError, match=f"{stage}_export.*{METADATA_FILE}"):
            read(out)
    assert checkpoint_rig(out).name == RIG  # the rig file is still there


def test_an_export_of_the_other_stage_is_refused_naming_both(tmp_path):
    from lightning_modules.diffusion.module import DiffusionModule

    out = reconstruction_module(RIG).export(tmp_path / "rec")
    with pytest.raises(ValueError, match="stage is 'reconstruction', expected 'diffusion'"):
        DiffusionModule.from_export(out)
    with pytest.raises(ValueError, match="reconstruction checkpoint, but a diffusion checkpoint is needed"):
        load_stage(out, "diffusion")


def test_a_ckpt_without_ema_state_is_an_error_naming_the_file(tmp_path):
    ckpt = save_lightning_checkpoint(reconstruction_module(RIG), tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="plain.ckpt.*no EMA callback state"):
        checkpoint_ema_state(ckpt)


def test_an_unreadable_metadata_file_is_an_error_naming_it(tmp_path):
    out = reconstruction_module(RIG).export(tmp_path / "export")
    (out / METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{METADATA_FILE}.*unreadable"):
        checkpoint_stage(out)
    (out / METADATA_FILE).write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a JSON object"):
        checkpoint_metadata(out)
