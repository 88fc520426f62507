"""MultiViewDataModule: one LightningDataModule feeding both stages from mixed sources.

Example (CPU, procedural data, no files):
    >>> dm = MultiViewDataModule(stage="reconstruction", sources=[{"name": "syn", "num_scenes": 4}], image_size=32,
    ...                          num_views=4, num_input_views=2, batch_size=2, num_workers=0, samples_per_epoch=2)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["images"].shape, batch["index"].dtype
    (torch.Size([2, 4, 3, 32, 32]), torch.int64)
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from datamodules.augment import DomainGapAugment
from datamodules.dataset import MixedSceneDataset, SceneBuilder, collate_samples
from datamodules.sources import Source, build_source
from datamodules.views import REFERENCE_MODES
from geometry.rig import load_rig

log = logging.getLogger("mvlift.data")

DEMO_SOURCES = [
    {"name": "synthetic", "kind": "synthetic", "format": "procedural", "weight": 0.7, "num_scenes": 1000},
    {"name": "realistic", "kind": "real", "format": "procedural", "realistic": True, "weight": 0.3,
     "num_scenes": 1000, "seed": 1},
]


class _EpochLoader(DataLoader):
    """A DataLoader that tells its MixedSceneDataset the epoch before each pass (workers get a fresh copy)."""

    def __init__(self, *args: Any, epoch_fn: Any = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        if self._epoch_fn is not None:
            self.dataset.set_epoch(self._epoch_fn())
        return super().__iter__()


def held_out_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) scene indices: the last max(1, round(n * fraction)) scenes are held out (none when n < 2)."""
    n_val = 0 if n < 2 or fraction <= 0 else min(n - 1, max(1, round(n * fraction)))
    return np.arange(n - n_val), np.arange(n - n_val, n)


