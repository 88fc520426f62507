"""Domain-gap augmentation (kornia and torch ops, batched): make clean synthetic inputs look captured.

Where it runs is the DataModule's ``augment_on``: ``loader`` (default) augments each sample in the DataLoader's
worker processes (:meth:`DomainGapAugment.augment_sample`, seeded by the sample's draw), ``device`` augments each
batch after its copy to the GPU (``__call__``, seeded by the training step). On a GPU the batched path is cheap in
GPU time but not in host time: kornia launches a few hundred small kernels per batch from the training process, a
host cost every rank pays in full under DDP, while the loader's workers run beside the training step.

Only what the model sees as input changes: ``input_images`` = augmented reference view (diffusion, [B, 1, 3, H, W])
or augmented input views (reconstruction, [B, Vin, 3, H, W]); optional ``input_c2w`` [B, Vin, 4, 4] with a small
pose error (reconstruction). ``images`` / ``ref_images`` / ``c2w`` (the supervision) are never edited. A batch that
already holds ``input_images`` (a source's observed captures, ``datamodules.dataset``) has those augmented instead.

Config: ``{kind: {op: {p: probability, ...strength}}}`` per sample kind (``synthetic`` / ``realistic`` / ``real``,
datamodules.sources.SAMPLE_KINDS); ``None`` gives DEFAULTS (realism for synthetic, nothing for realistic captures,
which carry their capture effects already, nor for real); a kind given replaces that kind's defaults entirely.
Per source: ``sources={name: {op: ...}}`` (a source config's ``augment:`` key, datamodules.sources) replaces its
kind's ops for the scenes of that source (``batch["source"]``); ``{}`` or ``None``: no ops for it.
Ops, applied in this order, each independently per image with its probability:
    background {strength}: shift the background color (where alpha < 1) by up to +-strength per channel
    lighting {brightness, contrast, saturation, hue}: torchvision ColorJitter's factor ranges as one affine colour
        map per image (:class:`Lighting`: a 3x3 matrix and an offset, not kornia's four passes through HSV)
    gamma {gamma: [lo, hi]}
    gaussian_blur {sigma: [lo, hi], kernel_size}
    motion_blur {kernel_size, angle, direction}
    noise {std}: Gaussian sensor noise
    jpeg {quality: [lo, hi]}: a JPEG round trip (:class:`Jpeg`: libjpeg through Pillow on CPU, kornia's
        differentiable codec on a GPU)
    pose_error {rotation_deg, translation} (reconstruction): rotate each input camera about its centre by up to
        rotation_deg and move it by translation * (its distance to the origin), Gaussian per axis.

Example:
    >>> import torch
    >>> aug = DomainGapAugment({"synthetic": {"noise": {"p": 1.0, "std": 0.05}}}, seed=0)
    >>> batch = {"ref_images": torch.full((2, 1, 3, 8, 8), 0.5), "kind": ["synthetic", "real"]}
    >>> out = aug(batch, "diffusion", step=0)
    >>> bool((out["input_images"][0] != 0.5).any()), bool((out["input_images"][1] == 0.5).all())
    (True, True)
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import kornia.augmentation as KA
import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import Tensor

DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {
        "background": {"p": 0.3, "strength": 0.08},
        "lighting": {"p": 0.6, "brightness": 0.2, "contrast": 0.2, "saturation": 0.15, "hue": 0.02},
        "gamma": {"p": 0.3, "gamma": [0.8, 1.25]},
        "gaussian_blur": {"p": 0.3, "sigma": [0.3, 1.2], "kernel_size": 5},
        "motion_blur": {"p": 0.15, "kernel_size": 5, "angle": 45.0, "direction": 0.5},
        "noise": {"p": 0.5, "std": 0.02},
        "jpeg": {"p": 0.3, "quality": [40, 95]},
    },
    "realistic": {},
    "real": {},
}
IMAGE_OPS = ("background", "lighting", "gamma", "gaussian_blur", "motion_blur", "noise", "jpeg")
OPS = (*IMAGE_OPS, "pose_error")


def check_ops(ops: dict[str, Any] | None, where: str) -> dict[str, dict[str, Any]]:
    """One op dict (``{op: {p, ...}}``; None = no ops), checked: unknown ops or a bad ``p`` are errors naming
    ``where``."""
    if ops is not None and not isinstance(ops, dict):
        raise ValueError(f"{where}: expected a mapping of ops, got {ops!r}")
    ops = dict(ops or {})
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"{where}: unknown ops {sorted(unknown)}; known: {list(OPS)}")
    for name, op in ops.items():
        if not isinstance(op, dict) or not 0.0 <= float(op.get("p", 1.0)) <= 1.0:
            raise ValueError(f"{where}.{name}: expected a mapping with p in [0, 1], got {op!r}")
    return ops


def resolve_config(config: dict[str, Any] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-kind op configs: DEFAULTS with the kinds given in ``config`` replaced; unknown ops are an error."""
    out = copy.deepcopy(DEFAULTS)
    for kind, ops in (config or {}).items():
        out[kind] = check_ops(ops, f"augment.{kind}")
    return out


