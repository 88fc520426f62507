"""``tools.fit``'s machinery: a LightningCLI (:class:`FitCLI`) with mvlift's run folder (the path resolver
``run:``), checkpointing (``checkpoint:``, atomic writes), loggers (TensorBoard with the hyper-parameters but without
the hp_metric placeholder, CSV with a wall-time column, optional W&B, the learning rate of every parameter group,
throughput by default), the shared settings linked from the data into the model,
the stage / rig check and every refusal before a file is written; the one-line end-of-fit summary and the user-error
formatting. ``tools/fit.py`` is the command line over it (its docstring says what a run does).
"""


from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from typing import Any, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from callbacks.atomic import AtomicCheckpointIO
from callbacks.fit_config import ConfigError, check_fit_config, constructor_error
from callbacks.nonfinite import NonFiniteGuard
from callbacks.paths import CheckpointPaths, run_paths
from callbacks.rig_guard import RigMismatchError, StageMismatchError, check_data_matches_model
from callbacks.run_layout import PathError, RunConflictError, RunPaths, check_checkpoint_filename
from callbacks.throughput import StepTimer
from datamodules.shared_settings import SharedSettingError, link_shared_settings
from lightning_modules.artifacts import CorruptWeightsError, UntrustedCheckpointError, set_trust

log = logging.getLogger("mvlift.fit")

# modules imported so that short class names (``class_path: ReconstructionModule``) resolve
KNOWN_MODULES = ("lightning_modules.reconstruction", "lightning_modules.diffusion", "datamodules")


def import_known_modules() -> None:
    for name in KNOWN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a stage whose optional pieces are missing can still be named by full path
            log.debug("tools.fit: could not import %s (%s)", name, e)


def tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def default_loggers(paths: RunPaths, wandb_project: str | None = None) -> list[Logger]:
    """TensorBoard (``logs/tensorboard``, when installed) + CSV (``logs/csv/version_<k>``) [+ W&B] in the run folder."""
    loggers: list[Logger] = []
    if tensorboard_available():
        loggers.append(HParamsTensorBoardLogger(save_dir=str(paths.log_dir), name="tensorboard", version="",
                                                default_hp_metric=False))  # no "hp_metric = -1" placeholder
    else:
        log.warning("tensorboard is not installed: logging to CSV only (pip install tensorboard)")
    # one version_<k> folder per invocation: Lightning's CSV writer deletes a metrics.csv it finds, which would
    # lose the history of a resumed run (RunPaths.metric_files reads the parts back in order)
    loggers.append(TimedCSVLogger(save_dir=str(paths.log_dir), name="csv"))
    if wandb_project:
        if importlib.util.find_spec("wandb") is None:
            raise SystemExit("--wandb needs the wandb package (pip install wandb)")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=wandb_project, name=f"{paths.experiment}/{paths.run}",
                                   save_dir=str(paths.log_dir)))
    return loggers


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _with_atomic_io(plugins: Any) -> list[Any]:
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, list):
        plugins = [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins = [*plugins, AtomicCheckpointIO()]
    return plugins


def _with_default_callbacks(callbacks: Any, lr_monitor: bool = True) -> list[Any]:
    """The trainer's callbacks plus, unless the config has one of its kind, a LearningRateMonitor (with loggers: every
    logged step, one curve per parameter group, named by the group: ``lr-AdamW/base``, ``lr-AdamW/unet/no_decay``,
    ...) and a :class:`callbacks.throughput.StepTimer` (throughput on by default: ``perf/step_s``,
    ``perf/samples_per_s``, ``perf/data_wait_s`` every logged step after 10 warm-up steps, ``logs/throughput.json``
    at the end; no CUDA synchronisation per step, so it costs the run nothing)."""
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
    if lr_monitor and not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if not any(isinstance(cb, StepTimer) for cb in callbacks):
        callbacks.append(StepTimer(warmup_steps=10, sync_cuda=False))
    return callbacks


class HParamsTensorBoardLogger(TensorBoardLogger):
    """TensorBoard with the run's hyper-parameters in its HPARAMS tab, without Lightning's ``hp_metric = -1``
    placeholder: the hparams summary declares :attr:`METRICS` (their values are the run's own scalars of those
    names) instead of logging a made-up value."""

    METRICS = ("train/loss", "val/loss")

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics, step)  # hparams.yaml; the summary only with metrics
        if metrics is not None:
            return
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
        from torch.utils.tensorboard.summary import hparams

        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        flat = {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for k, v in flat.items()}
        flat = {k: "None" if v is None else v for k, v in flat.items()}
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, dict.fromkeys(self.METRICS, 0.0)):  # declares the metric tags, logs no value
            writer.add_summary(summary, step)


class TimedCSVLogger(CSVLogger):
    """Lightning's CSV logger with the wall time (``time``: seconds since the epoch) on every row, so curves can be
    drawn against time (``tools.plot --x time``)."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics({**metrics, "time": time.time()}, step)


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config into the run folder: ``config.yaml``, or ``config.resumed-<time>.yaml`` when the
    run already has one (a resumed run keeps the record of how it started)."""

    def __init__(self, parser: LightningArgumentParser, config: Any, **kwargs: Any):
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        paths = next(cb.paths for cb in trainer.callbacks if isinstance(cb, CheckpointPaths))
        path = paths.config_path
        if path.exists():
            path = path.with_name(f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), overwrite=True, multifile=False)


