"""Image losses for the reconstruction stage, all bounded below by 0 (a perfect prediction gives exactly 0).

- ``mse_loss`` / ``masked_mse_loss``: mean squared error, optionally over an alpha mask.
- ``ssim_map`` / ``ssim_loss`` / ``masked_ssim_loss``: 1 - SSIM (``kornia.metrics.ssim``: Gaussian window 11,
  sigma 1.5, in fp32), clamped at 0 per pixel so numerical noise can never make it negative (the user's "negative loss" bug).
- ``alpha_loss``: MSE between rendered alpha and the target alpha mask.
- ``PerceptualLoss``: VGG16 feature distance from a LOCAL weights file (torchvision ``vgg16`` state dict layout);
  ``LPIPS``: the same backbone plus LPIPS' linear heads from a local file (default: the heads torchmetrics ships). Neither can be downloaded here: when a
  path is missing, ``load_perceptual`` / ``load_lpips`` log once and return None, and the caller runs without.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 32, 32)
    >>> float(ssim_loss(x, x)), float(masked_ssim_loss(x, x, torch.ones(2, 1, 32, 32)))
    (0.0, 0.0)
"""

from __future__ import annotations

import logging
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.artifacts import load_checkpoint

log = logging.getLogger("mvlift.reconstruction")
_WARNED: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg)