LUMA = (0.299, 0.587, 0.114)


class Lighting:
    """Brightness, contrast, saturation and hue of x [N, 3, H, W] in [0, 1], one random draw per image: factors
    b, c, s ~ U(1 - strength, 1 + strength) and a hue turn ~ U(-hue, hue) (torchvision's ColorJitter ranges).
    Saturation blends with the luma, hue rotates about the grey axis, brightness scales, contrast blends with the
    image's mean luma: an affine map per image, drawn on x's device (nothing read back)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        self.brightness, self.contrast, self.saturation, self.hue = (float(v) for v in
                                                                     (brightness, contrast, saturation, hue))

    def __call__(self, x: Tensor) -> Tensor:
        n, dev = len(x), x.device

        def factor(strength: float) -> Tensor:
            return 1.0 + (torch.rand(n, device=dev) * 2.0 - 1.0) * strength

        b, c, s = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        turn = (torch.rand(n, device=dev) * 2.0 - 1.0) * (self.hue * 2.0 * math.pi)
        luma = torch.tensor(LUMA, device=dev)
        eye = torch.eye(3, device=dev)
        sat = s[:, None, None] * eye + (1.0 - s)[:, None, None] * luma[None, None, :]  # rows: s*rgb + (1-s)*luma
        k = torch.full((3,), 3.0 ** -0.5, device=dev)  # the grey axis
        cross = torch.zeros(3, 3, device=dev)
        cross[0, 1], cross[0, 2], cross[1, 2] = -k[2], k[1], -k[0]
        cross = cross - cross.T
        sin, cos = turn.sin()[:, None, None], turn.cos()[:, None, None]
        rot = eye + sin * cross + (1.0 - cos) * (cross @ cross)  # Rodrigues
        m = b[:, None, None] * (rot @ sat)
        y = torch.einsum("nij,njhw->nihw", m.to(x.dtype), x)
        mean = torch.einsum("i,nihw->n", luma.to(x.dtype), y) / (x.shape[-1] * x.shape[-2])
        y = c[:, None, None, None] * y + ((1.0 - c) * mean)[:, None, None, None]
        return y.clamp(0.0, 1.0)


class Jpeg:
    """A JPEG round trip of x [N, 3, H, W] in [0, 1] at a quality ~ U(lo, hi) per image. CPU tensors (the loader's
    workers) go through libjpeg (Pillow; 8-bit, as a camera writes them): ~10x faster there than kornia's
    differentiable codec, which GPU tensors use (RandomJPEG: no copy to the host)."""

    def __init__(self, quality: tuple[float, float] = (40.0, 95.0)) -> None:
        self.quality = (float(quality[0]), float(quality[1]))
        self.on_device = KA.RandomJPEG(jpeg_quality=self.quality, p=1.0)

    def __call__(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return self.on_device(x)
        from PIL import Image

        quality = torch.empty(len(x)).uniform_(*self.quality).round().int().tolist()
        pixels = x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for img, q in zip(pixels, quality):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=int(q))
            buf.seek(0)
            out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))))
        return torch.stack(out).permute(0, 3, 1, 2).to(x.dtype).div(255.0)


def _make_op(name: str, cfg: dict[str, Any]) -> Any:
    """The op of ``name`` at p = 1 (kornia's, :class:`Lighting` or :class:`Jpeg`): which images it hits is drawn by
    :func:`apply_op` (kornia's own p runs the op on every image and blends, paying the full cost whatever p is)."""
    if name == "lighting":
        return Lighting(cfg.get("brightness", 0.0), cfg.get("contrast", 0.0), cfg.get("saturation", 0.0),
                        cfg.get("hue", 0.0))
    if name == "gamma":
        return KA.RandomGamma(tuple(cfg.get("gamma", (0.8, 1.25))), p=1.0)
    if name == "gaussian_blur":
        k = int(cfg.get("kernel_size", 5))
        return KA.RandomGaussianBlur((k, k), tuple(cfg.get("sigma", (0.3, 1.2))), p=1.0)
    if name == "motion_blur":
        return KA.RandomMotionBlur(int(cfg.get("kernel_size", 5)), float(cfg.get("angle", 45.0)),
                                   float(cfg.get("direction", 0.5)), p=1.0)
    if name == "noise":
        return KA.RandomGaussianNoise(std=float(cfg.get("std", 0.02)), p=1.0)
    if name == "jpeg":
        return Jpeg(tuple(cfg.get("quality", (40, 95))))
    return None


def apply_op(op: Any, x: Tensor, p: float) -> Tensor:
    """``op`` on a p-fraction of the images x [N, 3, H, W], drawn with the host RNG: only the drawn images are
    computed, and no GPU value is read (the indices go to the device from page-locked memory without blocking)."""
    if p >= 1.0:
        return op(x)
    rows = [i for i, u in enumerate(torch.rand(len(x)).tolist()) if u < p]  # a host tensor, read on the host
    if not rows:
        return x
    idx = scene_index(rows, len(x), x.device)
    if isinstance(idx, slice):
        return op(x)
    return x.index_copy(0, idx, op(x.index_select(0, idx)).to(x.dtype))


def shift_background(x: Tensor, alpha: Tensor, cfg: dict[str, Any]) -> Tensor:
    """x [N, 3, H, W] + (1 - alpha [N, 1, H, W]) * delta, delta ~ U(-strength, strength)^3 for a p-fraction of N."""
    n = len(x)
    apply = (torch.rand(n, device=x.device) < float(cfg.get("p", 1.0))).to(x.dtype)
    s = float(cfg.get("strength", 0.08))
    delta = (torch.rand(n, 3, device=x.device) * 2 - 1) * s * apply[:, None]
    return x + (1.0 - alpha) * delta[:, :, None, None]


def perturb_poses(c2w: Tensor, cfg: dict[str, Any]) -> Tensor:
    """Cameras c2w [N, 4, 4]: each (with probability p) rotated about its own centre by an angle ~ U(0, rotation_deg)
    about a random axis and moved by N(0, translation * distance to the origin) per axis."""
    n = len(c2w)
    apply = (torch.rand(n, device=c2w.device) < float(cfg.get("p", 1.0))).to(c2w.dtype)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, device=c2w.device, dtype=c2w.dtype), dim=-1)
    angle = torch.rand(n, 1, device=c2w.device, dtype=c2w.dtype) * math.radians(float(cfg.get("rotation_deg", 1.0)))
    rot = axis_angle_to_rotation_matrix(axis * angle * apply[:, None])
    out = c2w.clone()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    dist = c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    shift = torch.randn(n, 3, device=c2w.device, dtype=c2w.dtype) * float(cfg.get("translation", 0.01)) * dist
    out[:, :3, 3] = c2w[:, :3, 3] + shift * apply[:, None]
    return out