class FitCLI(LightningCLI):
    """LightningCLI with mvlift's run folder, checkpointing, loggers and checks (module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(CheckpointPaths, "run")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
        link_shared_settings(parser)
        parser.add_argument("--resume", type=Optional[str], default=None,  # noqa: UP045 (jsonargparse type)
                            help="'auto': continue from the newest complete checkpoint of the run; or a .ckpt path")
        parser.add_argument("--wandb", type=Optional[str], default=None,  # noqa: UP045
                            help="also log to this W&B project")
        parser.add_argument("--trust-checkpoint", action="store_true",
                            help="resume from a checkpoint (or read weights files the model loads: VGG / LPIPS .pth, "
                                 "a pipeline's .bin, view embeddings .pt) that needs more than plain tensors and "
                                 "values, with full unpickling (can run code from the file: only for files you trust)")

    def before_instantiate_classes(self) -> None:
        """The config's values, named by key, before any class is built (:mod:`callbacks.fit_config`)."""
        check_fit_config(self.config)
        set_trust(bool(self._get(self.config, "trust_checkpoint")))  # for files the modules read when built

    def instantiate_classes(self) -> None:
        """LightningCLI's, with a constructor's error about a bad value as one line naming the section and class
        (:func:`callbacks.fit_config.constructor_error`) instead of jsonargparse's union-type report around it."""
        try:
            self.config_init = self.parser.instantiate_classes(self.config)
        except (ValueError, TypeError, OSError) as e:
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            if isinstance(root, USER_ERRORS):  # a refusal of its own (an untrusted weights file, ...): as it is
                raise root from None
            if not isinstance(root, (ValueError, TypeError, OSError)):
                raise  # a bug, not a config value's fault: the whole traceback
            raise constructor_error(e, self.config) from e
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        paths_cb: CheckpointPaths = self._get(self.config_init, "run")
        if self._get(self.config, "resume") == "auto":
            paths_cb.resume = "auto"
        if self.datamodule is not None:
            check_data_matches_model(self.model, self.datamodule)
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        for cb in [self._get(self.config_init, "checkpoint"), *_as_list(trainer_cfg.get("callbacks"))]:
            if isinstance(cb, ModelCheckpoint):  # --checkpoint.filename names a file in the run's checkpoints/
                check_checkpoint_filename(cb.filename)
        paths = paths_cb.decide(self.model, self.datamodule)  # refuses a root holding the run's own path
        # every refusal before anything (loggers, config copy, run.json) is written into the run folder
        paths_cb.check_before_writing(resuming=self._get(self.config, "resume") not in (None, "never"))
        paths_cb.note_invocation_start()  # a fit that fails leaves the run folder as found (tools.fit)
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(paths, self._get(self.config, "wandb"))
        kwargs["plugins"] = _with_atomic_io(trainer_cfg.get("plugins"))
        kwargs["callbacks"] = _with_default_callbacks(trainer_cfg.get("callbacks"),
                                                      lr_monitor=trainer_cfg.get("logger") is not False)
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(paths.run_dir)
        return super().instantiate_trainer(**kwargs)

    def resume_path(self) -> str | None:
        """The checkpoint ``fit`` starts from: ``--resume auto`` -> newest complete one of the run; a path -> it."""
        resume = self._get(self.config, "resume")
        paths_cb: CheckpointPaths = self._get(self.config_init, "run")
        if resume in (None, "never"):
            return None
        if resume == "auto":
            ckpt = paths_cb.resume_checkpoint()
            log.info("resume auto: %s", ckpt or "no checkpoint yet, starting fresh")
            return ckpt
        return resume


def run_summary(trainer: Trainer) -> str:
    """One line at the end of a fit: the step it stopped at, why, how long it took to reach its first training batch
    (:class:`callbacks.throughput.StepTimer`, when on), and where its last checkpoint and export are."""
    paths = run_paths(trainer)
    reason = "max_steps" if trainer.max_steps and trainer.global_step >= trainer.max_steps else "stopped early"
    if trainer.interrupted:
        reason = "interrupted"
    startup = [cb.startup_s for cb in trainer.callbacks if isinstance(cb, StepTimer) and cb.startup_s is not None]
    where = f"; first training batch after {startup[0]:.1f} s" if startup else ""
    if paths is not None:
        ckpt = paths.latest_checkpoint()
        exports = list(paths.exports().values())  # finished export folders, by step
        where += f"; checkpoint {ckpt or 'none'}; export {exports[-1] if exports else 'none'}"
    return f"tools.fit: step {trainer.global_step} ({reason}){where}"


# refusals a user fixes by changing the command: printed as one line, no traceback, exit code 2
USER_ERRORS = (RigMismatchError, StageMismatchError, RunConflictError, PathError, UntrustedCheckpointError,
               SharedSettingError, ConfigError, CorruptWeightsError)


def user_error(e: BaseException) -> str:
    """An error's message without a traceback: its first line, then its details (a rig mismatch's per-view table:
    which views differ and by how much) indented below it."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    first, *rest = text.splitlines()
    return "\n".join([first.rstrip(":"), *("    " + line for line in rest if line.strip())])
