"""Losses and optimisation helpers: bounds, masks, freeze patterns, schedules, the optimizer choice."""

import sys
import types

import pytest
import torch

from lightning_modules.optim import (
    build_adamw,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    lr_factor,
    name_matches,
    total_grad_norm,
)
from lightning_modules.reconstruction.losses import (
    alpha_loss,
    load_lpips,
    load_perceptual,
    masked_mse_loss,
    masked_ssim_loss,
    mse_loss,
    ssim_loss,
    ssim_map,
)


def _pair(seed=0, shape=(2, 3, 3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def test_perfect_prediction_gives_exactly_zero_for_every_loss():
    x, _ = _pair()
    mask = (torch.rand(2, 3, 1, 32, 32) > 0.5).float()
    for value in (mse_loss(x, x), masked_mse_loss(x, x, mask), ssim_loss(x, x), masked_ssim_loss(x, x, mask),
                  alpha_loss(mask, mask)):
        assert value.item() == 0.0


def test_masked_ssim_is_never_negative_and_grows_with_error():
    x, y = _pair(1)
    mask = torch.zeros(2, 3, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    small = masked_ssim_loss(x, (x + 0.05 * (y - 0.5)).clamp(0, 1), mask)
    large = masked_ssim_loss(x, y, mask)
    assert 0.0 < small.item() < large.item() <= 2.0
    # anti-correlated images push SSIM below 0: the loss stays within [0, 2]
    inv = masked_ssim_loss(x, 1.0 - x, mask)
    assert 0.0 <= inv.item() <= 2.0
    assert masked_ssim_loss(x, y, torch.zeros_like(mask)).item() == 0.0  # empty mask: no signal, no NaN


def test_masked_losses_ignore_pixels_outside_the_mask():
    x, y = _pair(2)
    mask = torch.zeros(2, 3, 1, 32, 32)
    mask[..., :16, :] = 1.0
    y_out = x.clone()
    y_out[..., 16:, :] = y[..., 16:, :]  # differs only outside the mask
    assert masked_mse_loss(x, y_out, mask).item() == 0.0
    assert mse_loss(x, y_out).item() > 0.0


def test_ssim_map_matches_torchmetrics_ssim_in_the_interior():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    x, y = _pair(3, (1, 3, 48, 48))
    ours = ssim_map(x, y)[..., 5:-5, 5:-5].mean()
    ref = tm_ssim(x, y, data_range=1.0, reduction="none", return_full_image=True)[1][..., 5:-5, 5:-5].mean()
    assert torch.allclose(ours, ref, atol=2e-3)


def test_perceptual_and_lpips_are_none_without_local_weights(tmp_path):
    assert load_perceptual(None) is None
    assert load_perceptual(str(tmp_path / "missing_vgg.pth")) is None
    assert load_lpips(str(tmp_path / "vgg.pth"), None) is None


def test_freeze_patterns_freeze_exactly_what_they_name():
    net = torch.nn.ModuleDict({
        "patch_embed": torch.nn.Linear(4, 4, bias=False),
        "blocks": torch.nn.ModuleList(torch.nn.Linear(4, 4, bias=False) for _ in range(14)),
        "head": torch.nn.Linear(4, 4, bias=False),
    })
    groups = build_param_groups(net, freeze=["patch_embed", "blocks.0-11"], lr_groups={"head": 1e-3},
                                base_lr=1e-4, weight_decay=0.05)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed.weight", *(f"blocks.{i}.weight" for i in range(12))}
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(net["head"].weight)] == 1e-3
    assert lrs[id(net["blocks"][12].weight)] == 1e-4
    assert len(lrs) == 3  # blocks.12, blocks.13, head


def test_pattern_components_match_whole_numbers_only():
    assert name_matches("blocks.1", "blocks.1.attn.weight")
    assert not name_matches("blocks.1", "blocks.10.attn.weight")
    assert name_matches("blocks.0-11", "blocks.11.x")
    assert not name_matches("blocks.0-11", "blocks.12.x")
    with pytest.raises(ValueError, match="matches no parameter"):
        build_param_groups(torch.nn.Linear(2, 2), freeze=["encoder"])


def test_warmup_then_cosine_and_constant_schedules():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(80, 10, 100, decay="constant") == 1.0
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused kernel)")
@pytest.mark.gpu
def test_fused_adamw_on_cuda_unless_the_trainer_clips_scaled_gradients():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3, device="cuda"))]}]
    assert build_adamw(groups).defaults["fused"]
    assert not build_adamw(groups, clips_scaled_gradients=True).defaults["fused"]