class MultiViewDataModule(L.LightningDataModule):
    """Mixed real + synthetic multi-view scenes for the ``diffusion`` or ``reconstruction`` stage.

    Args (plain types for LightningCLI):
        stage: "diffusion" | "reconstruction".  rig: rig name or path (the stage's cameras).
        sources: list of source dicts (datamodules.sources docstring); default: the procedural demo 0.7 / 0.3.
        val_sources: same shape; default: a held-out tail (``val_fraction``) of each training source.
        image_size: square output size.  num_views / num_input_views: reconstruction views per scene / inputs.
        supervise_inputs: reconstruction supervises the inputs too (else num_views must exceed num_input_views).
        reference_view: "fixed" | "random" | "random_rig" (+ reference_index) for diffusion.
        rig_tolerance_deg / rig_distance_tolerance: diffusion's data-vs-rig camera check.
        normalize_cameras / target_radius: centre at the rays' intersection, mean distance to target_radius.
        center_crop / center_fill: crop every view with view 0's alpha box so the object is ~center_fill of the frame.
        on_bad_sample: "raise" | "skip" (skips are counted per source: ``skip_report()``).
        augment: per-kind domain-gap ops (datamodules.augment docstring); None = defaults; {"enabled": False} = off.
        batch_size, num_workers, samples_per_epoch (draws per epoch, all ranks), val_samples, seed.
    """

    def __init__(
        self,
        stage: str = "reconstruction",
        rig: str = "facelift_6view",
        sources: list[dict] | None = None,
        val_sources: list[dict] | None = None,
        val_fraction: float = 0.05,
        image_size: int = 512,
        num_views: int = 8,
        num_input_views: int = 4,
        supervise_inputs: bool = False,
        reference_view: str = "fixed",
        reference_index: int = 0,
        rig_tolerance_deg: float = 2.0,
        rig_distance_tolerance: float = 0.1,
        normalize_cameras: bool = False,
        target_radius: float = 2.7,
        center_crop: bool = False,
        center_fill: float = 0.6,
        on_bad_sample: str = "raise",
        augment: dict | None = None,
        augment_val: bool = False,
        batch_size: int = 2,
        num_workers: int = 2,
        samples_per_epoch: int = 1000,
        val_samples: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if reference_view not in REFERENCE_MODES:
            raise ValueError(f"reference_view must be one of {REFERENCE_MODES}, got {reference_view!r}")
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if stage == "reconstruction" and not (1 <= num_input_views <= num_views):
            raise ValueError(f"need 1 <= num_input_views ({num_input_views}) <= num_views ({num_views})")
        if stage == "reconstruction" and not supervise_inputs and num_input_views == num_views:
            raise ValueError(f"num_input_views == num_views ({num_views}) leaves no supervision views; "
                             "lower num_input_views or set supervise_inputs: true")
        self.stage = stage
        self.rig = load_rig(rig)
        self.builder = SceneBuilder(stage, self.rig, image_size, num_views, num_input_views, reference_view,
                                    reference_index, rig_tolerance_deg, rig_distance_tolerance, normalize_cameras,
                                    target_radius, center_crop, center_fill)
        enabled = augment is None or augment.get("enabled", True)
        cfg = None if augment is None else {k: v for k, v in augment.items() if k != "enabled"}
        self.augmenter = DomainGapAugment(cfg, seed) if enabled else None
        self.train_sources: list[Source] = []
        self.val_sources: list[Source] = []
        self._train_idx: list[np.ndarray] = []
        self._val_idx: list[np.ndarray] = []
        self._epoch_counter = 0
        self._epoch: int | None = None
        self._counts: Counter = Counter()
        self._skips: Counter = Counter()
        self._skip_examples: list[dict[str, str]] = []
        self.history: list[dict[str, Any]] = []
        self._aug_step = 0

    # ---- sources ------------------------------------------------------------------------------------------------
    def _default_views(self) -> int:
        return self.rig.num_views if self.stage == "diffusion" else self.hparams.num_views

    def _build(self, cfgs: list[dict]) -> list[Source]:
        names = [c.get("name") for c in cfgs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return [build_source(c, self.rig, self._default_views(), self.hparams.image_size) for c in cfgs]

    def setup(self, stage: str | None = None) -> None:
        if self.train_sources:
            return
        self.train_sources = self._build(self.hparams.sources or DEMO_SOURCES)
        if self.hparams.val_sources:
            self.val_sources = self._build(self.hparams.val_sources)
            self._train_idx = [np.arange(len(s)) for s in self.train_sources]
            self._val_idx = [np.arange(len(s)) for s in self.val_sources]
        else:
            splits = [held_out_split(len(s), self.hparams.val_fraction) for s in self.train_sources]
            self.val_sources = [s for s, (_, v) in zip(self.train_sources, splits) if len(v)]
            self._train_idx = [t for t, _ in splits]
            self._val_idx = [v for _, v in splits if len(v)]
        for s in self.train_sources:
            log.info("data source %s", s)

    def train_dataset(self) -> MixedSceneDataset:
        self.setup()
        h = self.hparams
        return MixedSceneDataset(self.train_sources, self._train_idx, self.builder, h.samples_per_epoch, h.seed,
                                 h.on_bad_sample)

    def val_dataset(self) -> MixedSceneDataset | None:
        self.setup()
        if not self.val_sources:
            return None
        h = self.hparams
        return MixedSceneDataset(self.val_sources, self._val_idx, self.builder, h.val_samples, h.seed + 1,
                                 h.on_bad_sample)

    def _loader(self, ds: MixedSceneDataset, epoch_fn: Any) -> DataLoader:
        h = self.hparams
        return _EpochLoader(ds, batch_size=h.batch_size, num_workers=h.num_workers, collate_fn=collate_samples,
                            persistent_workers=False, pin_memory=False, epoch_fn=epoch_fn)

    def _next_epoch(self) -> int:
        if self.trainer is not None:
            return int(self.trainer.current_epoch)
        self._epoch_counter += 1
        return self._epoch_counter - 1

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self._next_epoch)

    def val_dataloader(self) -> DataLoader | list:
        ds = self.val_dataset()
        return [] if ds is None else self._loader(ds, lambda: 0)

    # ---- accounting ---------------------------------------------------------------------------------------------
    def _training(self) -> bool:
        return self.trainer is None or bool(self.trainer.training)

    def _account(self, batch: dict[str, Any], skipped: list[dict[str, str]]) -> None:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else self._epoch_counter - 1
        if self._epoch is not None and epoch != self._epoch:
            self.flush_epoch_report()
        self._epoch = epoch
        self._counts.update(batch.get("source", []))
        for s in skipped:
            self._skips[s["source"]] += 1
            if len(self._skip_examples) < 100:
                self._skip_examples.append(s)
            log.warning("skipped bad sample: source %s scene %s: %s", s["source"], s["scene"], s["problem"])

    def source_report(self) -> dict[str, dict[str, Any]]:
        """This epoch so far (this rank): {source: {"kind", "weight", "count", "fraction"}}."""
        total = sum(self._counts.values())
        return {s.name: {"kind": s.kind, "weight": s.weight, "count": self._counts[s.name],
                         "fraction": (self._counts[s.name] / total) if total else 0.0} for s in self.train_sources}

    def skip_report(self) -> dict[str, Any]:
        """Skipped bad samples this epoch so far (this rank): {"total", "per_source": {name: n}, "examples": [...]}."""
        return {"total": sum(self._skips.values()),
                "per_source": {s.name: self._skips[s.name] for s in self.train_sources},
                "examples": list(self._skip_examples)}

    def flush_epoch_report(self) -> dict[str, Any]:
        """Log the finished epoch's realized per-source counts and skips (trainer loggers + python logging), keep it
        in ``history`` and reset the counters."""
        report = {"epoch": self._epoch, "sources": self.source_report(), "skipped": self.skip_report()}
        metrics: dict[str, float] = {"data/skipped_total": float(report["skipped"]["total"])}
        for name, r in report["sources"].items():
            metrics[f"data/{name}/fraction"] = float(r["fraction"])
            metrics[f"data/{name}/count"] = float(r["count"])
            metrics[f"data/{name}/skipped"] = float(report["skipped"]["per_source"][name])
        log.info("data epoch %s: %s", self._epoch, metrics)
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=int(self.trainer.global_step))
        self.history.append(report)
        self._counts, self._skips, self._skip_examples = Counter(), Counter(), []
        return report

    def teardown(self, stage: str | None = None) -> None:
        if self._counts or self._skips:
            self.flush_epoch_report()

    # ---- device-side ------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        skipped = batch.pop("skipped", [])
        training = self._training()
        if training:
            self._account(batch, skipped)
        elif skipped:
            log.warning("validation skipped %d bad samples: %s", len(skipped), skipped[:3])
        if self.augmenter is not None and (training or self.hparams.augment_val):
            rank = int(self.trainer.global_rank) if self.trainer is not None else 0
            step = self._aug_step * 8192 + rank  # deterministic per (seed, batch number, rank)
            self._aug_step += 1
            batch = self.augmenter(batch, self.stage, step)
        return batch


__all__ = ["DEMO_SOURCES", "MultiViewDataModule", "held_out_split"]
