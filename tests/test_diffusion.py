"""Diffusion stage on tiny models: FaceLift compatibility, rig-tied view conditioning, training, sampling, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils.data import DataLoader

from geometry.rig import load_rig
from lightning_modules.diffusion.module import DiffusionModule, min_snr_weights, step_seed
from lightning_modules.diffusion.mv_attention import multiview_attention_mode
from lightning_modules.diffusion.pretrained import (
    build_scratch_components,
    expand_conv_in,
    load_pipeline_components,
    load_unet,
    make_tiny_pipeline_folder,
    sd21_unclip_unet_config,
)
from lightning_modules.diffusion.view_conditioning import ViewEmbeddings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "compat"
UNET_SHAPES = SHARED / "facelift_mvdiffusion_unet_state_dict_shapes.json"
FACELIFT_EMBEDS = SHARED / "facelift_fixed_prompt_embeds_6view.pt"
SIZE = 16  # px; tiny VAE downsamples 2x -> latent 8


def tiny_module(**kw) -> DiffusionModule:
    args = {"rig": "facelift_6view", "view_embeddings": "learned", "view_init": "scratch", "view_tokens": 4,
            "image_size": SIZE, "cond_drop_prob": 0.0, "lr": 1e-3, "val_inference_steps": 2,
            "val_sample_every_n_steps": 1}
    args.update(kw)
    return DiffusionModule(**args)


def make_batch(b: int = 2, rig: str = "facelift_6view", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    v = load_rig(rig).num_views
    return {"images": torch.rand(b, v, 3, SIZE, SIZE, generator=g), "ref_images": torch.rand(b, 1, 3, SIZE, SIZE,
                                                                                            generator=g),
            "rig": [rig] * b, "kind": ["synthetic", "real"][:b] + ["synthetic"] * max(0, b - 2)}


# ---- FaceLift compatibility -------------------------------------------------------------------------------------
def test_plain_diffusers_unet_has_exactly_facelift_unet_tensor_names_and_shapes():
    if not UNET_SHAPES.is_file():
        pytest.skip(f"{UNET_SHAPES} absent (../shared not beside the checkout)")
    expected = {k: tuple(v) for k, v in json.loads(UNET_SHAPES.read_text()).items()}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unclip_unet_config(in_channels=8))
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert len(expected) == 690
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    assert got == expected
    assert sum(math.prod(s) for s in got.values()) == pytest.approx(870e6, rel=0.01)


def test_facelift_layout_unet_folder_with_custom_block_names_loads_as_plain_unet(tmp_path):
    folder = make_tiny_pipeline_folder(tmp_path / "pipe", image_size=SIZE, facelift_layout=True)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == "UNetMV2DConditionModel" and "CrossAttnDownBlockMV2D" in cfg["down_block_types"]
    unet = load_unet(folder / "unet")
    assert type(unet) is UNet2DConditionModel
    assert unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert "CrossAttnDownBlock2D" in unet.config.down_block_types
    reference = build_scratch_components(image_size=SIZE).unet  # same seed -> same weights as written
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[k], v, msg=k)


def test_4_channel_unet_widened_to_8_keeps_pretrained_weights_and_zero_inits_new_inputs(tmp_path):
    folder = make_tiny_pipeline_folder(tmp_path / "sd", image_size=SIZE, unet_in_channels=4)
    original = load_unet(folder / "unet")
    comps = load_pipeline_components(folder)
    w = comps.unet.conv_in.weight
    assert comps.unet.config.in_channels == 8 and tuple(w.shape[:2]) == (32, 8)
    torch.testing.assert_close(w[:, :4], original.conv_in.weight)
    assert torch.count_nonzero(w[:, 4:]) == 0
    torch.testing.assert_close(comps.unet.conv_in.bias, original.conv_in.bias)
    # the widened UNet ignores the (new) reference channels at first
    x = torch.randn(1, 4, 8, 8)
    kw = {"encoder_hidden_states": torch.randn(1, 3, 32), "class_labels": torch.randn(1, 32)}
    with torch.no_grad():
        a = original(x, 3, **kw).sample
        b = comps.unet(torch.cat([x, torch.randn(1, 4, 8, 8)], 1), 3, **kw).sample
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="inputs are never dropped"):
        expand_conv_in(comps.unet, 4)


def test_missing_pipeline_component_is_named(tmp_path):
    folder = make_tiny_pipeline_folder(tmp_path / "p", image_size=SIZE)
    import shutil

    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        load_pipeline_components(folder)


# ---- view conditioning tied to the rig ----------------------------------------------------------------------------
def test_facelift_embeddings_report_facelift_rig_and_refuse_another_rig(tmp_path):
    if not FACELIFT_EMBEDS.is_file():
        pytest.skip(f"{FACELIFT_EMBEDS} absent (../shared not beside the checkout)")
    emb = ViewEmbeddings.from_facelift(FACELIFT_EMBEDS)
    assert emb.rig_name == "facelift_6view" and not emb.learnable and tuple(emb().shape) == (6, 77, 1024)
    with pytest.raises(ValueError, match="facelift_6view.*mouse_oblique20_6view"):
        ViewEmbeddings.from_facelift(FACELIFT_EMBEDS, "mouse_oblique20_6view")
    # saved with the rig; loading for another rig names both
    path = emb.save(tmp_path / "view_embeddings.safetensors")
    again = ViewEmbeddings.load(path)
    assert again.rig_name == "facelift_6view" and again.source == "facelift"
    torch.testing.assert_close(again(), emb())
    with pytest.raises(ValueError, match="facelift_6view.*mouse_oblique20_6view"):
        ViewEmbeddings.load(path, "mouse_oblique20_6view")
    # a new rig starts from the FaceLift view nearest in azimuth (mouse rig: same azimuths -> same embeddings)
    mouse = ViewEmbeddings.from_nearest_facelift("mouse_oblique20_6view", FACELIFT_EMBEDS)
    assert mouse.rig_name == "mouse_oblique20_6view" and mouse.learnable
    torch.testing.assert_close(mouse(), emb())


def test_module_with_facelift_embeddings_reports_facelift_rig_and_refuses_mouse_rig():
    if not FACELIFT_EMBEDS.is_file():
        pytest.skip(f"{FACELIFT_EMBEDS} absent (../shared not beside the checkout)")
    m = tiny_module(view_embeddings="facelift", facelift_embeds=str(FACELIFT_EMBEDS), cross_attention_dim=1024)
    assert m.view_rig == "facelift_6view"
    with pytest.raises(ValueError, match="facelift_6view.*mouse_oblique20_6view"):
        tiny_module(rig="mouse_oblique20_6view", view_embeddings="facelift", facelift_embeds=str(FACELIFT_EMBEDS),
                    cross_attention_dim=1024)


def test_view_embeddings_state_dict_of_another_rig_is_refused():
    a = ViewEmbeddings.from_scratch("facelift_6view", tokens=2, dim=4)
    b = ViewEmbeddings.from_scratch("mouse_oblique20_6view", tokens=2, dim=4)
    with pytest.raises(ValueError, match="facelift_6view.*mouse_oblique20_6view"):
        b.load_state_dict(a.state_dict())


def test_batch_from_another_rig_is_refused_naming_both():
    m = tiny_module()
    with pytest.raises(ValueError, match="mouse_oblique20_6view.*facelift_6view"):
        m.diffusion_loss(make_batch(rig="mouse_oblique20_6view"))


# ---- training ------------------------------------------------------------------------------------------------------
def test_min_snr_weights_clip_high_snr_timesteps():
    ac = torch.linspace(0.999, 0.001, 1000)
    t = torch.tensor([0, 999])
    w_eps = min_snr_weights(ac, t, 5.0, "epsilon")
    assert w_eps[0].item() < 0.01 and w_eps[1].item() == pytest.approx(1.0)
    w_v = min_snr_weights(ac, t, 5.0, "v_prediction")
    snr = (ac[999] / (1 - ac[999])).item()
    assert w_v[1].item() == pytest.approx(snr / (snr + 1), rel=1e-4)
    assert w_v[0].item() == pytest.approx(5.0 / ((ac[0] / (1 - ac[0])).item() + 1), rel=1e-4)
    assert torch.equal(min_snr_weights(ac, t, None, "epsilon"), torch.ones(2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch(prediction_type):
    torch.manual_seed(0)
    m = tiny_module(prediction_type=prediction_type, attention="joint")
    batch = make_batch(b=1)
    opt = m.configure_optimizers()["optimizer"]

    def loss() -> torch.Tensor:  # fixed noise / timesteps
        return m.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))["loss"]

    with torch.no_grad():
        before = loss().item()
    for _ in range(12):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.7 * before, (before, after)


def test_augmented_reference_is_the_model_input_when_present():
    m = tiny_module()
    batch = make_batch(b=1)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    with torch.no_grad():
        clean = m.diffusion_loss(batch, generator=gen())["loss"]
        same = m.diffusion_loss({**batch, "input_images": batch["ref_images"].clone()}, generator=gen())["loss"]
        aug = m.diffusion_loss({**batch, "input_images": 1 - batch["ref_images"]}, generator=gen())["loss"]
    torch.testing.assert_close(clean, same)
    assert not torch.allclose(clean, aug)


def test_training_draws_are_seeded_by_seed_step_rank_and_micro_batch(monkeypatch):
    """Timesteps, noise and condition dropout come from training_generator (tests/test_fit_resume.py: bit-exact
    resume), never from the global RNG; DDP ranks and accumulated micro-batches draw differently."""
    seeds = {step_seed(s, step, rank, micro) for s in (0, 1) for step in range(3) for rank in range(2)
             for micro in range(2)}
    assert len(seeds) == 24
    m = tiny_module(cond_drop_prob=0.5)
    batch = make_batch(b=2)

    def draws(batch_idx: int) -> list[float]:
        with torch.no_grad():
            before = torch.get_rng_state()
            loss = m.diffusion_loss(batch, generator=m.training_generator(batch_idx))["loss"].item()
            assert torch.equal(torch.get_rng_state(), before), "drew from the global RNG"
        return [loss, torch.rand(4, generator=m.training_generator(batch_idx), device=m.device).tolist()]

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # seed_everything(7); resolved at the first training draw
    assert m.training_generator(0).device == m.device
    assert m.noise_seed == 7 and draws(0) == draws(0)  # without a trainer: step 0, rank 0, one micro-batch
    trainer = type("T", (), {"global_step": 5, "global_rank": 0, "accumulate_grad_batches": 2})()
    monkeypatch.setattr(m, "_trainer", trainer)
    first, second = draws(10), draws(11)  # the two micro-batches of step 5
    assert first != second and draws(12) == first
    trainer.global_rank = 1
    assert draws(10) != first
    trainer.global_rank, trainer.global_step = 0, 6
    assert draws(10) != first


def test_guidance_dropout_zeroes_reference_latent_and_image_embedding_of_the_same_scene():
    m = tiny_module()
    ref = torch.rand(2, 3, SIZE, SIZE)
    v = m.rig.num_views
    with torch.no_grad():
        kept = m.conditions(ref, 0, None, torch.Generator().manual_seed(0))
        dropped = m.conditions(ref, 0, torch.tensor([True, False]), torch.Generator().manual_seed(0))
    for full, part in zip(kept, dropped):  # (reference latents, image embeddings), [(B V), ...] scene-major
        assert full[:v].abs().amax() > 0 and torch.equal(part[:v], torch.zeros_like(part[:v]))
        torch.testing.assert_close(part[v:], full[v:])


def test_gradient_checkpointing_recomputes_the_unet_and_gives_the_same_loss_and_gradients():
    plain = tiny_module(cond_drop_prob=0.5)
    ckpt = tiny_module(cond_drop_prob=0.5, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.unet.is_gradient_checkpointing and not plain.unet.is_gradient_checkpointing
    batch = make_batch(b=2)
    results = []
    for m in (plain, ckpt):
        calls = []
        m.unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
        loss = m.training_step(batch, 0)  # draws from training_generator: the same for both
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        assert grads and all(torch.isfinite(g).all() for g in grads.values())
        results.append((loss.detach(), grads, len(calls)))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert (calls_a, calls_b) == (1, 2)  # checkpointing re-runs the block in backward (early-stopped)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], msg=n)


def _random_lpips_weights(root: Path) -> tuple[str, str]:
    """Local VGG16 + LPIPS head files with random values (plumbing only, as tests/test_evaluate.py)."""
    from lightning_modules.reconstruction.losses import _vgg16_features

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in _vgg16_features().state_dict().items()}, root / "vgg16.pth")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, root / "lpips_vgg.pth")
    return str(root / "vgg16.pth"), str(root / "lpips_vgg.pth")


def test_validation_reports_lpips_only_with_local_weights(tmp_path):
    vgg, lpips = _random_lpips_weights(tmp_path)
    batch = make_batch(b=2)
    with_weights, without = tiny_module(vgg_weights=vgg, lpips_weights=lpips), tiny_module()
    assert without.lpips is None and with_weights.lpips is not None
    for m in (with_weights, without):
        m.eval()
        with torch.no_grad():
            m.validation_step(batch, 0)
    got = with_weights.val_metrics.compute()
    assert {"lpips/all", "lpips/synthetic", "lpips/real"} <= set(got) and torch.isfinite(got["lpips/all"])
    assert not any(k.startswith("lpips") for k in without.val_metrics.compute())
    ckpt = {"state_dict": with_weights.state_dict()}
    with_weights.on_save_checkpoint(ckpt)  # LPIPS comes from the local files, never from checkpoints
    assert not any(k.startswith("lpips.") for k in ckpt["state_dict"])


# ---- sampling, checkpoints, export ----------------------------------------------------------------------------------
def test_sampling_returns_the_model_rigs_cameras_and_is_seeded():
    m = tiny_module(rig="mouse_oblique20_6view").eval()
    ref = torch.rand(1, 3, 24, 24)  # resized to image_size
    out = m.sample(ref, num_inference_steps=2, seed=3)
    c2w, k = load_rig("mouse_oblique20_6view").cameras(SIZE)
    assert tuple(out["images"].shape) == (1, 6, 3, SIZE, SIZE)
    assert 0 <= out["images"].min() and out["images"].max() <= 1
    torch.testing.assert_close(out["c2w"], c2w)
    torch.testing.assert_close(out["fxfycxcy"], k)
    assert out["rig"]["name"] == "mouse_oblique20_6view"
    torch.testing.assert_close(m.sample(ref, num_inference_steps=2, seed=3)["images"], out["images"])


def _fit_two_steps(m: DiffusionModule, root: Path, **extra) -> pl.Trainer:
    samples = [{k: v[i] for k, v in {**make_batch(b=2), **extra}.items()} for i in range(2)]
    loader = DataLoader(samples, batch_size=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0, default_root_dir=str(root))
    trainer.fit(m, loader, loader)
    return trainer


def test_fit_validate_checkpoint_and_reload_gives_identical_samples(tmp_path):
    m = tiny_module(attention="sparse")
    trainer = _fit_two_steps(m, tmp_path)
    shown = m.validation_images({}, max_scenes=1)  # the first sampled batch of the last validation
    assert shown["tag"] == "generated_views" and tuple(shown["images"].shape) == (1, 1 + 2 * 6, 3, SIZE, SIZE)
    assert shown["columns"][:2] == ["reference", m.rig.view_names[0]] and shown["columns"][-1].startswith("gt ")
    logged = trainer.logged_metrics
    assert "val/psnr/all" in logged and "val/psnr/real" in logged and "val/ssim/synthetic" in logged
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert raw["mvlift"]["stage"] == "diffusion" and raw["mvlift"]["attention"] == "sparse"
    assert raw["mvlift"]["rig"]["name"] == "facelift_6view" and raw["mvlift"]["version"] == 1
    assert not any(k.startswith("vae.") for k in raw["state_dict"])  # frozen parts come from `pretrained`
    loaded = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert multiview_attention_mode(loaded.unet) == "sparse"
    ref = torch.rand(1, 3, SIZE, SIZE)
    m.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.sample(ref, 2, seed=1)["images"], m.sample(ref, 2, seed=1)["images"])
    raw["mvlift"]["attention"] = "joint"
    torch.save(raw, ckpt)
    with pytest.raises(ValueError, match="never switched silently"):
        DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu")


def test_training_background_is_stored_in_checkpoint_and_export(tmp_path):
    m = tiny_module()
    trainer = _fit_two_steps(m, tmp_path, background=torch.full((2, 3), 0.5))  # 2 steps x 2 gray samples
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=False)["mvlift"]
    assert raw["background"] == {"color": [0.5, 0.5, 0.5], "varied": False, "samples": 4, "min": [0.5] * 3,
                                 "max": [0.5] * 3}
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert loaded.mvlift_metadata()["background"] == raw["background"]
    out = loaded.export(tmp_path / "export")
    assert json.loads((out / "mvlift.json").read_text())["background"] == raw["background"]
    assert DiffusionModule.from_export(out).mvlift_metadata()["background"] == raw["background"]
    assert tiny_module().mvlift_metadata()["background"] is None  # never trained: not known


def test_export_and_from_export_give_identical_outputs_including_ema(tmp_path):
    m = tiny_module(rig="mouse_oblique20_6view", attention="joint", prediction_type="v_prediction").eval()
    with torch.no_grad():
        m.unet.conv_out.bias.add_(0.1)  # make it differ from a freshly built tiny UNet
    ema = {f"unet.{k}": v + 0.01 for k, v in m.unet.state_dict().items()}
    out = m.export(tmp_path / "export", ema_weights=ema)
    for name in ("unet", "unet_ema", "vae", "image_encoder", "feature_extractor", "scheduler",
                 "view_embeddings.safetensors", "rig.json", "mvlift.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "mvlift.json").read_text())
    assert meta["attention"] == "joint" and meta["prediction_type"] == "v_prediction"
    back = DiffusionModule.from_export(out).eval()
    assert back.rig.fingerprint == m.rig.fingerprint and back.view_rig == "mouse_oblique20_6view"
    assert multiview_attention_mode(back.unet) == "joint" and back.prediction_type == "v_prediction"
    ref = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(back.sample(ref, 2, seed=0)["images"], m.sample(ref, 2, seed=0)["images"])
    ema_mod = DiffusionModule.from_export(out, ema=True)
    torch.testing.assert_close(ema_mod.unet.conv_out.bias, m.unet.conv_out.bias + 0.01)


def test_a_loaded_unet_trains_in_train_mode_and_the_frozen_parts_stay_in_eval(tmp_path):
    """diffusers' from_pretrained returns eval mode and Lightning leaves modes as it finds them: a UNet loaded from a
    folder (an export here, SD weights in use) must start in train mode, or its dropout is silently off in training."""
    out = tiny_module(rig="mouse_oblique20_6view", attention="joint").export(tmp_path / "export")
    for loaded in (DiffusionModule.from_export(out), DiffusionModule(rig="mouse_oblique20_6view", pretrained=str(out),
                                                                     attention="joint", view_embeddings="learned",
                                                                     view_init="scratch", image_size=SIZE)):
        assert all(m.training for m in loaded.unet.modules())
        assert not any(m.training for m in loaded.vae.modules())
        assert not any(m.training for m in loaded.image_encoder.modules())
        loaded.eval().train()  # Lightning's validation round trip keeps the frozen parts frozen
        assert loaded.unet.training and not loaded.image_encoder.training


def test_bench_tiny_cpu_path_prints_one_json_line_per_configuration(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "diffusion_step.py"
    spec = importlib.util.spec_from_file_location("diffusion_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--attention", "sparse,diffusers", "--grad-checkpointing", "off,on"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == len(lines) == 4
    for row in lines:
        assert {"step_ms", "images_per_s", "peak_mem_gb", "mfu", "tflops_per_step"} <= set(row)
        assert row["step_ms"] > 0 and row["tflops_per_step"] > 0
    assert [(r["attention"], r["grad_checkpointing"]) for r in rows] == [
        ("sparse", False), ("sparse", True), ("diffusers", False), ("diffusers", True)]
    # in turns: one UNet copy per configuration, each timed for every step
    rows = bench.main(["--tiny", "--attention", "sparse,joint", "--grad-checkpointing", "off", "--interleave"])
    assert [(r["attention"], r["timing"], r["steps"]) for r in rows] == [("sparse", "interleaved", 1),
                                                                       ("joint", "interleaved", 1)]


# ---- configs -----------------------------------------------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "diffusion"


@pytest.mark.parametrize("name", ["tiny_demo.yaml", "facelift_mouse_finetune.yaml", "low_memory_12gb.yaml"])
def test_diffusion_configs_name_only_real_constructor_arguments(name):
    import inspect

    import yaml

    cfg = yaml.safe_load((CONFIGS / name).read_text())
    assert cfg["model"]["class_path"] == "lightning_modules.diffusion.DiffusionModule"
    params = set(inspect.signature(DiffusionModule.__init__).parameters) - {"self"}
    assert set(cfg["model"]["init_args"]) <= params, set(cfg["model"]["init_args"]) - params
    assert set(cfg["trainer"]) <= set(inspect.signature(pl.Trainer.__init__).parameters)


def test_tiny_demo_config_builds_from_a_tiny_pipeline_folder(tmp_path):
    import yaml

    from datamodules.shared_settings import model_args

    args = model_args(yaml.safe_load((CONFIGS / "tiny_demo.yaml").read_text()))
    folder = make_tiny_pipeline_folder(tmp_path / "tiny_pipeline", image_size=args["image_size"])
    m = DiffusionModule(**{**args, "pretrained": str(folder)})
    out = m.sample(torch.rand(1, 3, 64, 64), num_inference_steps=1, guidance_scale=1.0)
    assert tuple(out["images"].shape) == (1, 6, 3, 64, 64)


# ---- GPU (run on the device: pytest -m gpu) ----------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["sparse", "joint"])
def test_gpu_multiview_sdpa_in_bf16_matches_the_fp32_reference(mode):
    from lightning_modules.diffusion.mv_attention import multiview_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(12, 5, 1024, 64, generator=g) for _ in range(3))  # 2 scenes x 6 views, 32x32 tokens
    ref = multiview_sdpa(q.double(), k.double(), v.double(), 6, mode).float()
    out = multiview_sdpa(*(x.cuda().bfloat16() for x in (q, k, v)), 6, mode).float().cpu()
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@needs_cuda
def test_gpu_full_size_unet_trains_a_step_on_six_512px_views_in_bf16():
    from lightning_modules.diffusion.mv_attention import install_multiview_attention

    with torch.device("cuda"):
        unet = UNet2DConditionModel(**sd21_unclip_unet_config(in_channels=8, sample_size=64))
    install_multiview_attention(unet, 6, "sparse")
    unet.enable_gradient_checkpointing()
    torch.cuda.reset_peak_memory_stats()
    n = 2 * 6
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pred = unet(torch.randn(n, 8, 64, 64, device="cuda"), torch.randint(0, 1000, (n,), device="cuda"),
                    encoder_hidden_states=torch.randn(n, 77, 1024, device="cuda"),
                    class_labels=torch.randn(n, 2048, device="cuda")).sample
    loss = pred.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss) and tuple(pred.shape) == (n, 4, 64, 64)
    assert all(torch.isfinite(p.grad).all() for p in unet.parameters() if p.grad is not None)
    assert torch.cuda.max_memory_allocated() / 2**30 < 40


@pytest.mark.gpu
@needs_cuda
def test_gpu_tiny_module_trains_and_samples_on_cuda_like_on_cpu():
    m = tiny_module().cuda()
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in make_batch(b=2).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = m.diffusion_loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    out = m.eval().sample(torch.rand(1, 3, SIZE, SIZE), num_inference_steps=2, seed=0)
    assert out["images"].is_cuda and out["c2w"].is_cuda
    cpu = tiny_module().eval().sample(torch.rand(1, 3, SIZE, SIZE), num_inference_steps=2, seed=0)
    assert tuple(cpu["images"].shape) == tuple(out["images"].shape)


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_draws_come_from_a_cuda_generator():
    m = tiny_module(cond_drop_prob=0.5).cuda()
    gen = m.training_generator(0)
    assert gen.device.type == "cuda"
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in make_batch(b=2).items()}
    with torch.no_grad():
        a = m.diffusion_loss(batch, generator=m.training_generator(0))["loss"]
        b = m.diffusion_loss(batch, generator=m.training_generator(0))["loss"]
    assert torch.equal(a, b)


def test_compile_option_compiles_the_unet_in_place_and_exports_load_uncompiled(tmp_path):
    plain, compiled = tiny_module(), tiny_module(compile=True)
    assert plain.unet._compiled_call_impl is None and compiled.unet._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # names unchanged: checkpoints interchange
    back = DiffusionModule.from_export(compiled.export(tmp_path / "export"))
    assert back.unet._compiled_call_impl is None  # compiling is a training choice, not part of the model


@pytest.mark.gpu
@needs_cuda
def test_gpu_compiled_module_trains_on_cuda_and_matches_eager():
    """The ``compile`` switch on the device: the compiled UNet's loss equals the eager one on the same draws, the
    multi-view processor survives compilation, and a few optimizer steps on a fixed batch lower the loss."""
    torch.manual_seed(0)
    eager = tiny_module().cuda()
    compiled = tiny_module(compile=True).cuda()
    compiled.load_state_dict(eager.state_dict())
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in make_batch(b=2).items()}
    with torch.no_grad():
        a = eager.diffusion_loss(batch, generator=eager.training_generator(0))["loss"]
        b = compiled.diffusion_loss(batch, generator=compiled.training_generator(0))["loss"]
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)
    opt = torch.optim.AdamW(compiled.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = compiled.diffusion_loss(batch, generator=compiled.training_generator(0))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses


def test_the_sampler_shows_its_steps_when_asked(monkeypatch, capsys):
    m = tiny_module(attention="sparse")
    monkeypatch.setenv("MVLIFT_PROGRESS", "1")
    ref = torch.rand(1, 3, SIZE, SIZE)
    quiet = m.sample(ref, num_inference_steps=3, seed=1)
    assert "sampling" not in capsys.readouterr().err  # validation's sampling draws no bar
    shown = m.sample(ref, num_inference_steps=3, seed=1, show_progress=True)
    assert "sampling" in capsys.readouterr().err
    torch.testing.assert_close(shown["images"], quiet["images"])  # the bar changes nothing else
