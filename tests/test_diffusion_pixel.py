"""Pixel-space diffusion (autoencoder: pixel): the identity autoencoder, training from scratch, export round trip,
the copy-the-reference baseline in validation and tools.evaluate, the recipe and demo configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from datamodules.shared_settings import model_args
from geometry.rig import load_rig
from lightning_modules.diffusion.module import (
    DiffusionModule,
    copy_reference_views,
    novel_view_means,
    reference_view_mask,
)
from lightning_modules.diffusion.pretrained import PixelAutoencoder, load_pipeline_components, make_tiny_pipeline_folder

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "recipes" / "diffusion_pixel_procedural64.yaml"
DEMO = ROOT / "configs" / "demo_diffusion.yaml"
RIG = "mouse_oblique20_6view"
SIZE = 16


def pixel_module(**kw) -> DiffusionModule:
    args = {"rig": RIG, "autoencoder": "pixel", "view_embeddings": "learned", "view_init": "scratch",
            "view_tokens": 4, "image_size": SIZE, "unet_channels": [16, 32], "unet_attention_levels": [False, True],
            "unet_head_dim": 8, "cond_drop_prob": 0.0, "lr": 2e-3, "val_inference_steps": 2,
            "val_sample_every_n_steps": 1}
    args.update(kw)
    return DiffusionModule(**args)


def make_batch(b: int = 2, seed: int = 0, ref_view: int = 2) -> dict:
    """Smooth images (learnable quickly), the reference = rig view ``ref_view`` of each scene."""
    g = torch.Generator().manual_seed(seed)
    v = load_rig(RIG).num_views
    coarse = torch.rand(b, v, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(SIZE, SIZE), mode="bilinear",
                                             align_corners=False).view(b, v, 3, SIZE, SIZE)
    index = torch.stack([torch.arange(v).expand(b, v), torch.arange(b)[:, None].expand(b, v)], dim=-1)
    return {"images": images, "ref_images": images[:, ref_view : ref_view + 1].clone(), "alpha": torch.ones(b, v, 1,
            SIZE, SIZE), "index": index, "ref_view": torch.full((b,), ref_view), "rig": [RIG] * b,
            "kind": ["synthetic"] * b}


def train_on(m: DiffusionModule, batch: dict, steps: int) -> list[float]:
    """``steps`` optimizer steps on one batch with the same timesteps and noise each time; the losses."""
    opt = m.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = m.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- the identity autoencoder -------------------------------------------------------------------------------------
def test_pixel_autoencoder_round_trips_an_image_at_latent_size():
    ae = PixelAutoencoder(SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    z = ae.encode(x)
    assert z.shape == (2, 3, SIZE, SIZE) and z.min() >= -1 and z.max() <= 1
    assert torch.equal(ae.decode(z), x)  # exact for torch.rand's dyadic values
    png = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    back = ae.decode(ae.encode(png))
    torch.testing.assert_close(back, png, atol=1e-7, rtol=0)  # float rounding of 2x - 1 only
    assert torch.equal((back * 255).round(), (png * 255).round())  # 8-bit images come back exactly
    big = torch.rand(1, 3, 2 * SIZE, 2 * SIZE)  # other sizes: the image at the latent size
    expected = torch.nn.functional.interpolate(big, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    torch.testing.assert_close(ae.decode(ae.encode(big)), expected.clamp(0, 1), atol=1e-6, rtol=0)
    assert list(ae.state_dict()) == []


def test_pixel_module_has_rgb_latents_and_no_vae_weights():
    m = pixel_module()
    assert m.autoencoder == "pixel" and m.latent_channels == 3 and m.vae_factor == 1 and m.latent_scale == 1.0
    assert m.unet.config.in_channels == 6 and m.unet.config.out_channels == 3 and m.unet.config.sample_size == SIZE
    assert not any(k.startswith("vae.") for k in m.state_dict())
    assert m.prediction_type == "v_prediction" and m.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(m.decode_latents(m.encode_latents(x)), x)
    assert DiffusionModule(rig=RIG, view_embeddings="learned", view_init="scratch", view_tokens=4,
                           image_size=SIZE).autoencoder == "vae"  # the default is unchanged
    with pytest.raises(ValueError, match="autoencoder must be one of"):
        pixel_module(autoencoder="identity")


def test_a_latent_space_pipeline_folder_is_refused_in_pixel_space_and_pixel_needs_no_vae_folder(tmp_path):
    folder = make_tiny_pipeline_folder(tmp_path / "pipe", image_size=SIZE)
    with pytest.raises(ValueError, match="predicts 4 channels.*pixel"):
        load_pipeline_components(folder, autoencoder="pixel", image_size=SIZE)
    out = pixel_module().export(tmp_path / "export")
    assert not (out / "vae").exists()
    c = load_pipeline_components(out, autoencoder="pixel", image_size=SIZE)
    assert isinstance(c.vae, PixelAutoencoder) and c.autoencoder == "pixel" and c.unet.config.in_channels == 6
    with pytest.raises(FileNotFoundError, match="vae"):
        load_pipeline_components(out)  # a VAE model needs its vae/


# ---- training -----------------------------------------------------------------------------------------------------
def test_pixel_module_trains_from_scratch_loss_finite_and_falling_on_a_repeated_batch():
    torch.manual_seed(0)
    m = pixel_module()
    batch = make_batch(b=2)

    def loss() -> float:  # the same timesteps and noise as every training step
        with torch.no_grad():
            return m.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))["loss"].item()

    before = loss()
    losses = train_on(m, batch, 30)
    after = loss()
    assert all(math.isfinite(x) for x in losses)
    assert after < 0.5 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5]), losses


# ---- the copy-the-reference baseline ------------------------------------------------------------------------------
def test_copy_baseline_and_novel_view_means_leave_the_reference_view_out():
    batch = make_batch(b=2, ref_view=2)
    is_ref = reference_view_mask(batch)
    assert is_ref.tolist() == [[j == 2 for j in range(6)]] * 2
    copy = copy_reference_views(batch["ref_images"][:, 0], 6, SIZE)
    assert torch.equal(copy[:, 2], batch["images"][:, 2])  # copying is exact on the reference's own view ...
    from lightning_modules.metrics import per_view_psnr

    psnr = per_view_psnr(copy, batch["images"])
    assert torch.isinf(psnr[:, 2]).all()
    means = novel_view_means(psnr, is_ref)  # ... which the comparison leaves out
    assert torch.isfinite(means).all()
    torch.testing.assert_close(means, psnr[:, [0, 1, 3, 4, 5]].mean(-1))


def test_validation_logs_generated_and_copy_reference_psnr(tmp_path):
    m = pixel_module()
    batch = make_batch(b=2)
    samples = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    loader = DataLoader(samples, batch_size=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(m, loader, loader)
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    for key in ("val/gen_psnr", "val/copy_ref_psnr", "val/gen_psnr_fg", "val/copy_ref_psnr_fg", "val/psnr/all"):
        assert key in logged and math.isfinite(logged[key]), (key, logged)
    # the copy baseline of these smooth random views, computed directly (novel views only)
    from lightning_modules.metrics import per_view_psnr

    copy = per_view_psnr(copy_reference_views(batch["ref_images"][:, 0], 6, SIZE), batch["images"])
    expected = novel_view_means(copy, reference_view_mask(batch)).mean()
    assert logged["val/copy_ref_psnr"] == pytest.approx(float(expected), abs=1e-4)


# ---- checkpoints and exports --------------------------------------------------------------------------------------
def test_export_from_export_and_checkpoint_keep_the_pixel_autoencoder_and_the_samples(tmp_path):
    m = pixel_module(attention="joint").eval()
    with torch.no_grad():
        m.unet.conv_out.bias.add_(0.1)  # differ from a freshly built UNet
    out = m.export(tmp_path / "export")
    meta = json.loads((out / "mvlift.json").read_text())
    assert meta["autoencoder"] == "pixel" and meta["hparams"]["autoencoder"] == "pixel" and not (out / "vae").exists()
    back = DiffusionModule.from_export(out).eval()
    assert back.autoencoder == "pixel" and back.unet.config.in_channels == 6
    ref = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(back.sample(ref, 3, seed=5)["images"], m.sample(ref, 3, seed=5)["images"])
    from lightning_modules.loading import load_stage

    loaded = load_stage(out, "diffusion")
    torch.testing.assert_close(loaded.sample(ref, 3, seed=5)["images"], m.sample(ref, 3, seed=5)["images"])
    # a .ckpt records the choice too, and a module of the other latent space refuses it
    ckpt = {"state_dict": m.state_dict(), "mvlift": {**m.mvlift_metadata(), "noise_seed": 0}}
    assert ckpt["mvlift"]["autoencoder"] == "pixel"
    vae_module = DiffusionModule(rig=RIG, attention="joint", view_embeddings="learned", view_init="scratch",
                                 view_tokens=4, image_size=SIZE)
    with pytest.raises(ValueError, match="'pixel' autoencoder.*never switched silently"):
        vae_module.on_load_checkpoint(ckpt)


def test_tools_evaluate_reports_novel_and_copy_reference_psnr_for_a_diffusion_export(tmp_path):
    from tools.evaluate import main as evaluate

    out = pixel_module().export(tmp_path / "export")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "stage": "diffusion", "rig": RIG, "image_size": SIZE, "num_workers": 0, "augment": {"enabled": False},
        "sources": [{"name": "clean", "format": "procedural", "num_scenes": 40, "background": "white"}]}))
    code = evaluate(["--ckpt", f"px={out}", "--data", str(data), "--out", str(tmp_path / "eval"), "--batches", "1",
                     "--batch-size", "2", "--steps", "2", "--reference-view", "1"])
    assert code == 0
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"][0]
    assert row["mode"] == "diffusion"
    for key in ("novel_metrics", "copy_ref_metrics"):
        assert set(row[key]["view"]) == set(load_rig(RIG).view_names) - {load_rig(RIG).view_names[1]}, key
        assert math.isfinite(row[key]["all"]["psnr"]), row[key]["all"]
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "novel PSNR" in md and "copy-ref PSNR" in md
    assert "sampled with 2 DDIM steps at guidance 3.0" in md  # how the views were made, stated with the numbers
    header = (tmp_path / "eval" / "results.csv").read_text().splitlines()[0].split(",")
    assert "novel/psnr" in header and "copy_ref/psnr" in header


# ---- configs ------------------------------------------------------------------------------------------------------
def test_the_recipe_parses_through_tools_fit_as_a_pixel_space_model_on_clean_procedural_mice(capsys):
    from tools.fit import main

    with pytest.raises(SystemExit) as exit_:
        main(["-c", str(RECIPE), "--print_config"])
    assert exit_.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert cfg["model"]["class_path"] == "lightning_modules.diffusion.DiffusionModule"
    assert model["autoencoder"] == "pixel" and model["pretrained"] is None
    assert data["rig"] == RIG and data["stage"] == "diffusion" and data["image_size"] == 64  # linked into the model
    assert all(s["format"] == "procedural" and s["background"] == "white" and not s.get("realistic")
               for s in data["sources"])
    assert data["augment"] == {"enabled": False}
    # the reference is a fixed rig view, or the model is told where it is (camera rays): never a guess
    assert data["reference_view"] == "fixed" or model["camera_rays"]
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["devices"] == 1
    lines = RECIPE.read_text().splitlines()
    assert lines[0].startswith("# ") and any(line.startswith("# reaches:") for line in lines)


@pytest.mark.parametrize("path", [RECIPE, DEMO], ids=lambda p: p.name)
def test_pixel_configs_build_their_model(path):
    args = model_args(yaml.safe_load(path.read_text()))
    with torch.device("meta"):  # shapes only: no memory, no time
        m = DiffusionModule(**args)
    rays = 6 if args.get("camera_rays") else 0
    assert m.autoencoder == "pixel" and m.unet.config.in_channels == 6 + rays and m.unet.config.out_channels == 3
    assert m.unet.config.sample_size == args["image_size"]


def test_sampling_sweep_scores_what_tools_evaluate_scores(tmp_path, capsys):
    """bench/diffusion_sampling_sweep.py: the same held-out scenes and the same scores as tools.evaluate for one
    setting, one JSON line per weights x steps x guidance x precision."""
    import importlib.util

    from tools.evaluate import main as evaluate

    spec = importlib.util.spec_from_file_location("sweep", ROOT / "bench" / "diffusion_sampling_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    torch.manual_seed(0)
    out = pixel_module(camera_rays=True).export(tmp_path / "export")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "stage": "diffusion", "rig": RIG, "image_size": SIZE, "num_workers": 0, "augment": {"enabled": False},
        "sources": [{"name": "clean", "format": "procedural", "num_scenes": 40, "background": "white"}]}))
    assert evaluate(["--ckpt", f"px={out}", "--data", str(data), "--out", str(tmp_path / "eval"), "--batches", "1",
                     "--batch-size", "2", "--steps", "2", "--guidance", "1.5", "--device", "cpu"]) == 0
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"][0]
    capsys.readouterr()
    assert sweep.main(["--ckpt", str(out), "--data", str(data), "--device", "cpu", "--batches", "1",
                       "--batch-size", "2", "--steps", "2", "--guidance", "1.5", "3", "--weights", "raw"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["steps"], x["guidance"], x["weights"]) for x in lines] == [(2, 1.5, "raw"), (2, 3.0, "raw")]
    assert lines[0]["novel_psnr"] == pytest.approx(row["novel_metrics"]["all"]["psnr"], abs=1e-3)
    assert lines[0]["copy_psnr"] == pytest.approx(row["copy_ref_metrics"]["all"]["psnr"], abs=1e-3)
    assert lines[0]["gain_db"] == pytest.approx(lines[0]["novel_psnr"] - lines[0]["copy_psnr"], abs=2e-3)
    assert lines[1]["novel_psnr"] != lines[0]["novel_psnr"]  # guidance changes the samples


def test_sample_prediction_learns_the_clean_images_and_samples_through_every_sampler():
    """prediction_type "sample": the UNet's target is the clean image itself (at any noise level), the loss falls on
    a repeated batch, and each sampler takes the prediction (diffusers' "sample" type)."""
    from lightning_modules.diffusion.module import min_snr_weights
    from lightning_modules.diffusion.sampling import SAMPLERS

    torch.manual_seed(0)
    m = pixel_module(prediction_type="sample")
    assert m.scheduler_config["prediction_type"] == "sample"
    batch = make_batch()
    seen = {}
    real = m.denoise

    def spy(noisy, *args, **kw):
        out = real(noisy, *args, **kw)
        seen["pred"] = out
        return out

    m.denoise = spy
    terms = m.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    clean = batch["images"].flatten(0, 1) * 2 - 1  # the pixel autoencoder's latents: RGB in [-1, 1]
    torch.testing.assert_close(terms["mse"], ((seen["pred"].float() - clean) ** 2).mean(), atol=1e-5, rtol=1e-4)
    m.denoise = real
    losses = train_on(m, batch, 15)
    assert losses[-1] < 0.7 * losses[0]
    ac = m.train_scheduler.alphas_cumprod
    t = torch.tensor([10, 500, 990])
    snr = ac[t] / (1 - ac[t])
    torch.testing.assert_close(min_snr_weights(ac, t, 5.0, "sample"), snr.clamp(max=5.0))
    m.eval()
    ref = batch["ref_images"][:, 0]
    for name in SAMPLERS:
        out = m.sample(ref, 3, guidance_scale=1.5, seed=0, scheduler=name)["images"]
        assert out.shape == (2, 6, 3, SIZE, SIZE) and torch.isfinite(out).all(), name


def test_tools_say_when_they_sample_otherwise_than_the_model_was_validated(caplog):
    from lightning_modules.diffusion.sampling import Sampling
    from lightning_modules.pipeline import generate_views

    ref = torch.rand(1, 3, SIZE, SIZE)
    m = pixel_module(val_guidance_scale=1.5).eval()  # validated with 2 steps at guidance 1.5
    with caplog.at_level("INFO", logger="mvlift.infer"):
        generate_views(m, ref, Sampling(steps=2, guidance=3.0), seed=0)
        generate_views(m, ref, Sampling(steps=2, guidance=3.0), seed=1)
    notes = [r.getMessage() for r in caplog.records if "was validated with" in r.getMessage()]
    expected = ("sampling with 2 steps at guidance 3; this diffusion model was validated with 2 steps at guidance 1.5 "
                "(--steps / --guidance to match)")
    assert notes == [expected]  # once per model
    caplog.clear()
    with caplog.at_level("INFO", logger="mvlift.infer"):
        generate_views(pixel_module(val_guidance_scale=1.5).eval(), ref, Sampling(steps=2, guidance=1.5), seed=0)
    assert not [r for r in caplog.records if "was validated with" in r.getMessage()]  # as validated: nothing to say
