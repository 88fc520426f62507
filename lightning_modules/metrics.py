"""Image-quality metrics of rendered views, per view and per source kind (torchmetrics underneath).

``view_metrics(pred, target, lpips=None, alpha=None)`` -> {"psnr": [B, V], "ssim": [B, V], ("lpips": [B, V]),
("psnr_fg": [B, V])} for images [B, V, 3, H, W] in [0, 1]; ``psnr_fg`` (``per_view_psnr_fg``) is the PSNR inside
the bounding box of the target's alpha > 0.5, given the target views' alpha [B, V, 1, H, W]: mouse renders are
mostly white background, which whole-image PSNR rewards. A view whose mask is empty has no box: NaN, left out of
means (``KindMetrics`` counts them as ``psnr_fg_empty``). ``KindMetrics`` accumulates the metrics over batches,
split by the sample's ``kind`` ("synthetic" / "realistic" / "real") plus "all", for Lightning logging; "realistic" is a
synthetic source's realistic captures (``KIND_LABELS``: what tables call each kind).

Example:
    >>> import torch
    >>> x = torch.rand(1, 2, 3, 16, 16)
    >>> m = view_metrics(x, x.clamp(0, 1))
    >>> m["psnr"].shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

KINDS = ("synthetic", "realistic", "real")  # a sample's kind: datamodules.sources.SAMPLE_KINDS
KIND_LABELS = {"synthetic": "synthetic", "realistic": "synthetic (realistic)", "real": "real"}
FG_THRESHOLD = 0.5
# Metrics that are NaN where they are undefined (a view without foreground): means leave those views out.
UNDEFINED_AS_NAN = ("psnr_fg", "ssim_fg", "iou")


class IntervalMean:
    """Mean of a scalar over the steps since it was last read, kept on the device (no host sync per step): what the
    modules log as ``train/loss`` every ``log_every_n_steps``, so a logged point stands for all the steps since the
    previous one, not only the last (the same value when logging every step)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, value: Tensor) -> None:
        v = value.detach().float()
        self.total = v if self.total is None else self.total + v
        self.count += 1

    def pop(self) -> Tensor:
        if self.total is None:
            raise ValueError("IntervalMean.pop() before any add()")
        out = self.total / self.count
        self.total, self.count = None, 0
        return out

    def state_dict(self) -> dict[str, float | int | None]:
        """The open interval (saved with checkpoints: a resumed run logs the same means as an uninterrupted one)."""
        return {"total": None if self.total is None else float(self.total), "count": self.count}

    def load_state_dict(self, state: dict[str, float | int | None] | None) -> None:
        state = state or {}
        total = state.get("total")
        self.total = None if total is None else torch.tensor(float(total))
        self.count = int(state.get("count") or 0) if total is not None else 0


def logs_this_step(module) -> bool:
    """Whether Lightning writes this training step's logged values (every ``log_every_n_steps``; True without a
    trainer). Per-step ``self.log`` calls cost host time (Lightning's result collection) and their metrics cost
    GPU work, on every step, although only every n-th step's values reach the loggers: the modules log only then."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)  # Lightning's own rule; log every step if it moves
    return bool(getattr(connector, "should_update_logs", True) or trainer.fast_dev_run)


def per_view_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB per view. pred, target [B, V, C, H, W] in [0, 1] -> [B, V]."""
    b, v = pred.shape[:2]
    p, t = pred.detach().float().flatten(0, 1).clamp(0, 1), target.detach().float().flatten(0, 1)
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return psnr.reshape(b, v)


