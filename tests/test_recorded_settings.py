"""Settings the weights were trained with travel with them: every constructor argument resolved when None is recorded
resolved in checkpoints and exports, and loading uses the recorded value instead of deriving it again (issue 26).

GS-LRM: the head's activation constants (``ACTIVATION_ARGUMENTS``); diffusion: the prediction type (from the
pipeline's scheduler or the autoencoder), and in a ``.ckpt`` the UNet architecture and noise schedule that its
arguments and ``pretrained`` folder imply.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from lightning_modules.loading import load_stage
from lightning_modules.reconstruction.gslrm import GSLRMConfig
from lightning_modules.reconstruction.module import (
    ACTIVATION_ARGUMENTS,
    MODEL_CONFIG_ARGUMENTS,
    ReconstructionModule,
    pixel_scale_bias,
)
from tests.tiny_checkpoints import diffusion_module, reconstruction_module, save_lightning_checkpoint

RIG = "facelift_6view"


def rewrite_checkpoint(path: Path, edit) -> Path:
    """A Lightning checkpoint edited in place (``edit(checkpoint)``), as an older mvlift or a changed setup left it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def test_every_network_setting_is_a_constructor_argument_an_export_stores():
    fields = {f.name for f in dataclasses.fields(GSLRMConfig)} - {"in_channels", "grad_checkpointing"}
    assert set(MODEL_CONFIG_ARGUMENTS) == fields
    assert set(MODEL_CONFIG_ARGUMENTS) <= set(inspect.signature(ReconstructionModule.__init__).parameters)


def test_gslrm_activation_constants_resolve_once_and_are_recorded(tmp_path):
    m = reconstruction_module(RIG)
    assert m.hparams.scale_bias == pixel_scale_bias(m.rig, 16) and m.net.config.scale_bias == m.hparams.scale_bias
    assert {k: m.hparams[k] for k in ACTIVATION_ARGUMENTS if k != "scale_bias"} == \
           {k: getattr(GSLRMConfig, k) for k in ACTIVATION_ARGUMENTS if k != "scale_bias"}
    stored = m.export(tmp_path / "export")
    back = ReconstructionModule.from_export(stored, image_size=32)  # another size would derive another scale_bias
    assert back.net.config.scale_bias == m.net.config.scale_bias


def test_init_from_takes_every_activation_constant_of_the_weights(tmp_path):
    trained = reconstruction_module(RIG, scale_bias=-3.1, scale_max_log=-1.5, opacity_bias=-1.0, depth_range=1.2,
                                    depth_preact_bias=0.3).export(tmp_path / "trained")
    m = reconstruction_module(RIG, init_from=str(trained))
    assert {k: getattr(m.net.config, k) for k in ACTIVATION_ARGUMENTS} == \
           {"scale_bias": -3.1, "scale_max_log": -1.5, "opacity_bias": -1.0, "depth_range": 1.2, "depth_preact_bias": 0.3}
    assert reconstruction_module(RIG, init_from=str(trained), opacity_bias=-2.5).net.config.opacity_bias == -2.5


def test_gslrm_checkpoint_values_replace_derived_ones_and_conflicts_are_errors(tmp_path):
    ckpt = save_lightning_checkpoint(reconstruction_module(RIG, scale_bias=-2.3), tmp_path / "gslrm.ckpt")

    def older_mvlift(c):  # hparams with the activation constants unresolved; the network's config holds them
        for k in ACTIVATION_ARGUMENTS:
            c["hyper_parameters"][k] = None

    rewrite_checkpoint(ckpt, older_mvlift)
    module = load_stage(ckpt, "reconstruction")
    assert module.net.config.scale_bias == -2.3 and module.hparams.scale_bias == -2.3
    with pytest.raises(ValueError, match="scale_bias=-2.3"):
        load_stage(ckpt, "reconstruction", scale_bias=-4.0)


def test_diffusion_prediction_type_is_recorded_and_a_checkpoints_own_is_used(tmp_path):
    m = diffusion_module(RIG)  # prediction_type left None: the tiny VAE pipeline's "epsilon"
    assert m.hparams.prediction_type == "epsilon"
    ckpt = save_lightning_checkpoint(m, tmp_path / "diffusion.ckpt")

    def trained_on_velocity(c):  # an older mvlift's: None in hparams, what it was trained with in its metadata only
        c["hyper_parameters"]["prediction_type"] = None
        c["mvlift"]["prediction_type"] = "v_prediction"
        for key in ("unet_architecture", "noise_schedule"):
            del c["mvlift"][key]

    rewrite_checkpoint(ckpt, trained_on_velocity)
    module = load_stage(ckpt, "diffusion")
    assert module.prediction_type == "v_prediction" and module.train_scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        load_stage(ckpt, "diffusion", prediction_type="epsilon")


def test_diffusion_checkpoint_of_another_unet_or_noise_schedule_is_refused(tmp_path):
    ckpt = save_lightning_checkpoint(diffusion_module(RIG), tmp_path / "diffusion.ckpt")
    assert torch.load(ckpt, weights_only=True)["mvlift"]["unet_architecture"]["attention_head_dim"] == [2, 4]
    rewrite_checkpoint(ckpt, lambda c: c["mvlift"]["unet_architecture"].update(attention_head_dim=[4, 8]))
    with pytest.raises(ValueError, match="attention_head_dim"):
        load_stage(ckpt, "diffusion")
    ckpt = save_lightning_checkpoint(diffusion_module(RIG), tmp_path / "schedule.ckpt")
    rewrite_checkpoint(ckpt, lambda c: c["mvlift"]["noise_schedule"].update(beta_end=0.02))
    with pytest.raises(ValueError, match="beta_end"):
        load_stage(ckpt, "diffusion")
