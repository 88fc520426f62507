"""The rig guard fires on the user's failure (FaceLift-rig diffusion + 20° mouse-rig GS-LRM) and passes matching rigs."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from callbacks.rig_guard import (
    RigMismatchError,
    check_checkpoint_rigs,
    check_data_matches_model,
    check_rigs,
)
from geometry.rig import load_rig
from lightning_modules.artifacts import checkpoint_rig, checkpoint_stage


@pytest.fixture(scope="module")
def modules():
    from lightning_modules.diffusion.module import DiffusionModule
    from lightning_modules.reconstruction.module import ReconstructionModule

    def diffusion(rig):
        return DiffusionModule(rig=rig, view_embeddings="learned", view_init="scratch", image_size=32,
                               view_tokens=4)

    def reconstruction(rig):
        return ReconstructionModule(rig=rig, image_size=16, num_input_views=2, width=32, depth=1, head_dim=16)

    return diffusion, reconstruction


def _lightning_ckpt(module, path):
    """What Lightning writes for the module's metadata: the module's own on_save_checkpoint on the checkpoint dict."""
    ckpt = {"state_dict": {}, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_users_failure_facelift_diffusion_with_mouse_reconstruction_is_stopped(modules, tmp_path):
    diffusion, reconstruction = modules
    diff_ckpt = _lightning_ckpt(diffusion("facelift_6view"), tmp_path / "diffusion.ckpt")
    rec_export = reconstruction("mouse_oblique20_6view").export(tmp_path / "gslrm_export")
    with pytest.raises(RigMismatchError) as err:
        check_checkpoint_rigs(diff_ckpt, rec_export)
    text = str(err.value)
    assert "'facelift_6view'" in text and "'mouse_oblique20_6view'" in text
    assert "front_right" in text and "20.00" in text  # the per-view table
    assert err.value.diff.worst_angle_deg == pytest.approx(20.0, abs=0.01)
    assert [round(v.elevation_b - v.elevation_a, 3) for v in err.value.diff.per_view] == [20.0] * 6


def test_matching_rigs_pass_from_ckpt_and_export(modules, tmp_path):
    diffusion, reconstruction = modules
    diff_ckpt = _lightning_ckpt(diffusion("mouse_oblique20_6view"), tmp_path / "d.ckpt")
    rec_ckpt = _lightning_ckpt(reconstruction("mouse_oblique20_6view"), tmp_path / "r.ckpt")
    assert check_checkpoint_rigs(diff_ckpt, rec_ckpt).ok
    assert checkpoint_rig(diff_ckpt).fingerprint == load_rig("mouse_oblique20_6view").fingerprint
    assert checkpoint_stage(diff_ckpt) == "diffusion" and checkpoint_stage(rec_ckpt) == "reconstruction"


def test_allow_mismatch_logs_a_warning_instead(caplog):
    with caplog.at_level(logging.WARNING, logger="mvlift.rig"):
        diff = check_rigs("facelift_6view", "mouse_oblique20_6view", allow_mismatch=True)
    assert not diff.ok
    assert "rig mismatch" in caplog.text and "mouse_oblique20_6view" in caplog.text and "allowed" in caplog.text


def test_differences_within_tolerance_pass_and_beyond_fail():
    base = load_rig("facelift_6view")
    near = dataclasses.replace(base, name="near", elevations_deg=(0.5,) * 6)
    assert check_rigs(base.to_dict(), near).ok
    with pytest.raises(RigMismatchError):
        check_rigs(base, near, angle_tol_deg=0.2)
    farther = dataclasses.replace(base, name="farther", radius=2.9)
    with pytest.raises(RigMismatchError, match="farther"):
        check_rigs(base, farther)


def test_unreadable_or_unmarked_checkpoints_are_errors_naming_the_file(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(ValueError, match="plain.ckpt.*mvlift"):
        checkpoint_rig(plain)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(plain.read_bytes()[:20])
    with pytest.raises(ValueError, match="cut.ckpt.*not a complete"):
        checkpoint_rig(cut)
    with pytest.raises(FileNotFoundError, match="rig.json"):
        checkpoint_rig(tmp_path)


class _Data:
    def __init__(self, stage, rig):
        self.stage, self.rig = stage, load_rig(rig)


def test_fit_data_must_match_model_stage_and_rig(modules):
    _, reconstruction = modules
    model = reconstruction("facelift_6view")
    check_data_matches_model(model, _Data("reconstruction", "facelift_6view"))
    with pytest.raises(ValueError, match="data stage 'diffusion'.*'reconstruction'"):
        check_data_matches_model(model, _Data("diffusion", "facelift_6view"))
    with pytest.raises(RigMismatchError, match="data rig 'mouse_oblique20_6view'.*model's rig 'facelift_6view'"):
        check_data_matches_model(model, _Data("reconstruction", "mouse_oblique20_6view"))
