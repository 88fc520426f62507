"""ReconstructionModule: shapes, index order, export round trip, checkpoint metadata, bench smoke."""

import json

import pytest
import torch

from lightning_modules.reconstruction.module import ReconstructionModule, check_index

S = 16


def tiny(**kw) -> ReconstructionModule:
    args = {"rig": "facelift_6view", "image_size": S, "num_input_views": 2, "width": 32, "depth": 1, "head_dim": 16,
                "rasterizer": "torch"}
    args.update(kw)
    return ReconstructionModule(**args)


def make_batch(b: int = 2, v: int = 4, seed: int = 0) -> dict:
    from geometry.rig import load_rig

    g = torch.Generator().manual_seed(seed)
    c2w, k = load_rig("facelift_6view").cameras(S)
    index = torch.stack([torch.arange(v).expand(b, v), (torch.arange(b) + 7)[:, None].expand(b, v)], -1)
    return {"images": torch.rand(b, v, 3, S, S, generator=g), "alpha": torch.ones(b, v, 1, S, S),
            "c2w": c2w[:v].expand(b, v, 4, 4).clone(), "fxfycxcy": k[:v].expand(b, v, 4).clone(),
            "index": index, "background": torch.ones(b, 3), "kind": ["synthetic", "real"][:b]}


def test_reconstruct_and_predict_views_shapes():
    m = tiny()
    batch = make_batch()
    g = m.reconstruct(batch["images"][:, :2], batch["c2w"][:, :2], batch["fxfycxcy"][:, :2])
    n = 2 + 2 * S * S  # global tokens + one Gaussian per input pixel
    assert g.means.shape == (2, n, 3) and g.quats.shape == (2, n, 4) and g.opacities.shape == (2, n)
    g = g.detach()
    assert float(g.colors.min()) >= 0 and float(g.colors.max()) <= 1 and float(g.opacities.max()) <= 1
    out = m.predict_views(batch)
    assert out["pred"].shape == (2, 2, 3, S, S) and out["target"].shape == (2, 2, 3, S, S)
    assert out["pred_alpha"].shape == (2, 2, 1, S, S)
    assert torch.equal(out["target"], batch["images"][:, 2:])  # supervision = the non-input views
    out_all = m.predict_views({**batch, "supervise_all_views": True})
    assert out_all["pred"].shape[1] == 4


def test_pixel_gaussians_lie_on_their_input_rays_within_the_bounded_depth():
    from geometry.rays import nearest_point_to_origin, pixel_rays

    m = tiny().eval()
    batch = make_batch(b=1)
    g = m.reconstruct(batch["images"][:, :2], batch["c2w"][:, :2], batch["fxfycxcy"][:, :2])
    o, d = pixel_rays(batch["c2w"][0, 0], batch["fxfycxcy"][0, 0], S, S)
    # first pixel Gaussian = view 0, patch (0, 0), pixel (0, 0)
    xyz = g.means[0, 2]
    t = ((xyz - o[0, 0]) * d[0, 0]).sum()
    assert torch.allclose(o[0, 0] + t * d[0, 0], xyz, atol=1e-5)
    t_near = ((nearest_point_to_origin(o[0, 0], d[0, 0]) - o[0, 0]) * d[0, 0]).sum()
    assert abs(float(t - t_near)) <= 1.8 + 1e-5


def test_augmented_inputs_replace_the_clean_input_views():
    m = tiny().eval()
    batch = make_batch()
    clean = m.reconstruct(batch["images"][:, :2], batch["c2w"][:, :2], batch["fxfycxcy"][:, :2])
    aug = torch.rand(2, 2, 3, S, S)
    split_inp, _ = m.split_views({**batch, "input_images": aug})
    assert torch.equal(split_inp["images"], aug)
    g = m.predict_views({**batch, "input_images": aug})["gaussians"]
    assert not torch.allclose(g.colors, clean.colors)


