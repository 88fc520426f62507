"""The background a module's training images were composited over, stored with its checkpoints and exports.

Both stages get ``batch["background"]`` [B, 3] from the DataModule: every view of a sample is composited over it (the
diffusion targets and reference, the GS-LRM inputs and targets) and the GS-LRM renders over it. A module keeps the
per-channel range of its training samples' backgrounds (:class:`TrainingBackground`, updated on device in
``training_step``: no host sync per step), writes it to ``checkpoint["mvlift"]["background"]`` and to its export's
metadata (``lightning_modules.artifacts``), and restores it when a run resumes. Record::

    {"color": [r, g, b] | None,   # the one background of every training sample; None when they varied or none seen
     "varied": bool,              # backgrounds differed by more than 1/255 (``random`` / ``as_is`` sources)
     "samples": int,              # training samples seen by all ranks, resumed runs included
     "min": [r, g, b] | None, "max": [r, g, b] | None,
     "sources": {name: spec}}     # optional: the MultiViewDataModule's per-source ``background`` setting at save time

``tools.infer`` composites photos over ``color`` unless ``--background`` is given; varied or unknown backgrounds keep
its white default, with a logged note. Under DDP each rank sees its own share: :meth:`TrainingBackground.merge_ranks`
(collective, called by the modules whenever a checkpoint is saved and before an export) makes every rank's record
the union of all ranks'.

Example:
    >>> bg = TrainingBackground()
    >>> bg.update(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    >>> bg.to_dict()["color"], bg.to_dict()["samples"]
    ([0.5, 0.5, 0.5], 2)
    >>> bg.update(torch.tensor([1.0, 1.0, 1.0]))
    >>> bg.to_dict()["color"], bg.to_dict()["varied"]
    (None, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

TOLERANCE = 1.0 / 255.0


class TrainingBackground:
    """Running per-channel min / max of the training samples' backgrounds, and how many samples were seen."""

    def __init__(self) -> None:
        self.low: Tensor | None = None
        self.high: Tensor | None = None
        self.samples = 0
        self._merged = 0  # samples already counted over all ranks (the rest are this rank's since)

    def update(self, background: Any) -> None:
        """Add a batch's backgrounds ([B, 3] or [3]); anything else (None: a batch without one) is ignored."""
        if not isinstance(background, Tensor) or background.numel() == 0 or background.shape[-1] != 3:
            return
        bg = background.detach().reshape(-1, 3).float()
        low, high = bg.amin(0), bg.amax(0)
        if self.low is None or self.high is None:
            self.low, self.high = low, high
        else:
            self.low = torch.minimum(self.low.to(low.device), low)
            self.high = torch.maximum(self.high.to(high.device), high)
        self.samples += int(bg.shape[0])

    def to_dict(self, sources: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The record (module docstring); None when nothing is known (no sample seen and no sources)."""
        if not self.samples and not sources:
            return None
        rec: dict[str, Any] = {"color": None, "varied": False, "samples": int(self.samples), "min": None, "max": None}
        if self.samples and self.low is not None and self.high is not None:
            low = [round(float(x), 6) for x in self.low.tolist()]
            high = [round(float(x), 6) for x in self.high.tolist()]
            varied = max(h - lo for lo, h in zip(low, high)) > TOLERANCE
            rec.update(min=low, max=high, varied=varied,
                       color=None if varied else [round((lo + h) / 2.0, 4) for lo, h in zip(low, high)])
        if sources:
            rec["sources"] = dict(sources)
        return rec

    def load(self, rec: dict[str, Any] | None) -> None:
        """Restore from a record (resume / export); an empty record resets."""
        self.low, self.high, self.samples = None, None, 0
        if rec and rec.get("samples") and rec.get("min") is not None and rec.get("max") is not None:
            self.low = torch.tensor(rec["min"], dtype=torch.float32)
            self.high = torch.tensor(rec["max"], dtype=torch.float32)
            self.samples = int(rec["samples"])
        self._merged = self.samples

    def merge_ranks(self) -> None:
        """Make this record the union of every rank's (collective under torch.distributed: every rank calls it);
        a no-op in a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        records: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(records, self.share())
        self.combine(records)

    def share(self) -> tuple[list[float] | None, list[float] | None, int]:
        """(min, max, samples since the last merge) of this rank, for :meth:`combine`."""
        low = None if self.low is None else self.low.tolist()
        high = None if self.high is None else self.high.tolist()
        return low, high, self.samples - self._merged

    def combine(self, shares: list[tuple[list[float] | None, list[float] | None, int]]) -> None:
        """Set the record to the union of every rank's ``share()`` (this rank's included)."""
        lows = [lo for lo, _, _ in shares if lo is not None]
        highs = [hi for _, hi, _ in shares if hi is not None]
        device = self.low.device if self.low is not None else torch.device("cpu")
        if lows and highs:
            self.low = torch.tensor(lows, dtype=torch.float32).amin(0).to(device)
            self.high = torch.tensor(highs, dtype=torch.float32).amax(0).to(device)
        self.samples = self._merged = self._merged + sum(int(n) for _, _, n in shares)


def datamodule_backgrounds(trainer: Any) -> dict[str, str] | None:
    """{source name: background spec} of the trainer's DataModule (a MultiViewDataModule), else None."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    sources = getattr(datamodule, "train_sources", None)
    if not sources:
        return None
    return {str(s.name): str(s.background) for s in sources if hasattr(s, "background")} or None


def describe(rec: dict[str, Any] | None) -> str:
    """One line for logs: ``gray [0.5, 0.5, 0.5] (120 samples)``, ``varied ...``, ``unknown``."""
    if not rec:
        return "unknown (not recorded)"
    sources = rec.get("sources")
    extra = f"; sources: {', '.join(f'{k}={v}' for k, v in sources.items())}" if sources else ""
    if rec.get("color") is not None:
        return f"{rec['color']} ({rec.get('samples', 0)} training samples{extra})"
    if rec.get("varied"):
        return f"varied, per channel {rec.get('min')}..{rec.get('max')} ({rec.get('samples', 0)} samples{extra})"
    return f"unknown (no training sample seen{extra})"


__all__ = ["TOLERANCE", "TrainingBackground", "datamodule_backgrounds", "describe"]
