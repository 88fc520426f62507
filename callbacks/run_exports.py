"""What a run writes besides Lightning's own checkpoints: export folders and the final state.

:class:`RunExports` decides when a run exports (every ``export_every_n_steps`` optimizer steps and at the end of fit)
and writes ``export/step_<N>/`` through ``pl_module.export(dir, ema_weights=...)`` on rank 0, built under a temporary
name and renamed into place when complete (``geometry.files.atomic_directory``); the EMA callback's weights go
with it. :class:`FinalCheckpoint` writes ``last.ckpt`` for the step where training stopped when no ModelCheckpoint
saves that step itself. Both are driven by the path resolver (``callbacks.paths.CheckpointPaths``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.ema import EMA
from callbacks.run_layout import RunPaths
from geometry.files import atomic_directory

log = logging.getLogger("mvlift.checkpoints")


class RunExports:
    """When and how a run exports (see module docstring)."""

    def __init__(self, every_n_steps: int | None = None, on_fit_end: bool = True):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"export_every_n_steps must be >= 1 or None, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.on_fit_end = on_fit_end
        self.last_step: int | None = None

    def due(self, step: int) -> bool:
        """Whether the periodic schedule exports at optimizer step ``step`` (not twice for one step)."""
        n = self.every_n_steps
        return bool(n) and step > 0 and step % n == 0 and step != self.last_step

    def due_at_fit_end(self, step: int) -> bool:
        return self.on_fit_end and step != self.last_step

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, paths: RunPaths) -> Path | None:
        """``pl_module.export(export/step_<global_step>, ema_weights=...)`` on rank 0 (collective: every rank runs
        the module's ``on_before_export`` first). Returns the folder (None on other ranks / without export)."""
        step = trainer.global_step
        self.last_step = step
        if hasattr(pl_module, "on_before_export"):  # collective work (e.g. merging per-rank records): every rank
            pl_module.on_before_export()
        if not trainer.is_global_zero:
            return None
        if not hasattr(pl_module, "export"):
            log.warning("%s has no export(); nothing exported", type(pl_module).__name__)
            return None
        target = paths.export_dir(step)
        ema_weights = ema_weights_of(trainer)
        with atomic_directory(target) as tmp:
            pl_module.export(tmp, ema_weights=ema_weights)
        log.info("exported step %d to %s", step, target)
        return target


class FinalCheckpoint:
    """``last.ckpt`` at the step where training stopped (``max_steps``, ``max_time``, early stopping)."""

    def __init__(self) -> None:
        self.step: int | None = None  # the step last written

    def save(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` for every ModelCheckpoint that keeps one but would not save this step itself (e.g.
        ``every_n_train_steps=100`` and ``max_steps=150``), so ``--resume auto`` with a larger ``max_steps``
        continues from the step where training stopped. Written from the same hook, with the same loop state, as
        ModelCheckpoint's own step checkpoints (collective: every rank calls it)."""
        step = self.step = trainer.global_step
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb.dirpath is None:
                continue
            every = getattr(cb, "_every_n_train_steps", 0) or 0
            if every and step % every == 0:
                continue  # ModelCheckpoint saves this step (and last.ckpt with it)
            path = os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            trainer.save_checkpoint(path, weights_only=False)  # the full training state, said so
            cb.last_model_path = path
            log.info("saved the final state (step %d) to %s", step, path)


def ema_weights_of(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The EMA callback's weights, when the trainer has one."""
    for cb in trainer.callbacks:
        if isinstance(cb, EMA):
            return cb.ema_state_dict()
    return None


__all__ = ["FinalCheckpoint", "RunExports", "ema_weights_of"]