def test_swapped_index_columns_are_detected():
    batch = make_batch()
    check_index(batch["index"])  # (view_idx, scene_idx): fine
    with pytest.raises(ValueError, match="swapped"):
        check_index(batch["index"].flip(-1), "batch['index']")
    m = tiny()
    with pytest.raises(ValueError, match=r"\(view_idx, scene_idx\)"):
        m.predict_views({**batch, "index": batch["index"].flip(-1)})


def test_index_check_accepts_any_view_order_and_catches_one_swapped_scene():
    batch = make_batch(b=2, v=4)
    shuffled = batch["index"][:, [2, 0, 3, 1]]  # views out of rig order are still (view_idx, scene_idx)
    check_index(shuffled)
    one_bad = batch["index"].clone()
    one_bad[1] = one_bad[1].flip(-1)  # only the second scene swapped
    with pytest.raises(ValueError, match="swapped"):
        check_index(one_bad)
    with pytest.raises(ValueError, match=r"\[B, V, 2\]"):
        check_index(batch["index"][0])  # no batch dim
    m = tiny(lr=1e-3)
    with pytest.raises(ValueError, match=r"\(view_idx, scene_idx\)"):
        m.training_step({**batch, "index": batch["index"].flip(-1)}, 0)


def test_losses_and_metrics_of_a_training_step_are_finite_and_logged_per_kind():
    m = tiny(ssim_weight=0.5, opacity_weight=0.1, masked=True)
    batch = make_batch()
    out = m.predict_views(batch)
    terms = m.compute_loss(out)
    assert set(terms) >= {"loss", "mse", "ssim_loss", "opacity_loss"}
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())
    terms["loss"].backward()
    assert m.net.pixel_gaussian_decoder[1].weight.grad is not None
    metrics = m.evaluate_batch(batch)
    assert metrics["psnr"].shape == (2, 2) and metrics["ssim"].shape == (2, 2)
    m.val_metrics.update({k: metrics[k] for k in ("psnr", "ssim")}, batch["kind"])
    assert set(m.val_metrics.compute()) == {"psnr/all", "psnr/synthetic", "psnr/real", "ssim/all",
                                            "ssim/synthetic", "ssim/real"}


def test_export_then_from_export_gives_identical_outputs(tmp_path):
    m = tiny().eval()
    batch = make_batch()
    ema = {f"net.{k}": v + 1.0 for k, v in m.net.state_dict().items()}
    m.export(tmp_path / "exp", ema_weights=ema)
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {
        "model.safetensors", "model_ema.safetensors", "mvlift.json", "rig.json", "README.md"}
    back = ReconstructionModule.from_export(tmp_path / "exp").eval()
    with torch.no_grad():
        a, b = m.predict_views(batch)["pred"], back.predict_views(batch)["pred"]
    assert torch.equal(a, b)
    assert back.rig.fingerprint == m.rig.fingerprint
    ema_back = ReconstructionModule.from_export(tmp_path / "exp", ema=True)
    k = "pixel_gaussian_decoder.1.weight"
    assert torch.equal(ema_back.net.state_dict()[k], m.net.state_dict()[k] + 1.0)
    init = tiny(init_from=str(tmp_path / "exp"))
    assert torch.equal(init.net.state_dict()[k], m.net.state_dict()[k])


def test_optimizer_choice_is_validated_used_and_exported(tmp_path, monkeypatch):
    from tests.test_losses import FakeAdamW8bit, fake_bitsandbytes

    with pytest.raises(ValueError, match="optimizer"):
        tiny(optimizer="sgd")
    assert type(tiny().configure_optimizers()["optimizer"]) is torch.optim.AdamW
    fake_bitsandbytes(monkeypatch)
    m = tiny(optimizer="adamw8bit")
    assert type(m.configure_optimizers()["optimizer"]) is FakeAdamW8bit
    assert ReconstructionModule.from_export(m.export(tmp_path / "exp")).hparams.optimizer == "adamw8bit"


