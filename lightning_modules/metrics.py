"""Image-quality metrics of rendered views, per view and per source kind (torchmetrics underneath).

``view_metrics(pred, target, lpips=None)`` -> {"psnr": [B, V], "ssim": [B, V], ("lpips": [B, V])} for images
[B, V, 3, H, W] in [0, 1]. ``KindMetrics`` accumulates them over batches, split by the sample's ``kind``
("synthetic" / "real") plus "all", for Lightning logging.

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
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

KINDS = ("synthetic", "real")


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
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return ssim.reshape(b, v)


@torch.no_grad()
def view_metrics(pred: Tensor, target: Tensor, lpips: nn.Module | None = None) -> dict[str, Tensor]:
    """{"psnr", "ssim"[, "lpips"]} -> [B, V] each; LPIPS only when a (locally loaded) module is given."""
    out = {"psnr": per_view_psnr(pred, target), "ssim": per_view_ssim(pred, target)}
    if lpips is not None:
        b, v = pred.shape[:2]
        out["lpips"] = lpips(pred.detach().float().flatten(0, 1).clamp(0, 1),
                             target.detach().float().flatten(0, 1)).reshape(b, v)
    return out


class KindMetrics(nn.Module):
    """Running means of per-view metrics by source kind ("all", "synthetic", "real").

    ``update(metrics {name: [B, V]}, kinds [B] strings)``; ``compute() -> {"name/kind": scalar}`` for kinds seen.
    """

    def __init__(self, names: Sequence[str] = ("psnr", "ssim", "lpips")):
        super().__init__()
        self.names = tuple(names)
        self.means = nn.ModuleDict({
            f"{n}__{k}": MeanMetric() for n in self.names for k in ("all", *KINDS)
        })
        self._seen: set[str] = set()

    def update(self, metrics: dict[str, Tensor], kinds: Sequence[str] | None) -> None:
        for name, values in metrics.items():
            if name not in self.names:
                continue
            b = values.shape[0]
            ks = list(kinds) if kinds is not None else ["all"] * b
            self.means[f"{name}__all"].update(values.mean(-1))
            self._seen.add(f"{name}__all")
            for kind in KINDS:
                sel = torch.tensor([k == kind for k in ks], device=values.device)
                if sel.any():
                    self.means[f"{name}__{kind}"].update(values[sel].mean(-1))
                    self._seen.add(f"{name}__{kind}")

    def compute(self) -> dict[str, Tensor]:
        return {key.replace("__", "/"): self.means[key].compute() for key in sorted(self._seen)}

    def reset(self) -> None:
        for m in self.means.values():
            m.reset()
        self._seen.clear()


def batch_kinds(batch: dict, b: int) -> list[str]:
    """The source kind of each of the ``b`` scenes of a batch (``batch["kind"]``: one string or one per scene;
    ``"all"`` when the batch does not say)."""
    kind = batch.get("kind")
    if kind is None:
        return ["all"] * b
    return [kind] * b if isinstance(kind, str) else list(kind)


__all__ = ["KINDS", "IntervalMean", "KindMetrics", "batch_kinds", "logs_this_step", "per_view_psnr", "per_view_ssim",
           "view_metrics"]
