"""Training throughput and a per-rank record of the samples each rank trained on.

- :class:`StepTimer` times optimizer steps after a warm-up and logs ``perf/step_s`` and ``perf/samples_per_s``
  (global: batch size x world size), and the part of each step spent waiting for the next batch (from the end of
  one step to the start of the next: loading, collation, transfer, augmentation) as ``perf/data_wait_s``; it prints
  how long the process took to reach its first training batch (``startup_s``); at the end of fit rank 0 writes
  ``<run>/logs/throughput.json``. A ``data_wait_fraction`` near 0 means the loader keeps up; a
  large one means the run is loader-bound (more workers, shards, smaller images).
- :class:`SampleLedger` appends every training sample's ``(epoch, step, source, scene_id)`` to
  ``<run>/logs/samples_rank<R>.jsonl``, one file per rank: the evidence that DDP ranks trained on disjoint shares
  (``python -m bench.ddp_report`` reads them), and a way to answer "which scenes did step N see".

Both find the run folder through the path resolver (:class:`callbacks.paths.CheckpointPaths`); without it they
write under ``trainer.default_root_dir/logs``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from callbacks.paths import run_log_file
from lightning_modules.metrics import logs_this_step

STARTUP_LINE = "StepTimer: the first training batch (step {step}) starts {seconds:.1f} s after the process started"
_STARTUP = re.compile(r"the first training batch \(step \d+\) starts ([0-9.]+) s after the process started")


def startup_in_log(text: str) -> float | None:
    """The seconds of the last :data:`STARTUP_LINE` in a fit's printed output (a resumed fit prints one more)."""
    found = _STARTUP.findall(text)
    return float(found[-1]) if found else None


def seconds_since_process_start() -> float | None:
    """Seconds since this process started: its start time in ``/proc/self/stat`` against the boot clock (Linux;
    10 ms resolution); None where there is no ``/proc``."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # the fields after the command name
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _batch_size(batch: Any) -> int:
    return int(batch["images"].shape[0]) if isinstance(batch, dict) and "images" in batch else 1


class StepTimer(Callback):
    """Wall time per training step after ``warmup_steps`` (``samples_per_s`` from the median step: robust to the
    occasional checkpoint or validation step), and over the whole window from the end of warm-up to the end of
    the last step (``window_step_s``, ``window_samples_per_s``: CUDA synchronised only at its two ends, everything
    in between counted; the window closes at ``max_steps`` before the final checkpoint is written, or at the end of
    training for a run without ``max_steps``).

    ``sync_cuda``: synchronise at every step end, so that each ``perf/step_s`` is that step's own time. It stops
    the host from queueing the next step while the GPU works; with ``sync_cuda: false`` only the window figure is
    a GPU time.

    ``startup_s``: seconds from the process's start to its first training batch (imports, model, data and its
    pre-rendering, setup; a resumed run's restore too), printed when that batch starts: what a short run on a shared
    machine loses before it trains."""

    def __init__(self, warmup_steps: int = 10, sync_cuda: bool = True):
        self.warmup_steps = int(warmup_steps)
        self.sync_cuda = sync_cuda
        self.step_times: list[float] = []
        self.wait_times: list[float] = []
        self._last: float | None = None
        self._wait: float | None = None
        self._batch = 1
        self._window: tuple[int, float] | None = None  # (global step, time) at the end of warm-up
        self._window_end: tuple[int, float] | None = None
        self.startup_s: float | None = None

    def _now(self, pl_module: pl.LightningModule, sync: bool | None = None) -> float:
        if (self.sync_cuda if sync is None else sync) and pl_module.device.type == "cuda":

            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._wait = None if self._last is None else time.perf_counter() - self._last
        if self._last is None and self.startup_s is None:
            self.startup_s = seconds_since_process_start()
            if self.startup_s is not None:
                rank_zero_info(STARTUP_LINE.format(step=trainer.global_step, seconds=self.startup_s))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self._now(pl_module)
        self._batch = _batch_size(batch)
        if self._window is None and trainer.global_step >= self.warmup_steps:
            self._window = (trainer.global_step, now if self.sync_cuda else self._now(pl_module, sync=True))
        if self._last is not None and trainer.global_step > self.warmup_steps:
            dt = now - self._last
            self.step_times.append(dt)
            if self._wait is not None:
                self.wait_times.append(self._wait)
            if logs_this_step(pl_module):  # every step is timed; the loggers get every log_every_n_steps-th
                if self._wait is not None:
                    pl_module.log("perf/data_wait_s", self._wait, on_step=True, rank_zero_only=True)
                pl_module.log("perf/step_s", dt, on_step=True, rank_zero_only=True)
                pl_module.log("perf/samples_per_s", self._batch * trainer.world_size / dt, on_step=True,
                              rank_zero_only=True)
        self._last = now
        if self._window is not None and 0 < trainer.max_steps <= trainer.global_step:
            # the last step: close the window before ModelCheckpoint (always the last callback) saves
            self._window_end = (trainer.global_step, self._now(pl_module, sync=True))

    def summary(self, trainer: pl.Trainer) -> dict[str, Any]:
        times, waits = self.step_times, self.wait_times
        med = statistics.median(times) if times else float("nan")
        wait = statistics.median(waits) if waits else None
        window_step_s = None
        if self._window is not None and self._window_end is not None and self._window_end[0] > self._window[0]:
            window_step_s = (self._window_end[1] - self._window[1]) / (self._window_end[0] - self._window[0])
        global_batch = self._batch * trainer.world_size
        return {"world_size": trainer.world_size, "batch_per_rank": self._batch,
                "global_batch": global_batch, "timed_steps": len(times),
                "step_s_median": med, "samples_per_s": global_batch / med if times else None,
                "window_step_s": window_step_s,
                "window_samples_per_s": global_batch / window_step_s if window_step_s else None,
                "data_wait_s_median": wait, "data_wait_fraction": wait / med if times and waits else None,
                "startup_s": self.startup_s, "global_step": trainer.global_step}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._window is not None and self._window_end is None:
            self._window_end = (trainer.global_step, self._now(pl_module, sync=True))
        if trainer.is_global_zero and not trainer.fast_dev_run:  # a smoke run writes nothing
            path = run_log_file(trainer, "throughput.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.summary(trainer)) + "\n")


class SampleLedger(Callback):
    """Write each rank's training samples to ``<run>/logs/samples_rank<R>.jsonl`` (appended; flushed per epoch)."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not isinstance(batch, dict) or "scene_id" not in batch:
            return
        sources = batch.get("source", [None] * len(batch["scene_id"]))
        for scene, source in zip(batch["scene_id"], sources):
            self._rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "source": source,
                               "scene_id": scene})

    def _flush(self, trainer: pl.Trainer) -> None:
        if not self._rows:
            return
        path = run_log_file(trainer, f"samples_rank{trainer.global_rank}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in self._rows)
        self._rows.clear()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
