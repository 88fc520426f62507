"""The checkpoint path resolver: the one callback a run's config names (``run:`` in tools.fit) for its folder.

:class:`CheckpointPaths` decides the run folder and drives the run-folder pieces, each in its own module:

- layout (:mod:`callbacks.run_layout`): :class:`RunPaths`, every path of ``<root>/<experiment>/<run>/``, resolved
  idempotently (no ``checkpoints/checkpoints/``), and the root checks;
- identity (:mod:`callbacks.run_identity`): the config hash in ``run.json``, ``--resume auto``'s matching run, the
  refusal of a folder of another config (naming the differing keys) or with checkpoints when not resuming;
- exports (:mod:`callbacks.run_exports`): ``export/step_<N>/`` every ``export_every_n_steps`` and at the end of fit,
  each written after step N's validation when one runs at N (so the model card carries its metrics), and
  ``last.ckpt`` at the step where training stopped.

It points every ModelCheckpoint at ``checkpoints/`` and writes ``run.json``. Only rank 0 writes; the run name is
decided once (argument, ``$MVLIFT_RUN``, or a timestamp exported to ``$MVLIFT_RUN`` for the DDP children) and
broadcast from rank 0 in ``setup``.

Example:
    >>> cb = CheckpointPaths(root="runs", experiment="demo", run="r1", export_every_n_steps=100)
    >>> cb.exports.due(200), cb.exports.due(150)
    (True, False)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.run_exports import FinalCheckpoint, RunExports
from callbacks.run_identity import (
    check_identity,
    check_no_checkpoints,
    find_matching_run,
    run_identity,
    run_record,
)
from callbacks.run_layout import RunPaths, check_checkpoint_filename, check_name, check_root, new_run_name
from geometry.files import remove_stale_temporaries

log = logging.getLogger("mvlift.checkpoints")

RUN_ENV = "MVLIFT_RUN"


def _is_launched_child() -> bool:
    """True in a process started by a launcher for a non-zero rank (Lightning DDP child, torchrun worker)."""
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        if int(os.environ.get(var, "0") or 0) > 0:
            return True
    return False


class CheckpointPaths(Callback):
    """Owns every path a run writes (see module docstring).

    Args:
        root: folder holding all experiments.
        experiment: experiment folder name.
        run: run folder name; None = ``$MVLIFT_RUN``, else (``resume="auto"``) the newest run with the same config
            and a checkpoint, else a new timestamp name.
        resume: "auto" = continue from the newest complete checkpoint of the run (see :meth:`resume_checkpoint`);
            "never" / None = start fresh (a run folder that already holds checkpoints is then an error).
        export_every_n_steps: call ``pl_module.export(export/step_<N>, ema_weights=...)`` every N optimizer steps
            (None = only at the end of fit).
        export_on_fit_end: export once more when fit ends.
        save_last: make ModelCheckpoints without their own setting keep ``last.ckpt``.

    Under ``fast_dev_run`` (a smoke run) nothing is checkpointed or exported: no ``last.ckpt`` (also not the one
    Lightning's ModelCheckpoint writes at the end of training), no ``export/``.
    """

    def __init__(
        self,
        root: str = "runs",
        experiment: str = "default",
        run: str | None = None,
        resume: str | None = None,
        export_every_n_steps: int | None = None,
        export_on_fit_end: bool = True,
        save_last: bool = True,
    ):
        super().__init__()
        if resume not in (None, "auto", "never"):
            raise ValueError(f"resume must be 'auto', 'never' or None, got {resume!r}")
        self.root = root
        self.experiment = check_name("experiment", experiment)
        self.run = check_name("run", run) if run is not None else None
        self.resume = resume
        self.save_last = save_last
        self.exports = RunExports(export_every_n_steps, export_on_fit_end)
        self.final_checkpoint = FinalCheckpoint()
        self._pending_export: int | None = None  # an export due at this step, written after its validation
        self._paths: RunPaths | None = None
        self._identity: dict[str, Any] | None = None
        self._before: dict[str, Any] | None = None  # the run folder before this invocation (note_invocation_start)

    @property
    def paths(self) -> RunPaths:
        if self._paths is None:
            raise RuntimeError("CheckpointPaths: run paths are decided in setup() or by decide(); call it first")
        return self._paths

    # ---- deciding the run -----------------------------------------------------------------------------------------
    def decide(self, pl_module: pl.LightningModule, datamodule: Any = None) -> RunPaths:
        """Decide (once) the run folder for ``pl_module``/``datamodule`` and export its name as ``$MVLIFT_RUN``."""
        if self._paths is not None:
            return self._paths
        self._identity = run_identity(pl_module, datamodule)
        experiment_dir = RunPaths(self.root, self.experiment, "x").experiment_dir
        name = self.run or (os.environ.get(RUN_ENV) if _is_launched_child() else None)
        if name is None and self.resume == "auto":
            name = find_matching_run(experiment_dir, self._identity["config_hash"])
        if name is None:
            name = new_run_name(experiment_dir)
        paths = RunPaths(self.root, self.experiment, name)
        check_root(paths)
        self._paths = paths
        os.environ[RUN_ENV] = self._paths.run  # Lightning's DDP children inherit the decision
        return self._paths

    def resume_checkpoint(self, pl_module: pl.LightningModule | None = None, datamodule: Any = None) -> str | None:
        """With ``resume="auto"``: the newest complete checkpoint of the run (None when it has none yet)."""
        if self._paths is None:
            if pl_module is None:
                raise RuntimeError("resume_checkpoint needs pl_module before the run is decided")
            self.decide(pl_module, datamodule)
        if self.resume != "auto":
            return None
        for bad in self.paths.incomplete_checkpoints():
            log.warning("resume auto: skipped %s: not a complete checkpoint (cut short or corrupt)", bad)
        latest = self.paths.latest_checkpoint()
        return str(latest) if latest else None

    # ---- Lightning hooks ------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        paths = self.decide(pl_module, trainer.datamodule)
        name = trainer.strategy.broadcast(paths.run, src=0)
        if name != paths.run:  # e.g. nodes that made their own timestamp: rank 0 decides
            self._paths = paths = RunPaths(paths.root, paths.experiment, name)
        if stage == "fit":
            self._check_identity(paths)
            if trainer.is_global_zero:
                self._prepare_run_dir(paths)
        trainer.strategy.barrier("mvlift_run_dir")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                self.configure_checkpoint(cb)
                if trainer.fast_dev_run:  # Lightning 2.6's ModelCheckpoint.on_train_end writes last.ckpt even then
                    cb.save_last = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_no_checkpoints(self.paths, self.resume == "auto" or trainer.ckpt_path is not None)

    def _check_identity(self, paths: RunPaths) -> None:
        assert self._identity is not None
        check_identity(paths, self._identity)

    def check_before_writing(self, resuming: bool) -> RunPaths:
        """Every refusal of a run, before anything is written into its folder (tools.fit calls it before the loggers
        and the config copy exist): the run folder of another config (naming the differing keys), and checkpoints
        already there when not ``resuming``. Needs :meth:`decide` first."""
        paths = self.paths
        self._check_identity(paths)
        check_no_checkpoints(paths, resuming)
        return paths

    # ---- a failed invocation leaves the run folder as it found it ------------------------------------------------
    def _saved_outputs(self) -> set[tuple[str, int]]:
        paths = self.paths
        return ({(str(p), p.stat().st_mtime_ns) for p in paths.checkpoints()}
                | {(str(p), 0) for p in paths.exports().values()})

    def note_invocation_start(self) -> None:
        """Remember the run folder as it is before this invocation writes anything into it (tools.fit, after the
        refusals): the folders it will create and the files already there, for :meth:`discard_failed_invocation`."""
        paths = self.paths
        self._before = {"created": [d for d in (paths.run_dir, paths.experiment_dir, paths.root) if not d.exists()],
                        "entries": set(paths.run_dir.rglob("*")) if paths.run_dir.is_dir() else set(),
                        "outputs": self._saved_outputs()}

    def discard_failed_invocation(self) -> list[Path]:
        """After a fit that raised (a crash, a refusal at setup, an interrupt): unless it wrote a checkpoint or an
        export to continue from, remove what it wrote — a new run folder whole (``run.json``, logs, config copy,
        empty folders, which would make the fixed re-run be refused as another config), in an existing one the files
        and folders it added — and the experiment and root folders it created when they are empty. Rank 0 calls it;
        returns what was removed."""
        before, self._before = self._before, None
        if before is None or self._saved_outputs() - before["outputs"]:
            return []
        paths = self.paths
        removed: list[Path] = []
        if paths.run_dir in before["created"]:
            if paths.run_dir.exists():
                shutil.rmtree(paths.run_dir, ignore_errors=True)
                removed.append(paths.run_dir)
        elif paths.run_dir.is_dir():
            added = set(paths.run_dir.rglob("*")) - before["entries"]
            for p in sorted(added, key=lambda q: len(q.parts), reverse=True):  # deepest first
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        for folder in before["created"][1:]:  # the experiment folder, then the root: only when left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        return removed

    def _prepare_run_dir(self, paths: RunPaths) -> None:
        paths.create()
        for removed in remove_stale_temporaries(paths.checkpoint_dir) + remove_stale_temporaries(paths.export_root):
            log.warning("removed %s: left by an interrupted save", removed)
        if paths.read_run_info() is None:
            assert self._identity is not None
            paths.write_run_info(run_record(self._identity, paths, time.strftime("%Y-%m-%dT%H:%M:%S")))

    def configure_checkpoint(self, cb: ModelCheckpoint) -> None:
        """Point a ModelCheckpoint at the run's checkpoints/ (a dirpath it already has is resolved, idempotently)."""
        paths = self.paths
        check_checkpoint_filename(cb.filename)
        cb.dirpath = str(paths.resolve(cb.dirpath, "checkpoints") if cb.dirpath else paths.checkpoint_dir)
        if cb.save_last is None and self.save_last:
            cb.save_last = True

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Flush the loggers before the checkpoint is written, so a run killed during the save keeps every row logged
        so far. (Lightning 2.6 already writes the CSV after each logged row; this keeps the guarantee for a logger
        that buffers. The saved step's own row is logged after the save; a kill during the save loses it together
        with the checkpoint, and the resumed run logs it again.)"""
        _flush_loggers(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fast_dev_run:  # a smoke run: no checkpoint, no export (Lightning's own ModelCheckpoint agrees)
            return
        step = trainer.global_step
        self._export_pending(trainer, pl_module)  # a step without validation after it
        if self.exports.due(step):  # written after this step's validation, if one runs, so its card has the metrics
            self._pending_export = step
        if 0 < trainer.max_steps <= step:
            self.save_final_checkpoint(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._export_pending(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._export_pending(trainer, pl_module)

    def _export_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The export due at the step just trained (``on_train_batch_end``), written once that step's validation (if
        any) has run: at its end, or at the next batch's start, or at the end of training."""
        if self._pending_export is not None and self._pending_export == trainer.global_step:
            self._pending_export = None
            self.export(trainer, pl_module)
        self._pending_export = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run stopped before ``max_steps`` (``max_time``, early stopping, ``should_stop``) keeps its last steps too:
        ``last.ckpt`` is the step training stopped at, not the last periodic checkpoint before it. An export still
        due is written (:meth:`_export_pending`)."""
        if not trainer.fast_dev_run:
            self._export_pending(trainer, pl_module)
        if trainer.global_step > 0 and trainer.global_step != self.final_checkpoint.step and not trainer.fast_dev_run:
            self.save_final_checkpoint(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A run stopped by SIGTERM (a scheduler's preemption, a job's deadline: Lightning stops at the end of the
        step it is in and raises SIGTERMException) keeps that step: ``last.ckpt`` is written there, so ``--resume
        auto`` continues it exactly instead of from the last periodic checkpoint. Stopped during a validation of the
        fit (Lightning stops it after the batch it is in), ``last.ckpt`` holds the step that validation follows; the
        resumed run trains on from there without repeating the validation, so that step has no validation metrics.
        A crash or an interrupt mid-step leaves the checkpoints as they are."""
        in_fit = trainer.training or (trainer.validating and trainer.state.fn == TrainerFn.FITTING
                                      and not trainer.sanity_checking)
        if (isinstance(exception, SIGTERMException) and in_fit and trainer.global_step > 0
                and trainer.global_step != self.final_checkpoint.step and not trainer.fast_dev_run):
            self.save_final_checkpoint(trainer)
            log.warning("stopped by SIGTERM at step %d: saved it as last.ckpt (--resume auto continues from it)",
                        trainer.global_step)

    def save_final_checkpoint(self, trainer: pl.Trainer) -> None:
        """``last.ckpt`` at the step where training stopped (:class:`callbacks.run_exports.FinalCheckpoint`)."""
        self.final_checkpoint.save(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.exports.due_at_fit_end(trainer.global_step) and not trainer.fast_dev_run:
            self.export(trainer, pl_module)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Export the module into this run's ``export/step_<global_step>`` (:class:`callbacks.run_exports.RunExports`)."""
        return self.exports.export(trainer, pl_module, self.paths)

    def state_dict(self) -> dict[str, Any]:
        last = self._pending_export if self._pending_export is not None else self.exports.last_step  # written next
        return {"run": self._paths.run if self._paths else self.run, "last_export_step": last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exports.last_step = state_dict.get("last_export_step")


def _flush_loggers(trainer: pl.Trainer) -> None:
    for logger in trainer.loggers:
        try:
            logger.save()  # rank-zero only in Lightning's loggers
        except OSError as e:  # a logger that cannot flush must not cost the checkpoint
            log.warning("could not flush logger %s before a checkpoint save: %s", type(logger).__name__, e)


def run_paths(trainer: pl.Trainer) -> RunPaths | None:
    """The run folder the trainer's path resolver decided; None without a resolver or before it decided."""
    for cb in trainer.callbacks:
        if isinstance(cb, CheckpointPaths) and cb._paths is not None:
            return cb._paths
    return None


def run_log_file(trainer: pl.Trainer, name: str) -> Path:
    """``<run>/logs/<name>`` through the path resolver (``default_root_dir/logs/<name>`` without one): where
    callbacks write their files (throughput, sample ledgers, profiles, image grids)."""
    paths = run_paths(trainer)
    return paths.resolve(name, under="logs") if paths is not None else Path(trainer.default_root_dir) / "logs" / name


__all__ = ["RUN_ENV", "CheckpointPaths", "run_log_file", "run_paths"]