class _RecordingFusedAdamW(torch.optim.AdamW):
    """Fused AdamW (on CPU here) that records the gradient norm it steps with."""

    def __init__(self, params):
        super().__init__(params, lr=1e-3, fused=True)
        self.norms: list[float] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None  # Lightning clips inside its closure's after-hook
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        super().step()
        return loss


@pytest.mark.parametrize("base", ["stage", "plain"])
def test_gradients_are_clipped_under_bf16_with_a_fused_optimizer(tmp_path, base):
    """Lightning refuses a fused optimizer with gradient clipping under any mixed precision (fp16's scaler); the
    stage modules clip themselves where no scaler is in play, so the fused kernel and clipping go together."""
    import lightning.pytorch as pl

    from lightning_modules.stage import StageModule

    class Tiny(StageModule if base == "stage" else pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def mvlift_metadata(self):
            return {}

        def training_step(self, batch, batch_idx):
            return (self.net(batch[0]) - 100.0).square().mean()  # large gradients

        def configure_optimizers(self):
            self.opt = _RecordingFusedAdamW(self.parameters())
            return self.opt

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 8)), batch_size=4)
    model = Tiny()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.5,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    if base == "plain":
        with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
            trainer.fit(model, data)
        return
    trainer.fit(model, data)
    assert len(model.opt.norms) == 3 and all(n <= 0.5 + 1e-4 for n in model.opt.norms), model.opt.norms



class FakeAdamW8bit(torch.optim.AdamW):
    """Stands in for bitsandbytes.optim.AdamW8bit (tests/test_reconstruction.py uses it too)."""


def fake_bitsandbytes(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(optim=types.SimpleNamespace(
        AdamW8bit=FakeAdamW8bit)))


def _groups():
    return [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-3, "weight_decay": 0.0}]


def test_8bit_adamw_is_picked_when_bitsandbytes_is_installed(monkeypatch):
    fake_bitsandbytes(monkeypatch)
    for name in ("adamw8bit", "auto"):
        opt = build_optimizer(name, _groups(), betas=(0.8, 0.9))
        assert type(opt) is FakeAdamW8bit and opt.defaults["betas"] == (0.8, 0.9)
    assert type(build_optimizer("adamw", _groups())) is torch.optim.AdamW


def test_without_bitsandbytes_8bit_adamw_raises_and_auto_falls_back_to_torch_adamw(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ImportError, match="bitsandbytes"):
        build_optimizer("adamw8bit", _groups())
    assert type(build_optimizer("auto", _groups())) is torch.optim.AdamW
    assert "bitsandbytes not installed" in caplog.text
    with pytest.raises(ValueError, match="adamw|adamw8bit|auto"):
        build_optimizer("sgd", _groups())


def test_total_grad_norm_is_the_norm_of_all_gradients_as_one_vector():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False))
    assert total_grad_norm(net.parameters()) is None
    net(torch.randn(5, 4)).square().sum().backward()
    flat = torch.cat([p.grad.flatten() for p in net.parameters()])
    total = total_grad_norm(net.parameters())
    assert total.shape == () and torch.allclose(total, flat.norm())
    # what gradient clipping computes too
    assert torch.allclose(total, torch.nn.utils.clip_grad_norm_(net.parameters(), 1e9))


def test_ssim_loss_and_metric_are_fp32_under_bf16_autocast():
    """Under bf16 autocast, conv2d runs in bf16 and SSIM's variances (E[x^2] - E[x]^2) become noise: GS-LRM training
    stalled at a grey haze until the loss and the metric opted out of autocast."""
    from datamodules.procedural import make_scene
    from lightning_modules.metrics import per_view_ssim
    from lightning_modules.reconstruction.losses import ssim_loss

    s = make_scene(0, "mouse_oblique20_6view", 2, 32)  # a mouse on white: smooth regions, where bf16 hurts most
    target = s["images"] * s["alpha"] + 1 - s["alpha"]
    pred = (0.9 * target + 0.1 * target.mean()).requires_grad_(True)
    ref = ssim_loss(pred, target)
    (ref_grad,) = torch.autograd.grad(ref, pred)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ssim_loss(pred, target)
        metric = per_view_ssim(pred[None], target[None])
    (mixed_grad,) = torch.autograd.grad(mixed, pred)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed_grad, ref_grad, rtol=0, atol=1e-7)
    torch.testing.assert_close(metric, per_view_ssim(pred[None], target[None]), rtol=0, atol=1e-6)
