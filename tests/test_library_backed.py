"""Libraries over hand-written code (issue 27): SSIM through kornia.metrics.ssim (fp32 under autocast), rotation
conversions through kornia.geometry.conversions; values as the hand-written versions gave them."""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from callbacks import ema
from datamodules import procedural
from geometry import calibration
from geometry.render import gaussians
from lightning_modules.reconstruction import losses
from lightning_modules.reconstruction.losses import ssim_loss, ssim_map


def _reference_ssim(x, y, window=11, sigma=1.5):  # the hand-written SSIM that kornia replaced
    c = x.shape[1]
    coords = torch.arange(window, dtype=x.dtype) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (5, 5, 5, 5), mode="reflect"), w, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return (2 * mx * my + 1e-4) * (2 * sxy + 9e-4) / ((mx * mx + my * my + 1e-4) * (sxx + syy + 9e-4))


def test_ssim_is_kornias_with_the_values_of_before_and_fp32_under_autocast():
    assert "kornia" in inspect.getsource(losses.ssim_map)
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 32, 32), (1, 3, 48, 40), (3, 1, 24, 24)):
        x = torch.rand(shape, generator=g)
        y = (x + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
        assert (ssim_map(x, y) - _reference_ssim(x, y)).abs().max() < 2e-5
        assert abs(float(ssim_loss(x, y)) - float((1 - _reference_ssim(x, y)).clamp_min(0).mean())) < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ssim_map(x.bfloat16(), y.bfloat16()).dtype == torch.float32
    assert float(ssim_loss(x, x)) == 0.0


def test_rotation_conversions_are_kornias_and_agree_with_the_formulas():
    for fn in (gaussians.quat_to_rotmat, calibration.rodrigues, calibration.rodrigues_vector, procedural.rotmat_to_quat):
        assert "kornia" in inspect.getsource(fn) or "conversions" in (fn.__doc__ or ""), fn.__name__
    # a quarter turn about z, three ways
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert torch.allclose(gaussians.quat_to_rotmat(q * 3.0).double(), rz, atol=1e-6)  # normalised first
    assert torch.allclose(calibration.rodrigues(torch.tensor([0, 0, math.pi / 2], dtype=torch.float64)), rz, atol=1e-12)
    assert torch.allclose(calibration.rodrigues_vector(rz), torch.tensor([0, 0, math.pi / 2], dtype=torch.float64))
    assert np.allclose(procedural.rotmat_to_quat(rz.numpy()), q.double().numpy(), atol=1e-12)
    assert torch.equal(calibration.rodrigues(torch.zeros(3)), torch.eye(3, dtype=torch.float64))
    r = calibration.rodrigues(torch.tensor([0.3, -1.2, 2.0]))  # round trips, w >= 0
    assert torch.allclose(calibration.rodrigues_vector(r), torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    quat = procedural.rotmat_to_quat(np.diag([1.0, -1.0, -1.0]))  # 180 deg about x: w = 0 branch
    assert np.allclose(np.abs(quat), [0, 1, 0, 0], atol=1e-9)


def test_the_ema_callback_says_why_it_exists_beside_lightnings_and_diffusers():
    assert "EMAModel" in ema.__doc__ and "WeightAveraging" in ema.__doc__ and "exports" in ema.__doc__


def test_lpips_takes_torchmetrics_heads_when_none_are_given(tmp_path):
    from lightning_modules.reconstruction.losses import LPIPS, load_lpips, torchmetrics_lpips_heads

    heads = torchmetrics_lpips_heads()
    assert heads is not None and heads.name == "vgg.pth"
    vgg = tmp_path / "vgg16.pth"  # a random VGG16 backbone in torchvision's layout stands in for the real one
    torch.save(_vgg_state(), vgg)
    lp = load_lpips(str(vgg))
    assert isinstance(lp, LPIPS)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)


def _vgg_state():
    from lightning_modules.reconstruction.losses import _VGG16_CFG

    state, c_in, i = {}, 3, 0
    for v in _VGG16_CFG:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.randn(v, c_in, 3, 3) * 0.05, torch.zeros(v)
        c_in, i = v, i + 2
    return state