def scene_index(rows: list[int], b: int, device: torch.device) -> slice | Tensor:
    """Rows of a batch of ``b`` to index with: ``slice(None)`` for all of them, else an index tensor on ``device``
    (copied from page-locked memory without blocking: a boolean mask or a plain copy would make the host wait for
    the GPU). Indices are unique and sorted, so writes through them are deterministic."""
    if rows == list(range(b)):
        return slice(None)
    idx = torch.tensor(rows, dtype=torch.long)
    if device.type == "cuda":
        return idx.pin_memory().to(device, non_blocking=True)
    return idx.to(device)


class DomainGapAugment:
    """Callable on a collated batch (see module docstring); deterministic for (seed, step).

    ``sources``: per-source op dicts by source name, each replacing its kind's ops for that source's scenes.
    """

    def __init__(self, config: dict[str, Any] | None = None, seed: int = 0,
                 sources: dict[str, dict[str, Any] | None] | None = None) -> None:
        self.config = resolve_config(config)
        self.seed = int(seed)
        self.ops = {kind: self._image_ops(ops) for kind, ops in self.config.items()}
        self.source_config: dict[str, dict[str, Any]] = {}
        self.source_ops: dict[str, list[tuple[str, dict[str, Any], Any]]] = {}
        self.set_source_ops(sources or {})

    def set_source_ops(self, sources: dict[str, dict[str, Any] | None]) -> None:
        """Per-source ops (by source name) that replace the kind's ops for that source's samples."""
        self.source_config = {name: check_ops(ops, f"source {name!r} augment") for name, ops in sources.items()}
        self.source_ops = {name: self._image_ops(ops) for name, ops in self.source_config.items()}

    @staticmethod
    def _image_ops(ops: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any], Any]]:
        return [(n, cfg, _make_op(n, cfg)) for n, cfg in ops.items() if n in IMAGE_OPS]

    def wants_pose_error(self) -> bool:
        return any("pose_error" in ops for ops in [*self.config.values(), *self.source_config.values()])

    def augment_images(self, x: Tensor, alpha: Tensor | None, kind: str, source: str | None = None) -> Tensor:
        """Apply ``kind``'s image ops (``source``'s when it has its own) to x [N, 3, H, W] (alpha [N, 1, H, W] for
        the background op)."""
        for name, cfg, op in self.source_ops[source] if source in self.source_ops else self.ops.get(kind, []):
            if name == "background":
                if alpha is not None:
                    x = shift_background(x, alpha, cfg)
            else:
                x = apply_op(op, x.clamp(0.0, 1.0), float(cfg.get("p", 1.0)))
        return x.clamp(0.0, 1.0)

    def __call__(self, batch: dict[str, Any], stage: str, step: int) -> dict[str, Any]:
        """Write ``input_images`` (and ``input_c2w`` when a kind has pose_error) into ``batch``; returns it."""
        if stage == "diffusion":
            clean, alpha, c2w = batch["ref_images"], batch.get("ref_alpha"), None
        else:
            n = batch["num_input_views"]  # a Python int once the module has checked the batch on the host
            vin = int(n.reshape(-1)[0]) if isinstance(n, Tensor) else int(n)
            clean, alpha, c2w = batch["images"][:, :vin], batch.get("alpha"), batch["c2w"][:, :vin]
            alpha = None if alpha is None else alpha[:, :vin]
        if batch.get("input_images") is not None:  # a source's own model input (observed captures): augment that
            clean, alpha = batch["input_images"], batch.get("input_alpha", alpha)
        b, v = clean.shape[:2]
        kinds = list(batch.get("kind") or ["synthetic"] * b)
        names = list(batch.get("source") or [None] * b)
        # scenes of a source with its own ops form their own group (after the kinds: no override, same RNG order)
        groups = [("source", n) if n in self.source_config else ("kind", k) for k, n in zip(kinds, names)]
        out = clean.clone()
        out_c2w = None if c2w is None else c2w.clone()
        devices = [clean.device] if clean.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = self.seed * 1_000_003 + int(step)
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed: in a loader worker without CUDA it
            if devices:  # queues a lazy CUDA seeding with a stack trace, 1.4 ms a sample
                with torch.cuda.device(clean.device):
                    torch.cuda.manual_seed(seed)
            for tag, key in sorted(set(groups)):
                # the group's scenes: all of them (no indexing), or an index list sent without a host sync
                sel = scene_index([i for i, g in enumerate(groups) if g == (tag, key)], b, clean.device)
                kind, source = ("", key) if tag == "source" else (key, None)
                ops = self.source_config[key] if tag == "source" else self.config.get(key, {})
                if set(ops) & set(IMAGE_OPS):
                    x = clean[sel].flatten(0, 1)
                    a = None if alpha is None else alpha[sel].flatten(0, 1)
                    out[sel] = self.augment_images(x, a, kind, source).view(-1, v, *clean.shape[2:]).to(out.dtype)
                pose_cfg = ops.get("pose_error")
                if pose_cfg and out_c2w is not None:
                    out_c2w[sel] = perturb_poses(c2w[sel].flatten(0, 1), pose_cfg).view(-1, v, 4, 4)
        batch["input_images"] = out
        if out_c2w is not None and self.wants_pose_error():
            batch["input_c2w"] = out_c2w
        return batch

    def augment_sample(self, sample: dict[str, Any], key: int, stage: str) -> dict[str, Any]:
        """One sample dict (no batch dim, datamodules.dataset) augmented as a batch of one with step ``key``: adds
        ``input_images`` ([1, 3, H, W] diffusion / [Vin, 3, H, W] reconstruction) and ``input_c2w`` when a kind
        has pose_error. The same ``key`` gives the same ops whatever batch the sample later joins."""
        one = {k: v[None] if isinstance(v, Tensor) and k != "num_input_views" else v for k, v in sample.items()
               if k in ("images", "alpha", "c2w", "ref_images", "ref_alpha", "num_input_views", "input_images",
                        "input_alpha")}
        one["kind"], one["source"] = [sample.get("kind", "synthetic")], [sample.get("source")]
        out = self(one, stage, key)
        sample["input_images"] = out["input_images"][0]
        if "input_c2w" in out:
            sample["input_c2w"] = out["input_c2w"][0]
        return sample


__all__ = ["DEFAULTS", "DomainGapAugment", "Jpeg", "Lighting", "apply_op", "check_ops", "perturb_poses",
           "resolve_config", "scene_index", "shift_background"]