def per_view_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM per view (Gaussian window 11, sigma 1.5). [B, V, C, H, W] -> [B, V]."""
    b, v = pred.shape[:2]
    p, t = pred.detach().float().flatten(0, 1).clamp(0, 1), target.detach().float().flatten(0, 1)
    with torch.autocast(device_type=p.device.type, enabled=False):  # fp32: see losses.ssim_map
        ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return ssim.reshape(b, v)


def foreground_box(alpha: Tensor, threshold: float = FG_THRESHOLD) -> Tensor:
    """The axis-aligned bounding box of ``alpha > threshold`` per image, as a mask.

    alpha [..., 1, H, W] -> bool [..., 1, H, W]: True on every pixel of the smallest rectangle (rows ``r0..r1``,
    columns ``c0..c1``, inclusive) holding all foreground pixels; all False when no pixel is foreground. No
    host-device synchronisation (no ``.item()``, no data-dependent shapes).

    Example:
        >>> a = torch.zeros(1, 1, 4, 5)
        >>> a[0, 0, 1, 1] = a[0, 0, 2, 3] = 1.0
        >>> foreground_box(a)[0, 0].int()
        tensor([[0, 0, 0, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    if alpha.dim() < 3 or alpha.shape[-3] != 1:
        raise ValueError(f"alpha must be [..., 1, H, W], got {tuple(alpha.shape)}")
    fg = alpha[..., 0, :, :] > threshold                      # [..., H, W]

    def span(occupied: Tensor) -> Tensor:  # [..., L] bool -> True from the first to the last True
        o = occupied.to(torch.uint8)
        after_first = o.cummax(-1).values
        before_last = o.flip(-1).cummax(-1).values.flip(-1)
        return (after_first & before_last).bool()

    rows, cols = span(fg.any(-1)), span(fg.any(-2))          # [..., H], [..., W]
    return (rows[..., :, None] & cols[..., None, :]).unsqueeze(-3)


def per_view_psnr_fg(pred: Tensor, target: Tensor, alpha: Tensor, threshold: float = FG_THRESHOLD) -> Tensor:
    """PSNR in dB per view over the pixels inside the target's foreground bounding box.

    pred, target [B, V, C, H, W] in [0, 1] (pred is clamped, as in ``per_view_psnr``); alpha [B, V, 1, H, W], the
    target views' alpha -> [B, V]. Per view: the box is the axis-aligned bounding box of ``alpha > threshold``
    (``foreground_box``); MSE = mean of (pred - target)² over the box's pixels and the C channels;
    PSNR = 10·log10(1 / MSE) (data range 1; +inf when the box is predicted exactly). A view whose mask is empty
    gets NaN (no box; means must leave it out). The background outside the box does not count, so a model is not
    rewarded for painting the white background of a small subject. Equals ``per_view_psnr`` when the box is the
    whole image.

    Example:
        >>> target = torch.ones(1, 2, 3, 8, 8)
        >>> alpha = torch.zeros(1, 2, 1, 8, 8)
        >>> target[0, 0, :, 2:4, 2:6] = 0.2; alpha[0, 0, :, 2:4, 2:6] = 1.0   # view 1: no foreground
        >>> pred = target.clone()
        >>> pred[0, 0, :, 0, 0] = 0.0                                           # wrong outside the box only
        >>> per_view_psnr_fg(pred, target, alpha)
        tensor([[inf, nan]])
        >>> pred[0, 0, :, 2:4, 2:6] = 0.3                                       # off by 0.1 inside: 20 dB
        >>> per_view_psnr_fg(pred, target, alpha).round(decimals=3)
        tensor([[20., nan]])
    """
    if pred.shape != target.shape or alpha.shape[:2] != target.shape[:2] or alpha.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"per_view_psnr_fg: pred {tuple(pred.shape)}, target {tuple(target.shape)} and alpha "
                         f"{tuple(alpha.shape)} must be [B, V, C, H, W] / [B, V, 1, H, W] of one size")
    p, t = pred.detach().float().clamp(0, 1), target.detach().float()
    box = foreground_box(alpha.detach(), threshold).to(p.dtype)               # [B, V, 1, H, W]
    pixels = box.sum((-3, -2, -1)) * p.shape[-3]                              # box pixels x channels
    sse = (((p - t) ** 2) * box).sum((-3, -2, -1))
    mse = sse / pixels                                                        # 0/0 = NaN for an empty box
    return 10.0 * torch.log10(1.0 / mse)


@torch.no_grad()
def per_view_ssim_fg(pred: Tensor, target: Tensor, alpha: Tensor, threshold: float = FG_THRESHOLD) -> Tensor:
    """SSIM per view averaged over the target's foreground bounding box (``foreground_box``) of the full SSIM map
    (window 11, sigma 1.5, as ``per_view_ssim``) -> [B, V]; NaN for a view without foreground."""
    b, v = pred.shape[:2]
    p, t = pred.detach().float().flatten(0, 1).clamp(0, 1), target.detach().float().flatten(0, 1)
    with torch.autocast(device_type=p.device.type, enabled=False):
        _, ssim_map = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none",
                                                          return_full_image=True)
    box = foreground_box(alpha.detach().float()).flatten(0, 1).expand_as(ssim_map).float()
    n = box.sum(dim=(1, 2, 3))
    return ((ssim_map * box).sum(dim=(1, 2, 3)) / n).masked_fill(n == 0, float("nan")).reshape(b, v)


def per_view_iou(pred_alpha: Tensor, target_alpha: Tensor, threshold: float = FG_THRESHOLD) -> Tensor:
    """Silhouette IoU per view: |pred > t AND target > t| / |pred > t OR target > t| for alpha [B, V, 1, H, W]
    -> [B, V]; NaN where both silhouettes are empty.

    Example:
        >>> a = torch.zeros(1, 1, 1, 4, 4); a[..., :2, :] = 1
        >>> b = torch.zeros(1, 1, 1, 4, 4); b[..., :1, :] = 1
        >>> per_view_iou(a, b)
        tensor([[0.5000]])
    """
    p, t = pred_alpha.detach().float() > threshold, target_alpha.detach().float() > threshold
    inter, union = (p & t).sum(dim=(-3, -2, -1)).float(), (p | t).sum(dim=(-3, -2, -1)).float()
    return (inter / union).masked_fill(union == 0, float("nan"))


def view_metrics(pred: Tensor, target: Tensor, lpips: nn.Module | None = None,
                 alpha: Tensor | None = None) -> dict[str, Tensor]:
    """{"psnr", "ssim"[, "lpips"][, "psnr_fg"]} -> [B, V] each; LPIPS only when a (locally loaded) module is given,
    ``psnr_fg`` (``per_view_psnr_fg``: NaN for views without foreground) only when the target views' alpha
    [B, V, 1, H, W] is given."""
    out = {"psnr": per_view_psnr(pred, target), "ssim": per_view_ssim(pred, target)}
    if alpha is not None:
        out["psnr_fg"] = per_view_psnr_fg(pred, target, alpha)
    if lpips is not None:
        b, v = pred.shape[:2]
        out["lpips"] = lpips(pred.detach().float().flatten(0, 1).clamp(0, 1),
                             target.detach().float().flatten(0, 1)).reshape(b, v)
    return out


class KindMetrics(nn.Module):
    """Running means of per-view metrics by sample kind ("all", "synthetic", "realistic", "real").

    ``update(metrics {name: [B, V]}, kinds [B] strings)``; ``compute() -> {"name/kind": scalar}`` for kinds seen.
    A scene's value is the mean over its views, the logged value the mean over scenes. Metrics in
    ``UNDEFINED_AS_NAN`` (``psnr_fg``) leave out their NaN views (the scene's mean is over its other views; a scene
    with none is left out) and count them: ``"<name>_empty/<kind>"`` = the number of views left out.

    Example:
        >>> km = KindMetrics()
        >>> km.update({"psnr_fg": torch.tensor([[20.0, float("nan")], [float("nan"), float("nan")]])},
        ...           ["synthetic", "real"])
        >>> for name, value in km.compute().items():
        ...     print(name, float(value))
        psnr_fg/all 20.0
        psnr_fg/real nan
        psnr_fg/synthetic 20.0
        psnr_fg_empty/all 3.0
        psnr_fg_empty/real 2.0
        psnr_fg_empty/synthetic 1.0
    """

    def __init__(self, names: Sequence[str] = ("psnr", "ssim", "lpips", "psnr_fg")):
        super().__init__()
        self.names = tuple(names)
        kinds = ("all", *KINDS)
        self.means = nn.ModuleDict({
            f"{n}__{k}": MeanMetric(nan_strategy="ignore" if n in UNDEFINED_AS_NAN else "warn")
            for n in self.names for k in kinds
        })
        self.empty = nn.ModuleDict({
            f"{n}_empty__{k}": SumMetric() for n in self.names if n in UNDEFINED_AS_NAN for k in kinds
        })
        self._seen: set[str] = set()

    def update(self, metrics: dict[str, Tensor], kinds: Sequence[str] | None) -> None:
        for name, values in metrics.items():
            if name not in self.names:
                continue
            b = values.shape[0]
            ks = list(kinds) if kinds is not None else ["all"] * b
            undefined = name in UNDEFINED_AS_NAN
            scene = values.nanmean(-1) if undefined else values.mean(-1)
            empty = values.isnan().sum(-1).float() if undefined else None
            for kind in ("all", *KINDS):
                if kind == "all":
                    sel = None
                else:
                    sel = torch.tensor([k == kind for k in ks], device=values.device)
                    if not sel.any():
                        continue
                self.means[f"{name}__{kind}"].update(scene if sel is None else scene[sel])
                self._seen.add(f"{name}__{kind}")
                if empty is not None:
                    self.empty[f"{name}_empty__{kind}"].update(empty if sel is None else empty[sel])
                    self._seen.add(f"{name}_empty__{kind}")

    def _metric(self, key: str) -> nn.Module:
        return self.empty[key] if key in self.empty else self.means[key]

    def compute(self) -> dict[str, Tensor]:
        return {key.replace("__", "/"): self._metric(key).compute() for key in sorted(self._seen)}

    def reset(self) -> None:
        for m in (*self.means.values(), *self.empty.values()):
            m.reset()
        self._seen.clear()


def batch_kinds(batch: dict, b: int) -> list[str]:
    """The source kind of each of the ``b`` scenes of a batch (``batch["kind"]``: one string or one per scene;
    ``"all"`` when the batch does not say)."""
    kind = batch.get("kind")
    if kind is None:
        return ["all"] * b
    return [kind] * b if isinstance(kind, str) else list(kind)


__all__ = ["FG_THRESHOLD", "KINDS", "KIND_LABELS", "UNDEFINED_AS_NAN", "IntervalMean", "KindMetrics", "batch_kinds",
           "foreground_box", "logs_this_step", "per_view_psnr", "per_view_psnr_fg", "per_view_ssim", "view_metrics"]