def _flat(x: Tensor) -> Tensor:
    """[..., C, H, W] -> [N, C, H, W]."""
    return x.reshape(-1, *x.shape[-3:])


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over everything. pred, target [..., C, H, W]."""
    return F.mse_loss(pred.float(), target.float())


def masked_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """MSE inside ``mask`` [..., 1, H, W] in [0, 1] (weights); 0 when the mask is empty."""
    err = (pred.float() - target.float()).pow(2) * mask.float()
    denom = (mask.float().sum() * pred.shape[-3]).clamp_min(eps)
    return err.sum() / denom


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM [N, C, H, W] of images [..., C, H, W] in [0, data_range] (reflect-padded, same size):
    ``kornia.metrics.ssim`` (Gaussian window ``window``, sigma 1.5: kornia's, the only ``sigma`` taken).

    Always fp32, autocast or not: the variances are differences of blurred squares (E[x^2] - E[x]^2), which bf16's
    8-bit mantissa turns into noise: under bf16-mixed the SSIM term's gradient would follow that noise, not the image
    (measured in docs/results.md). (kornia replaced a hand-written SSIM: per-pixel values differ by at most 8.5e-6,
    the loss by 1.2e-7, on random image pairs.)"""
    if sigma != 1.5:
        raise ValueError(f"ssim_map: sigma must be 1.5 (kornia.metrics.ssim's window), got {sigma}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return kornia.metrics.ssim(_flat(pred.float()), _flat(target.float()), window, max_val=data_range)


def ssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean(max(1 - SSIM, 0)) in [0, 2]; exactly 0 for pred == target."""
    return (1.0 - ssim_map(pred, target)).clamp_min(0.0).mean()


def masked_ssim_loss(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - SSIM averaged inside ``mask`` [..., 1, H, W] (weights in [0, 1]); >= 0, exactly 0 for pred == target."""
    per_pixel = (1.0 - ssim_map(pred, target)).clamp_min(0.0)  # [N, C, H, W]
    m = _flat(mask.float()).expand_as(per_pixel)
    return (per_pixel * m).sum() / m.sum().clamp_min(eps)


def alpha_loss(pred_alpha: Tensor, target_alpha: Tensor) -> Tensor:
    """MSE between rendered opacity and the target alpha mask, both [..., 1, H, W]."""
    return F.mse_loss(pred_alpha.float(), target_alpha.float())


# ---- VGG-based perceptual losses (local weights only) ------------------------------------------------------------
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16.features
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return nn.Sequential(*layers)


def _load_state(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_checkpoint(path)  # weights_only: a file asking for more is refused by name (--trust-checkpoint)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class VGGFeatures(nn.Module):
    """Frozen VGG16 (torchvision ``vgg16`` layout: keys ``features.N.weight``) returning the 5 ReLU taps."""

    def __init__(self, weights: str | Path):
        super().__init__()
        self.features = _vgg16_features()
        state = _load_state(Path(weights))
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        missing, _unexpected = self.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{weights}: not a torchvision vgg16 state dict; missing {missing[:4]}...")
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [N, 3, H, W] in [0, 1] -> 5 feature maps."""
        h = (x.float() - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG_TAPS:
                out.append(h)
                if i == _VGG_TAPS[-1]:
                    break
        return out


class PerceptualLoss(nn.Module):
    """Mean L1 distance of VGG16 features (5 taps, equal weights). pred, target [..., 3, H, W] in [0, 1]."""

    def __init__(self, vgg_weights: str | Path):
        super().__init__()
        self.vgg = VGGFeatures(vgg_weights)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        fp, ft = self.vgg(_flat(pred)), self.vgg(_flat(target))
        return sum(F.l1_loss(a, b) for a, b in zip(fp, ft)) / len(fp)


class LPIPS(nn.Module):
    """LPIPS (VGG variant): unit-normalised VGG16 features, squared differences weighted by LPIPS' linear heads.

    ``lpips_weights``: the lpips package's ``vgg.pth`` (keys ``lin{k}.model.1.weight``). Returns [N] per image.
    """

    def __init__(self, vgg_weights: str | Path, lpips_weights: str | Path):
        super().__init__()
        self.vgg = VGGFeatures(vgg_weights)
        state = _load_state(Path(lpips_weights))
        chans = (64, 128, 256, 512, 512)
        lins = []
        for k, c in enumerate(chans):
            key = next((n for n in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight") if n in state), None)
            if key is None or tuple(state[key].shape) != (1, c, 1, 1):
                raise ValueError(f"{lpips_weights}: no LPIPS linear head {k} of shape [1, {c}, 1, 1]")
            lins.append(state[key].float())
        self.lins = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in lins)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        fp, ft = self.vgg(_flat(pred)), self.vgg(_flat(target))
        total = 0.0
        for a, b, w in zip(fp, ft, self.lins):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((a - b) ** 2 * w).sum(1).mean((-2, -1))
        return total


def load_perceptual(vgg_weights: str | None) -> PerceptualLoss | None:
    """The perceptual loss from a local VGG16 file, or None (logged once) when no usable path is given."""
    if not vgg_weights or not Path(vgg_weights).is_file():
        _warn_once("perceptual", f"perceptual loss disabled: no local VGG16 weights at {vgg_weights!r}")
        return None
    return PerceptualLoss(vgg_weights)


def torchmetrics_lpips_heads() -> Path | None:
    """The LPIPS linear heads (VGG) that torchmetrics ships (``lpips_models/vgg.pth``, the lpips package's file), or
    None when this torchmetrics has none. mvlift uses its heads, not its ``LearnedPerceptualImagePatchSimilarity``:
    that class needs torchvision and downloads the VGG16 backbone, which mvlift reads from a local file instead."""
    import torchmetrics

    path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "vgg.pth"
    return path if path.is_file() else None


def load_lpips(vgg_weights: str | None, lpips_weights: str | None = None) -> LPIPS | None:
    """LPIPS from local files (``lpips_weights`` None: torchmetrics' heads, :func:`torchmetrics_lpips_heads`), or
    None (logged once) when one is missing."""
    if lpips_weights in (None, "", "None"):
        lpips_weights = str(torchmetrics_lpips_heads() or "")
    if not (vgg_weights and lpips_weights and Path(vgg_weights).is_file() and Path(lpips_weights).is_file()):
        _warn_once("lpips", f"LPIPS disabled: local weights missing (vgg={vgg_weights!r}, lpips={lpips_weights!r})")
        return None
    return LPIPS(vgg_weights, lpips_weights)


__all__ = [
    "LPIPS", "PerceptualLoss", "alpha_loss", "load_lpips", "load_perceptual", "masked_mse_loss",
    "masked_ssim_loss", "mse_loss", "ssim_loss", "ssim_map", "torchmetrics_lpips_heads",
]
