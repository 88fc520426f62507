"""Exports the ecosystem opens (issue 18): a model card in every export folder, and a diffusion export that diffusers
opens as a pipeline (``model_index.json`` + ``pipeline.py`` -> ``lightning_modules.diffusion.mv_pipeline.MVLiftPipeline``)
generating exactly what ``DiffusionModule.from_export(...).sample(...)`` generates."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from tiny_checkpoints import SIZE, diffusion_export, reconstruction_export

from geometry.rig import load_rig
from lightning_modules.artifacts import MODEL_CARD_FILE, MODEL_INDEX_FILE, PIPELINE_FILE
from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.mv_pipeline import COMPONENTS, MVLiftPipeline

RIG = "facelift_6view"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return diffusion_export(tmp_path_factory.mktemp("pipe") / "export", RIG)


def _card_names_stage_rig_and_views(card: str, stage: str) -> None:
    rig = load_rig(RIG)
    assert f"mvlift {stage} model" in card and f"- stage: {stage}" in card
    assert rig.name in card and rig.fingerprint in card
    for name, az, el in zip(rig.view_names, rig.azimuths_deg, rig.elevations_deg):
        assert f"| {name} | {az:g} | {el:g} | {rig.radius:g} |" in card
    for section in ("## Rig", "## Training", "## Metrics", "## Loading"):
        assert section in card
    assert "None recorded" in card and "steps: not recorded" in card  # exported outside a run


def test_diffusion_export_has_a_model_card_and_a_diffusers_model_index(export):
    card = (export / MODEL_CARD_FILE).read_text()
    _card_names_stage_rig_and_views(card, "diffusion")
    assert "DiffusionPipeline.from_pretrained(EXPORT, custom_pipeline=EXPORT, trust_remote_code=True)" in card
    assert "DiffusionModule.from_export(EXPORT)" in card and "python -m tools.infer" in card
    index = json.loads((export / MODEL_INDEX_FILE).read_text())
    assert index["_class_name"] == ["pipeline", "MVLiftPipeline"]
    assert set(COMPONENTS) <= set(index)
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert all((export / name).is_dir() for name in COMPONENTS)
    assert "from lightning_modules.diffusion.mv_pipeline import MVLiftPipeline" in (export / PIPELINE_FILE).read_text()


def test_reconstruction_export_has_a_model_card(tmp_path):
    out = reconstruction_export(tmp_path / "export", RIG)
    card = (out / MODEL_CARD_FILE).read_text()
    _card_names_stage_rig_and_views(card, "reconstruction")
    assert "ReconstructionModule.from_export(EXPORT)" in card and "input views: 2" in card


def test_diffusers_and_own_entry_points_generate_what_from_export_samples(export, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # not ~/.cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    image = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 2, "guidance_scale": 2.5, "seed": 7}
    expected = DiffusionModule.from_export(export).eval().sample(image, **kw)["images"]

    pipe = DiffusionPipeline.from_pretrained(str(export), custom_pipeline=str(export), trust_remote_code=True)
    assert isinstance(pipe, MVLiftPipeline)
    out = pipe(image, output_type="pt", **kw)
    assert torch.equal(out.images, expected)
    assert out.view_names == list(load_rig(RIG).view_names) and tuple(out.c2w.shape) == (6, 4, 4)
    assert pipe.unet is pipe.module.unet  # the multi-view UNet of the export, not diffusers' plain one

    own = MVLiftPipeline.from_pretrained(export)
    assert torch.equal(own(image, output_type="pt", **kw).images, expected)
    views = own(image[1], output_type="pil", **kw).images  # one image in: its 6 views as PIL images
    assert len(views) == 1 and len(views[0]) == 6 and views[0][0].size == (SIZE, SIZE)
    arrays = own(image, output_type="np", **kw).images
    assert arrays.shape == (2, 6, SIZE, SIZE, 3)
    assert torch.equal(torch.from_numpy(arrays), expected.permute(0, 1, 3, 4, 2))


def test_pixel_space_export_has_no_vae_component_and_samples_the_same(tmp_path):
    m = DiffusionModule(rig="mouse_oblique20_6view", autoencoder="pixel", view_embeddings="learned",
                        view_init="scratch", view_tokens=4, image_size=SIZE, unet_channels=[16, 32],
                        unet_attention_levels=[False, True], unet_head_dim=8)
    out = m.export(tmp_path / "export")
    assert json.loads((out / MODEL_INDEX_FILE).read_text())["vae"] == [None, None] and not (out / "vae").exists()
    assert "- autoencoder: pixel" in (out / MODEL_CARD_FILE).read_text()
    image = torch.rand(1, 3, SIZE, SIZE)
    pipe = MVLiftPipeline.from_pretrained(out)
    assert pipe.vae is None
    assert torch.equal(pipe(image, num_inference_steps=2, output_type="pt").images,
                       DiffusionModule.from_export(out).sample(image, num_inference_steps=2, guidance_scale=3.0)["images"])


def test_a_scheduler_swap_and_a_generator_work_as_in_any_diffusers_pipeline(export):
    """issue 27: ``pipe.scheduler = ...`` was ignored (same output), and ``generator=`` was not taken."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0, "output_type": "pt"}
    pipe = MVLiftPipeline.from_pretrained(export)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ddim = pipe(image, seed=3, **kw).images
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    euler = pipe(image, seed=3, **kw).images
    assert not torch.allclose(euler, ddim, atol=1e-4), "the scheduler swap was ignored"
    assert torch.equal(euler, pipe(image, seed=3, scheduler="euler", **kw).images)  # the same sampler by name
    assert torch.equal(euler, pipe(image, seed=3, **kw).images)  # the caller's scheduler keeps no state between calls
    # generator= draws the noise: same generator state -> same views as the same seed; another -> other views
    by_generator = pipe(image, generator=torch.Generator().manual_seed(3), **kw).images
    assert torch.equal(by_generator, euler)
    assert not torch.allclose(pipe(image, generator=torch.Generator().manual_seed(4), **kw).images, euler, atol=1e-4)
    assert torch.equal(pipe(image, generator=[torch.Generator().manual_seed(3)], **kw).images, euler)