def test_activation_biases_reach_the_network_and_survive_export(tmp_path):
    m = tiny(scale_bias=-3.0, opacity_bias=0.5, depth_range=1.2).eval()
    assert (m.net.config.scale_bias, m.net.config.opacity_bias, m.net.config.depth_range) == (-3.0, 0.5, 1.2)
    batch = make_batch(b=1)
    g = m.reconstruct(batch["images"][:, :2], batch["c2w"][:, :2], batch["fxfycxcy"][:, :2])
    default = tiny().eval()
    default.net.load_state_dict(m.net.state_dict())
    g0 = default.reconstruct(batch["images"][:, :2], batch["c2w"][:, :2], batch["fxfycxcy"][:, :2])
    assert float(g.scales.mean()) < float(g0.scales.mean()) and float(g.opacities.mean()) > float(g0.opacities.mean())
    back = ReconstructionModule.from_export(m.export(tmp_path / "exp")).eval()
    assert back.net.config.to_dict() == m.net.config.to_dict()


def test_ema_callback_averages_the_net_and_export_writes_its_weights(tmp_path):
    import lightning.pytorch as pl

    from callbacks.ema import EMA

    assert ReconstructionModule.ema_target == "net"
    m = tiny(lr=1e-2, max_steps=3, decay="constant")
    ema = EMA(decay=0.5)
    loader = torch.utils.data.DataLoader([make_batch(b=1, seed=i) for i in range(3)], batch_size=None)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[ema],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, loader)
    assert ema.num_updates == 3
    m.export(tmp_path / "exp", ema_weights=ema.ema_state_dict())
    raw = ReconstructionModule.from_export(tmp_path / "exp").net.state_dict()
    averaged = ReconstructionModule.from_export(tmp_path / "exp", ema=True).net.state_dict()
    k = "pixel_gaussian_decoder.1.weight"
    assert torch.equal(averaged[k], ema.shadow[k]) and torch.equal(raw[k], m.net.state_dict()[k])
    assert not torch.equal(averaged[k], raw[k])


def test_lightning_checkpoint_carries_rig_metadata_and_reloads(tmp_path):
    import lightning.pytorch as pl

    m = tiny(lr=1e-3, max_steps=2)
    data = [make_batch(b=1, seed=i) for i in range(2)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(m, loader)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert raw["mvlift"]["stage"] == "reconstruction" and raw["mvlift"]["version"] == 1
    assert raw["mvlift"]["rig"]["name"] == "facelift_6view" and raw["mvlift"]["model_config"]["width"] == 32
    back = ReconstructionModule.load_from_checkpoint(ckpt)
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, back.net.state_dict()[k])


