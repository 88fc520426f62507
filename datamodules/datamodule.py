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

import dataclasses
import functools
import logging
import zlib
from collections import Counter
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.augment import DomainGapAugment
from datamodules.dataset import MixedSceneDataset, SceneBuilder, collate_samples
from datamodules.mixing import rank_and_world
from datamodules.sources import Source, build_source
from datamodules.views import INPUT_VIEW_MODES, REFERENCE_MODES
from geometry.rig import load_rig

log = logging.getLogger("mvlift.data")

STATE_VERSION = 1
VAL_AUG_STEPS = 1 << 40  # validation augmentation steps live above every training step

DEMO_SOURCES = [
    {"name": "synthetic", "kind": "synthetic", "format": "procedural", "weight": 0.7, "num_scenes": 1000},
    {"name": "realistic", "kind": "synthetic", "format": "procedural", "realistic": True, "weight": 0.3,
     "num_scenes": 1000, "seed": 1},
]


class _MixingLoader(DataLoader):
    """A DataLoader over a MixedSceneDataset's MixingSampler.

    Its position (epoch, draws consumed) is part of the DataModule's ``state_dict``, not of this loader's: Lightning
    restores DataModule state before the loader exists, and only the DataModule sees which batches the training loop
    took (``on_after_batch_transfer``). ``state_dict`` / ``load_state_dict`` here are empty on purpose: they tell
    Lightning the loader is resumable, so a mid-epoch resume does not warn that it is not.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def held_out_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) scene indices: the last max(1, round(n * fraction)) scenes are held out (none when n < 2)."""
    n_val = 0 if n < 2 or fraction <= 0 else min(n - 1, max(1, round(n * fraction)))
    return np.arange(n - n_val), np.arange(n - n_val, n)