def test_bench_smoke_runs_on_cpu_and_prints_one_json_line(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "reconstruction_step.py"
    spec = importlib.util.spec_from_file_location("bench_reconstruction_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--tiny", "--size", "16", "--batch", "1", "--steps", "1", "--views", "3",
                         "--inputs", "1",
                         "--warmup", "1", "--rasterizer", "torch"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["step_ms"] == result["step_ms"] > 0
    assert {"images_per_s", "peak_mem_gb", "render_share", "mfu", "gpu_busy", "flags"} <= set(result)


@pytest.mark.parametrize("name", ["tiny_demo.yaml", "facelift_mouse_finetune.yaml", "low_memory_12gb.yaml"])
def test_reconstruction_configs_name_real_arguments_rigs_and_parameters(name):
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    from datamodules.shared_settings import model_args

    args = model_args(yaml.safe_load((root / "reconstruction" / name).read_text()))
    with torch.device("meta"):  # FaceLift size without allocating it; init_from names weights made by tools.convert
        m = ReconstructionModule(**{**args, "init_from": None, "compile": False})
    optim = m.configure_optimizers()  # freeze / lr_groups patterns must name real parameters
    assert args["lr"] in {g["initial_lr"] for g in optim["optimizer"].param_groups}
    if name == "tiny_demo.yaml":  # the demo's model and data sit on the same rig, size and input views
        demo = yaml.safe_load((root / "demo_reconstruction.yaml").read_text())
        data = demo["data"]["init_args"]
        assert (args["rig"], args["image_size"], args["num_input_views"]) == (
            data["rig"], data["image_size"], data["num_input_views"]) == ("mouse_oblique20_6view", 64, 4)
        inline = model_args(demo)  # the demo repeats this config's model: no drift
        assert inline == {k: v for k, v in args.items() if k in inline}


def test_block_bench_smoke_and_its_flops_agree_with_the_network_count(capsys):
    from bench import gslrm_block
    from lightning_modules.reconstruction.gslrm import GSLRM, GSLRMConfig

    rows = gslrm_block.main(["--device", "cpu", "--tokens", "18", "--width", "32", "--heads", "2", "--depth", "2",
                             "--steps", "1", "--warmup", "0", "--no-compile"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == rows[-1]
    assert rows[-1]["attn_fwdbwd_ms"] > 0 and rows[-1]["depth_x_block_ms"] > 0
    cfg = GSLRMConfig(width=32, depth=2, head_dim=16, image_size=16, num_global_tokens=2)
    net_flops = GSLRM(cfg).matmul_flops(1, 1, 16, 16, backward=False)  # 2 global + 4 patch tokens
    embed_and_head = 2 * 256 * 9 * 32 + 2 * 6 * 32 * 64 * cfg.gaussian_dim
    assert gslrm_block.block_flops(1, 6, 32) * 2 == net_flops - embed_and_head


def test_bench_kernel_kinds_sort_profiled_kernels_and_leave_out_cpu_events():
    from types import SimpleNamespace

    from bench.kernels import kernel_kind, kernel_times_us

    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert kernel_kind("void pytorch_flash::flash_bwd_kernel<...>") == "attention"
    assert kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32") == "gemm"
    assert kernel_kind("nvjet_tst_128x256_64x4") == "gemm"
    assert kernel_kind("void gsplat::rasterize_to_pixels_fwd_kernel<float>") == "rasterize"
    assert kernel_kind("void at::native::(anonymous)::multi_tensor_apply_kernel<FusedAdam>") == "optimizer"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, GeluCUDA>") == "other"
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(key="nvjet_a", device_type=cuda, self_device_time_total=10.0),
              SimpleNamespace(key="flash_fwd", device_type=cuda, self_device_time_total=30.0),
              SimpleNamespace(key="aten::mm", device_type=cpu, self_device_time_total=10.0),
              SimpleNamespace(key="nvjet_b", device_type=cuda, self_device_time_total=5.0)]
    assert kernel_times_us(SimpleNamespace(key_averages=lambda: events)) == {"gemm": 15.0, "attention": 30.0}


def test_compile_option_compiles_each_block_in_place_and_keeps_parameter_names(tmp_path):
    args = {"rig": "facelift_6view", "image_size": 16, "width": 32, "depth": 2, "head_dim": 16, "num_input_views": 2}
    plain, compiled = ReconstructionModule(**args), ReconstructionModule(**args, compile=True)
    assert all(b._compiled_call_impl is not None for b in compiled.net.transformer_layers)
    assert all(b._compiled_call_impl is None for b in plain.net.transformer_layers)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    back = ReconstructionModule.from_export(compiled.export(tmp_path / "export"))
    assert all(b._compiled_call_impl is None for b in back.net.transformer_layers)


def test_sh_bands_that_no_render_would_show_are_refused():
    from lightning_modules.reconstruction.gslrm import GSLRMConfig

    assert GSLRMConfig().gaussian_dim == 14  # FaceLift's: xyz 3 + RGB 3 + scale 3 + rotation 4 + opacity 1
    with pytest.raises(ValueError, match="GS-LRM sh_degree 1: only 0 is supported"):
        GSLRMConfig(sh_degree=1)
    with pytest.raises(ValueError, match="sh_degree 2: only 0 is supported"):
        ReconstructionModule(rig="facelift_6view", image_size=16, width=32, depth=1, head_dim=16, patch_size=8,
                             sh_degree=2)