class MultiViewDataModule(L.LightningDataModule):
    """Mixed real + synthetic multi-view scenes for the ``diffusion`` or ``reconstruction`` stage.

    Constructor arguments are plain types (LightningCLI / YAML; ``python -m tools.fit --data.help
    datamodules.MultiViewDataModule`` prints these descriptions).

    Args:
        stage: "diffusion" | "reconstruction".
        rig: rig name or path (the stage's cameras).
        sources: list of source dicts (datamodules.sources docstring); default: the procedural demo 0.7 / 0.3.
        val_sources: same shape; default: a held-out tail (``val_fraction``) of each training source.
        val_fraction: the share of each training source's scenes held out for validation when val_sources is None.
        image_size: square output size.
        num_views: reconstruction views per scene.
        num_input_views: reconstruction input views per scene.
        supervise_inputs: reconstruction's view overlap: training supervision views include the inputs (FaceLift's
            GS-LRM trains so; the samples carry ``supervise_all_views``), validation still scores only the views
            that are not inputs. False: num_views must exceed num_input_views.
        input_views: reconstruction's inputs: "random" (any ``num_input_views`` of the scene's views) or "spread"
            (farthest-point sampling of the cameras' viewing directions from a random first view, so the inputs see
            the subject from all round, like a rig's views; ``datamodules.views``); the supervision views are random.
        reference_view: "fixed" | "random" | "random_rig" for diffusion.
        reference_index: the reference view with ``reference_view: fixed``.
        rig_tolerance_deg: diffusion's data-vs-rig camera check (degrees): at ``setup`` a source whose
            cameras cannot match the rig is refused (``SourceRigError``, naming the source, view and angle;
            ``SceneBuilder.check_source_rig``), and each drawn scene is checked again (a bad sample).
        rig_distance_tolerance: the same check's tolerance on camera distances (world units).
        normalize_cameras: centre at the rays' intersection, mean distance to target_radius.
        target_radius: the mean camera distance normalize_cameras makes.
        center_crop: crop every view with view 0's alpha box so the object is ~center_fill of the frame.
        center_fill: the object's share of the frame after center_crop.
        on_bad_sample: "raise" | "skip" (skips are counted per source: ``skip_report()``).
        augment: per-kind domain-gap ops (datamodules.augment docstring); None = defaults; {"enabled": False} = off.
            A source's own ``augment:`` ops replace its kind's for its scenes.
        augment_val: augment validation inputs too, the same inputs every validation pass (the training draws and
            steps are not touched).
        augment_on: "loader" (default): each sample in the DataLoader's workers, seeded by its draw (a draw gets
            the same ops whatever the world size, batch size or worker count); "device": each batch after its copy
            to the device, seeded by the training step and rank (datamodules.augment docstring: which costs what).
        batch_size: scenes per batch (per rank).
        num_workers: DataLoader worker processes.
        samples_per_epoch: draws per epoch, all ranks.
        val_samples: validation draws.
        seed: the draws' seed.
        persistent_workers: keep the loader's worker processes between epochs (with num_workers > 0). Safe: the
            sampler runs in the main process and every key it hands the workers carries its epoch, so no per-epoch
            state has to reach the workers.
        pin_memory: page-locked batches when CUDA is available, so the copy to the GPU runs asynchronously
            (Lightning moves batches with ``non_blocking=True``) instead of stalling the host at every step.

    Resume (``state_dict`` / ``load_state_dict``, saved by Lightning in every checkpoint under this class's name):
    the training position = (epoch, draws of this rank's share of that epoch the training loop has consumed) and
    the augmentation step counter. Consumption is counted in ``on_after_batch_transfer`` (main process, once per
    batch the training loop takes: neither worker-side nor loader prefetching counts); under DDP every rank takes
    the same number of draws, so rank 0's position (the one in the checkpoint) is every rank's. After
    ``load_state_dict`` the next training pass starts at that draw, so a run resumed from a mid-epoch checkpoint sees
    exactly the batches, and the augmentation exactly the random ops, of the uninterrupted run (also with workers:
    batches do not depend on ``num_workers``). Every later pass continues the data stream at the draw after the last
    one taken (the next epoch once one is used up), whatever Lightning's own epoch count says: resumed from an
    end-of-epoch checkpoint that max_steps cut short, Lightning ends its next epoch early, and the draws still follow
    the uninterrupted run. The position is in draws, not batches; a different world size or
    ``samples_per_epoch`` changes the epoch's draws (resume then continues at the same fraction of the global epoch,
    with a warning). Only the data side: Lightning does not checkpoint the global torch RNG, so a model that draws
    random numbers from it (noise, timesteps, dropout) needs its own seeding to resume exactly.
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
        input_views: str = "random",
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
        augment_on: str = "loader",
        batch_size: int = 2,
        num_workers: int = 2,
        samples_per_epoch: int = 1000,
        val_samples: int = 16,
        seed: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if reference_view not in REFERENCE_MODES:
            raise ValueError(f"reference_view must be one of {REFERENCE_MODES}, got {reference_view!r}")
        if input_views not in INPUT_VIEW_MODES:
            raise ValueError(f"input_views must be one of {INPUT_VIEW_MODES}, got {input_views!r}")
        if augment_on not in ("loader", "device"):
            raise ValueError(f"augment_on must be 'loader' or 'device', got {augment_on!r}")
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
                                    target_radius, center_crop, center_fill, supervise_inputs, input_views)
        enabled = augment is None or augment.get("enabled", True)
        cfg = None if augment is None else {k: v for k, v in augment.items() if k != "enabled"}
        self.augmenter = DomainGapAugment(cfg, seed) if enabled else None
        self.train_sources: list[Source] = []
        self.val_sources: list[Source] = []
        self._train_idx: list[np.ndarray] = []
        self._val_idx: list[np.ndarray] = []
        self._pass: list[int] | None = None  # [epoch, first draw] of the current training pass
        self._consumed = 0  # draws of the current pass the training loop has taken
        self._resume: dict[str, Any] | None = None  # position from load_state_dict, until a batch is taken
        self._epoch: int | None = None
        self._counts: Counter = Counter()
        self._skips: Counter = Counter()
        self._skip_reasons: Counter = Counter()  # SampleError.reason: bad_sample, empty_mask, ...
        self._skip_examples: list[dict[str, str]] = []
        self.history: list[dict[str, Any]] = []
        self._aug_step = 0

    # ---- sources ------------------------------------------------------------------------------------------------
    def _default_views(self) -> int:
        return self.rig.num_views if self.stage == "diffusion" else self.hparams.num_views

    def _build(self, cfgs: list[dict], key: str = "sources") -> list[Source]:
        if not isinstance(cfgs, (list, tuple)) or not all(isinstance(c, dict) for c in cfgs):
            raise ValueError(f"{key} must be a list of source mappings (YAML: '- {{name: ..., kind: ..., "
                             f"format: ...}}' per source), got {type(cfgs).__name__}: {cfgs!r}"[:400])
        names = [c.get("name") for c in cfgs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return [build_source(c, self.rig, self._default_views(), self.hparams.image_size) for c in cfgs]

    def setup(self, stage: str | None = None) -> None:
        if self.train_sources:
            return
        self.train_sources = self._build(self.hparams.sources or DEMO_SOURCES)
        if self.hparams.val_sources:
            self.val_sources = self._build(self.hparams.val_sources, "val_sources")
            self._train_idx = [np.arange(len(s)) for s in self.train_sources]
            self._val_idx = [np.arange(len(s)) for s in self.val_sources]
        else:
            splits = [held_out_split(len(s), self.hparams.val_fraction) for s in self.train_sources]
            self.val_sources = [s for s, (_, v) in zip(self.train_sources, splits) if len(v)]
            self._train_idx = [t for t, _ in splits]
            self._val_idx = [v for _, v in splits if len(v)]
        for s in self.train_sources + self.val_sources:  # refused here, never at the first draw
            self.builder.check_source_rig(s)
        own = {}  # per-source augment overrides, by source name (batch["source"])
        for s in self.train_sources + self.val_sources:
            if s.augment is not None and own.setdefault(s.name, s.augment) != s.augment:
                raise ValueError(f"source {s.name!r}: training and validation sources of this name have different "
                                 "augment ops")
        if self.augmenter is not None and own:
            self.augmenter.set_source_ops(own)
        for s in self.train_sources:
            log.info("data source %s", s)

    def _sample_augment(self, wanted: bool) -> Any:
        """The per-sample augmentation a dataset applies in the loader (augment_on: loader), or None."""
        if self.augmenter is None or not wanted or self.hparams.augment_on != "loader":
            return None
        return functools.partial(self.augmenter.augment_sample, stage=self.stage)

    def train_dataset(self) -> MixedSceneDataset:
        self.setup()
        h = self.hparams
        return MixedSceneDataset(self.train_sources, self._train_idx, self.builder, h.samples_per_epoch, h.seed,
                                 h.on_bad_sample, augment=self._sample_augment(True))

    def val_dataset(self) -> MixedSceneDataset | None:
        self.setup()
        if not self.val_sources:
            return None
        h = self.hparams
        held_out = dataclasses.replace(self.builder, supervise_inputs=False)  # validation scores unseen views only
        return MixedSceneDataset(self.val_sources, self._val_idx, held_out, h.val_samples, h.seed + 1,
                                 h.on_bad_sample, augment=self._sample_augment(bool(h.augment_val)))

    def _loader(self, ds: MixedSceneDataset, sampler: Any) -> DataLoader:
        h = self.hparams
        return _MixingLoader(ds, batch_size=h.batch_size, sampler=sampler, num_workers=h.num_workers,
                             collate_fn=collate_samples,
                             pin_memory=bool(h.pin_memory) and torch.cuda.is_available(),
                             persistent_workers=bool(h.persistent_workers) and h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        return self._loader(ds, ds.sampler(shuffle=True, start_fn=self._start_pass))

    def val_dataloader(self) -> DataLoader | list:
        ds = self.val_dataset()
        return [] if ds is None else self._loader(ds, ds.sampler(shuffle=False, start_fn=lambda n: (0, 0)))

    # ---- position (resume) ----------------------------------------------------------------------------------------
    def _start_pass(self, n: int) -> tuple[int, int]:
        """(epoch, first draw) of a training pass over ``n`` draws per rank (the train sampler calls it on iter)."""
        if self._resume is not None:  # kept until a batch is taken: Lightning may call iter() twice on resume
            epoch, start = self._resumed_position()
        elif self._pass is not None:
            # the data stream continues at the draw after the last one the training loop took. Lightning's own epoch
            # count can run ahead of the data's: resumed from a checkpoint written at an epoch's end after
            # max_steps stopped it early, Lightning counts that epoch as complete and ends its next one early; the
            # draws follow the uninterrupted run all the same
            epoch, start = self._pass[0], self._pass[1] + self._consumed
        else:  # the first pass
            epoch, start = self._trainer_epoch(), 0
        if start >= n:  # the checkpoint was taken after the epoch's last batch
            epoch, start = epoch + 1, 0
        self._pass, self._consumed = [epoch, start], 0
        return epoch, start

    def _trainer_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def _resumed_position(self) -> tuple[int, int]:
        assert self._resume is not None
        r, h, world = self._resume, self.hparams, rank_and_world()[1]
        saved = {"world_size": r.get("world_size", world), "samples_per_epoch": r.get("samples_per_epoch"),
                 "seed": r.get("seed")}
        now = {"world_size": world, "samples_per_epoch": h.samples_per_epoch, "seed": h.seed}
        epoch, start = int(r["epoch"]), int(r["samples"])
        if any(saved[k] is not None and saved[k] != now[k] for k in now):
            start = start * int(saved["world_size"]) // world
            if not r.get("warned"):
                log.warning("resume: the data position was saved with %s, this run has %s: continuing epoch %d at "
                            "draw %d of this rank, not exactly where the saved run was", saved, now, epoch, start)
                r["warned"] = True
        return epoch, start

    def data_position(self) -> tuple[int, int]:
        """(epoch, draws of this rank's share of it the training loop has taken)."""
        if self._resume is not None:
            return int(self._resume["epoch"]), int(self._resume["samples"])
        if self._pass is None:
            return self._trainer_epoch(), 0
        return self._pass[0], self._pass[1] + self._consumed

    def state_dict(self) -> dict[str, Any]:
        """Training position, augmentation step and this epoch's per-source counts (class docstring: Resume)."""
        epoch, samples = self.data_position()
        h = self.hparams
        world = int(self._resume["world_size"]) if self._resume is not None else rank_and_world()[1]
        return {"version": STATE_VERSION, "epoch": epoch, "samples": samples, "world_size": world,
                "batch_size": h.batch_size, "samples_per_epoch": h.samples_per_epoch, "seed": h.seed,
                "aug_step": self._aug_step,
                "report": {"epoch": self._epoch, "counts": dict(self._counts), "skips": dict(self._skips),
                           "skip_reasons": dict(self._skip_reasons), "skip_examples": list(self._skip_examples)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            log.warning("resume: unknown data state version %r, starting the data from its beginning",
                        state_dict.get("version"))
            return
        self._resume = {k: state_dict.get(k) for k in ("epoch", "samples", "world_size", "samples_per_epoch", "seed")}
        self._aug_step = int(state_dict.get("aug_step", 0))
        report = state_dict.get("report") or {}
        self._epoch = report.get("epoch")
        self._counts, self._skips = Counter(report.get("counts", {})), Counter(report.get("skips", {}))
        self._skip_reasons = Counter(report.get("skip_reasons", {}))
        self._skip_examples = list(report.get("skip_examples", []))

    # ---- accounting ---------------------------------------------------------------------------------------------
    def _training(self) -> bool:
        return self.trainer is None or bool(self.trainer.training)

    def _account(self, batch: dict[str, Any], skipped: list[dict[str, str]]) -> None:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else self.data_position()[0]
        if self._epoch is not None and epoch != self._epoch:
            self.flush_epoch_report()
        self._epoch = epoch
        self._counts.update(batch.get("source", []))
        for s in skipped:
            self._skips[s["source"]] += 1
            self._skip_reasons[s.get("reason", "bad_sample")] += 1
            if len(self._skip_examples) < 100:
                self._skip_examples.append(s)
            log.warning("skipped bad sample: source %s scene %s: %s", s["source"], s["scene"], s["problem"])

    def source_report(self) -> dict[str, dict[str, Any]]:
        """This epoch so far (this rank): {source: {"kind" (the samples' kind), "weight", "count", "fraction"}}."""
        total = sum(self._counts.values())
        return {s.name: {"kind": s.sample_kind, "weight": s.weight, "count": self._counts[s.name],
                         "fraction": (self._counts[s.name] / total) if total else 0.0} for s in self.train_sources}

    def skip_report(self) -> dict[str, Any]:
        """Skipped bad samples this epoch so far (this rank): {"total", "per_source": {name: n}, "per_reason":
        {reason: n} (``empty_mask``: every view fully transparent; ``bad_sample``: any other), "examples": [...]}."""
        return {"total": sum(self._skips.values()),
                "per_source": {s.name: self._skips[s.name] for s in self.train_sources},
                "per_reason": dict(sorted(self._skip_reasons.items())),
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
        for reason, n in report["skipped"]["per_reason"].items():
            metrics[f"data/skipped/{reason}"] = float(n)
        log.info("data epoch %s: %s", self._epoch, metrics)
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=int(self.trainer.global_step))
        self.history.append(report)
        self._counts, self._skips, self._skip_examples = Counter(), Counter(), []
        self._skip_reasons = Counter()
        return report

    def teardown(self, stage: str | None = None) -> None:
        if self._counts or self._skips:
            self.flush_epoch_report()

    # ---- device-side ------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        skipped = batch.pop("skipped", [])
        training = self._training()
        if training:
            self._consumed += _batch_len(batch)
            self._resume = None
            self._account(batch, skipped)
        elif skipped:
            log.warning("validation skipped %d bad samples: %s", len(skipped), skipped[:3])
        on_device = self.augmenter is not None and self.hparams.augment_on == "device"
        if on_device and (training or self.hparams.augment_val):
            if training:
                rank = int(self.trainer.global_rank) if self.trainer is not None else 0
                step = self._aug_step * 8192 + rank  # deterministic per (seed, training batch number, rank)
                self._aug_step += 1
            else:  # per the batch's scenes: every validation pass sees the same inputs, training's steps untouched
                names = "|".join(f"{s}/{i}" for s, i in zip(batch.get("source", []), batch.get("scene_id", [])))
                step = VAL_AUG_STEPS + zlib.crc32(names.encode())
            batch = self.augmenter(batch, self.stage, step)
        return batch


def _batch_len(batch: dict[str, Any]) -> int:
    if "source" in batch:
        return len(batch["source"])
    return int(batch["images"].shape[0])


__all__ = ["DEMO_SOURCES", "MultiViewDataModule", "held_out_split"]
