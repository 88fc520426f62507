"""The checkpoint path resolver: the one place that joins run, checkpoint, export and log paths.

A run writes everything under ``<root>/<experiment>/<run>/``::

    run.json                 identity of the run: config hash, stage, rig (a different config here is an error)
    config.yaml              the resolved LightningCLI config (tools.fit)
    checkpoints/             Lightning .ckpt files, last.ckpt
    export/step_<N>/         ``pl_module.export(dir, ema_weights=...)`` folders
    logs/                    TensorBoard (logs/tensorboard) and CSV logs, image grids (logs/images); the CSV log
                             has one logs/csv/version_<k>/metrics.csv per tools.fit invocation (a resume adds one)

:class:`RunPaths` computes these paths; :meth:`RunPaths.resolve` is idempotent — a path already inside the run is
returned unchanged and a relative path that already starts with its folder's name is not joined again, so
``checkpoints/checkpoints/...`` cannot be produced. Paths that escape the run (``..``, absolute elsewhere) raise
:class:`PathError`. :class:`CheckpointPaths` is the Lightning callback that owns a run's paths: it points every
ModelCheckpoint at ``checkpoints/``, writes ``run.json``, refuses a run folder that belongs to another config, and
exports every ``export_every_n_steps`` and at the end of fit. Only rank 0 writes; the run name is decided once
(argument, ``$MVLIFT_RUN``, or a timestamp exported to ``$MVLIFT_RUN`` for the DDP children) and broadcast from
rank 0 in ``setup``.

Example:
    >>> paths = RunPaths("runs", "demo", "r1")
    >>> paths.resolve("checkpoints/last.ckpt", under="checkpoints") == paths.checkpoint_dir / "last.ckpt"
    True
    >>> paths.resolve(paths.resolve("last.ckpt", under="checkpoints"), under="checkpoints").name
    'last.ckpt'
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from callbacks.atomic import atomic_directory, atomic_write, is_complete_checkpoint, remove_stale_temporaries
from lightning_modules.hparams import RUNTIME

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
LOGS = "logs"
RUN_ENV = "MVLIFT_RUN"
SUBDIRS = {"run": (), "checkpoints": (CHECKPOINTS,), "export": (EXPORT,), "logs": (LOGS,)}
Under = Literal["run", "checkpoints", "export", "logs"]
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+=@-]+$")
_EXPORT_RE = re.compile(r"^step_(\d+)$")


class PathError(ValueError):
    """A path that would land outside its run folder, or a malformed run/experiment name."""


class RunConflictError(RuntimeError):
    """The run folder already belongs to another config (or holds checkpoints and resuming was not asked for)."""


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _within(path: Path, folder: Path) -> bool:
    if path == folder or folder in path.parents:
        return True
    real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == real_folder or real_folder in real.parents


def _check_name(kind: str, name: str) -> str:
    name = str(name)
    if not name or name in (".", "..") or not _NAME_RE.match(name):
        raise PathError(f"{kind} name {name!r} must be one folder name (letters, digits, _ . + = @ -)")
    return name


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Every path of one run, ``<root>/<experiment>/<run>/`` (``root`` made absolute at construction)."""

    root: Path
    experiment: str
    run: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _abs(self.root))
        object.__setattr__(self, "experiment", _check_name("experiment", self.experiment))
        object.__setattr__(self, "run", _check_name("run", self.run))

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike) -> RunPaths:
        """The RunPaths of an existing ``<root>/<experiment>/<run>`` folder."""
        run_dir = _abs(run_dir)
        return cls(run_dir.parent.parent, run_dir.parent.name, run_dir.name)

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike) -> RunPaths:
        """The RunPaths of the run a ``.../<run>/checkpoints/NAME.ckpt`` belongs to."""
        ckpt = _abs(ckpt)
        if ckpt.parent.name != CHECKPOINTS:
            raise PathError(f"{ckpt}: not inside a run's {CHECKPOINTS}/ folder")
        return cls.from_run_dir(ckpt.parent.parent)

    # ---- folders -------------------------------------------------------------------------------------------------
    @property
    def experiment_dir(self) -> Path:
        return self.root / self.experiment

    @property
    def run_dir(self) -> Path:
        return self.experiment_dir / self.run

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def export_root(self) -> Path:
        return self.run_dir / EXPORT

    @property
    def log_dir(self) -> Path:
        return self.run_dir / LOGS

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def run_json(self) -> Path:
        return self.run_dir / RUN_JSON

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    def export_dir(self, step: int) -> Path:
        """``export/step_<step>``."""
        step = int(step)
        if step < 0:
            raise PathError(f"export step must be >= 0, got {step}")
        return self.export_root / f"step_{step}"

    def folder(self, under: Under = "run") -> Path:
        if under not in SUBDIRS:
            raise PathError(f"under must be one of {sorted(SUBDIRS)}, got {under!r}")
        return self.run_dir.joinpath(*SUBDIRS[under])

    def create(self) -> RunPaths:
        for d in (self.checkpoint_dir, self.export_root, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # ---- resolving -----------------------------------------------------------------------------------------------
    def contains(self, path: str | os.PathLike) -> bool:
        return _within(_abs(path), self.run_dir)

    def resolve(self, path: str | os.PathLike, under: Under = "run") -> Path:
        """Absolute path of ``path`` inside folder ``under`` of this run; idempotent.

        - an absolute path (or one relative to the working directory) already inside the folder is returned as is;
        - a relative path is taken inside the folder, after dropping a leading copy of the folder's own name
          (``"checkpoints/last.ckpt"`` under ``checkpoints`` is ``checkpoints/last.ckpt``, not
          ``checkpoints/checkpoints/last.ckpt``);
        - anything that ends outside the folder, or that repeats a run sub-folder (``checkpoints/checkpoints``),
          raises :class:`PathError`.
        """
        base = self.folder(under)
        raw = Path(os.path.expanduser(os.fspath(path)))
        if raw.is_absolute() or _within(_abs(raw), self.run_dir):
            resolved = _abs(raw)
        else:
            parts = raw.parts
            prefix = SUBDIRS[under]
            if prefix and parts[: len(prefix)] == prefix:
                parts = parts[len(prefix):]
            resolved = _abs(base.joinpath(*parts))
        if not _within(resolved, base):
            raise PathError(f"{os.fspath(path)!r} resolves to {resolved}, outside the run's {under} folder {base}")
        self._check_no_repeated_prefix(resolved, path)
        return resolved

    def _check_no_repeated_prefix(self, resolved: Path, given: Any) -> None:
        try:
            rel = resolved.relative_to(self.run_dir).parts
        except ValueError:  # inside only through a symlink: nothing to check lexically
            return
        for name in (CHECKPOINTS, EXPORT, LOGS):
            if rel[:2] == (name, name):
                raise PathError(f"{os.fspath(given)!r} resolves to {resolved}: {name}/{name}/ — the folder prefix "
                                f"was joined twice")

    # ---- contents ------------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete ``.ckpt`` files of the run, newest first (``last.ckpt`` first among equally new files)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.glob("*.ckpt") if is_complete_checkpoint(p)]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)

    def incomplete_checkpoints(self) -> list[Path]:
        """``.ckpt`` files of the run that are not whole checkpoints (cut short, corrupt): what resume skips."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("*.ckpt") if not is_complete_checkpoint(p))

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint, or None (partial files of a killed save are never returned)."""
        ckpts = self.checkpoints()
        return ckpts[0] if ckpts else None

    def exports(self) -> dict[int, Path]:
        """Finished export folders by step."""
        if not self.export_root.is_dir():
            return {}
        out = {}
        for p in self.export_root.iterdir():
            m = _EXPORT_RE.match(p.name)
            if m and p.is_dir():
                out[int(m.group(1))] = p
        return dict(sorted(out.items()))

    def metric_files(self) -> list[Path]:
        """The run's CSV metric files in the order they were written (``logs/csv/version_<k>/metrics.csv`` by k;
        a ``logs/csv/metrics.csv`` of runs made before versioned logs comes first)."""
        csv_dir = self.log_dir / "csv"
        versioned = [(int(m.group(1)), p) for p in csv_dir.glob("version_*/metrics.csv")
                     if (m := re.fullmatch(r"version_(\d+)", p.parent.name))]
        legacy = [csv_dir / "metrics.csv"] if (csv_dir / "metrics.csv").is_file() else []
        return legacy + [p for _, p in sorted(versioned)]

    def metric_rows(self) -> list[dict[str, str]]:
        """Every row of :meth:`metric_files`, in write order (a step logged again after a resume comes later)."""
        rows: list[dict[str, str]] = []
        for path in self.metric_files():
            with path.open(newline="") as f:
                rows.extend(csv.DictReader(f))
        return rows

    def read_run_info(self) -> dict[str, Any] | None:
        if not self.run_json.is_file():
            return None
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as e:
            raise RunConflictError(f"{self.run_json}: unreadable run info ({e})") from e

    def write_run_info(self, info: dict[str, Any]) -> None:
        atomic_write(self.run_json, lambda f: f.write(json.dumps(info, indent=2, sort_keys=True).encode()))


# ---- run identity --------------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj) if not hasattr(obj, "to_dict") else _jsonable(obj.to_dict())


# Hyper-parameters that change how fast a run goes, never what it computes: left out of the config hash so a run
# can be resumed on a machine with other cores (loader workers), another GPU (attention kernel) or with compilation /
# checkpointing switched: the loader's settings, gradient checkpointing, and the modules' RUNTIME settings (compile,
# attention kernel; what exports leave out).
EXECUTION_ONLY = frozenset({"num_workers", "persistent_workers", "pin_memory", "prefetch_factor", "grad_checkpointing",
                            *RUNTIME})
# The run length is the trainer's (StageModule.schedule_steps): a module's max_steps is its fallback, not the run's
# identity, so extending a run is never "another config".
RUN_LENGTH = frozenset({"max_steps"})


def _identity_hparams(obj: Any, skip: bool = True) -> dict[str, Any] | None:
    """``obj``'s hyper-parameters as JSON; ``skip``: without ``EXECUTION_ONLY``, ``RUN_LENGTH`` and ``_``-prefixed
    (LightningCLI) keys (False: all of them, the hash of runs made before). None for no ``obj``."""
    if obj is None:
        return None
    hp = dict(getattr(obj, "hparams", {}) or {})
    return _jsonable({k: v for k, v in hp.items()
                      if not skip or (k not in EXECUTION_ONLY | RUN_LENGTH and not str(k).startswith("_"))})


def run_identity(pl_module: pl.LightningModule, datamodule: Any = None) -> dict[str, Any]:
    """What makes a run this run: stage, rig (name + fingerprint), and a hash of the model's and the
    DataModule's hyper-parameters except ``EXECUTION_ONLY`` ones. Trainer settings (steps, devices, precision) are
    not part of it."""
    meta = pl_module.mvlift_metadata() if hasattr(pl_module, "mvlift_metadata") else {}
    stage = meta.get("stage", type(pl_module).__name__)
    rig = getattr(pl_module, "rig", None)
    rig_info = {"name": rig.name, "fingerprint": rig.fingerprint} if hasattr(rig, "fingerprint") else None
    payload = {
        "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
        "model": _identity_hparams(pl_module),
        "data_class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}" if datamodule else None,
        "data": _identity_hparams(datamodule),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    # runs created before EXECUTION_ONLY existed stored the hash of every hyper-parameter: still recognised
    legacy = {**payload, "model": _identity_hparams(pl_module, skip=False),
              "data": _identity_hparams(datamodule, skip=False)}
    legacy_digest = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    return {"config_hash": digest, "legacy_config_hash": legacy_digest, "stage": stage, "rig": rig_info,
            "model_class": payload["model_class"],
            "data_class": payload["data_class"],
            "hparams": flat_identity_hparams(payload)}


# a value whose JSON is longer than this is stored in run.json as its digest (run.json stays small; a change in it
# is still named by its key)
LONG_VALUE = 120


def flat_identity_hparams(payload: dict[str, Any]) -> dict[str, Any]:
    """The hashed hyper-parameters as one flat ``{"model.lr": 0.001, "data.sources.0.name": "syn", ...}`` mapping
    (what ``run.json`` stores so that a conflict names the keys that differ); long values become ``sha256:<12>``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            text = json.dumps(value, sort_keys=True)
            flat[prefix] = value if len(text) <= LONG_VALUE else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]

    for part in ("model", "data"):
        walk(part, payload.get(part))
    return flat


def identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"KEY: STORED -> CURRENT"`` for each class or hyper-parameter that differs between a run.json and an
    identity (``<unset>`` for a key only one side has); empty when the stored record predates ``hparams``."""
    out = [f"{k}: {stored.get(k)} -> {current.get(k)}" for k in ("model_class", "data_class")
           if k in stored and stored.get(k) != current.get(k)]
    a, b = stored.get("hparams"), current.get("hparams") or {}
    if not isinstance(a, dict):
        return out
    unset = "<unset>"
    for k in sorted(set(a) | set(b)):
        if a.get(k, unset) != b.get(k, unset):
            out.append(f"{k}: {json.dumps(a.get(k, unset))} -> {json.dumps(b.get(k, unset))}")
    return out


def _is_launched_child() -> bool:
    """True in a process started by a launcher for a non-zero rank (Lightning DDP child, torchrun worker)."""
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        if int(os.environ.get(var, "0") or 0) > 0:
            return True
    return False


def _new_run_name(experiment_dir: Path) -> str:
    name = time.strftime("%Y%m%d-%H%M%S")
    candidate, i = name, 1
    while (experiment_dir / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate


def find_matching_run(experiment_dir: Path, config_hash: str, *also: str) -> str | None:
    """Newest run of an experiment with the same config hash and a complete checkpoint (for ``resume: auto``)."""
    if not experiment_dir.is_dir():
        return None
    best: tuple[int, str] | None = None
    for d in experiment_dir.iterdir():
        info_path = d / RUN_JSON
        if not info_path.is_file():
            continue
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            continue
        if info.get("config_hash") not in (config_hash, *also):
            continue
        latest = RunPaths(experiment_dir.parent, experiment_dir.name, d.name).latest_checkpoint()
        if latest is not None:
            key = (latest.stat().st_mtime_ns, d.name)
            best = max(best, key) if best else key
    return best[1] if best else None


def check_root(paths: RunPaths) -> None:
    """Refuse a root that already holds the run's own ``<experiment>/<run>`` path, or that lies inside an existing
    run folder (one with a ``run.json``): both would nest a run in a run, e.g. checkpoints in
    ``.../P7/checkpoints/demo/P7/checkpoints/`` (the doubled-path bug). Raises :class:`PathError`."""
    parts = paths.root.parts
    own = (paths.experiment, paths.run)
    if any(parts[i:i + 2] == own for i in range(len(parts) - 1)):
        raise PathError(f"run root {paths.root} already contains this run's own path {'/'.join(own)}: the run would "
                        f"land in {paths.run_dir}; pass the folder above {'/'.join(own)} as the root (run.root)")
    for folder in (paths.root, *paths.root.parents):
        if (folder / RUN_JSON).is_file():
            raise PathError(f"run root {paths.root} is inside the run folder {folder} (it has a {RUN_JSON}): a run "
                            f"would be nested in a run; pass the folder holding the experiments as the root (run.root)")


# ---- the callback ------------------------------------------------------------------------------------------------
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
        if export_every_n_steps is not None and export_every_n_steps < 1:
            raise ValueError(f"export_every_n_steps must be >= 1 or None, got {export_every_n_steps}")
        self.root = root
        self.experiment = _check_name("experiment", experiment)
        self.run = _check_name("run", run) if run is not None else None
        self.resume = resume
        self.export_every_n_steps = export_every_n_steps
        self.export_on_fit_end = export_on_fit_end
        self.save_last = save_last
        self._paths: RunPaths | None = None
        self._identity: dict[str, Any] | None = None
        self._last_export_step: int | None = None
        self._final_step: int | None = None  # the step save_final_checkpoint last wrote

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
            name = find_matching_run(experiment_dir, self._identity["config_hash"],
                                     self._identity["legacy_config_hash"])
        if name is None:
            name = _new_run_name(experiment_dir)
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
        self._check_no_checkpoints(self.paths, self.resume == "auto" or trainer.ckpt_path is not None)

    def _check_identity(self, paths: RunPaths) -> None:
        assert self._identity is not None
        stored = paths.read_run_info()
        if stored is not None and stored.get("config_hash") not in (self._identity["config_hash"],
                                                                    self._identity["legacy_config_hash"]):
            diffs = identity_differences(stored, self._identity)
            differing = ("; differing (stored -> this run): " + "; ".join(diffs)) if diffs else (
                "; its run.json does not record the hyper-parameters, so the differing keys are unknown")
            raise RunConflictError(
                f"run folder {paths.run_dir} belongs to another config (stored: stage {stored.get('stage')!r}, "
                f"rig {(stored.get('rig') or {}).get('name')!r}, config hash {stored.get('config_hash')}; this run: "
                f"stage {self._identity['stage']!r}, rig {(self._identity['rig'] or {}).get('name')!r}, config hash "
                f"{self._identity['config_hash']}){differing}. Use another run name or experiment."
            )

    def check_before_writing(self, resuming: bool) -> RunPaths:
        """Every refusal of a run, before anything is written into its folder (tools.fit calls it before the loggers
        and the config copy exist): the run folder of another config (naming the differing keys), and checkpoints
        already there when not ``resuming``. Needs :meth:`decide` first."""
        paths = self.paths
        self._check_identity(paths)
        self._check_no_checkpoints(paths, resuming)
        return paths

    @staticmethod
    def _check_no_checkpoints(paths: RunPaths, resuming: bool) -> None:
        if not resuming and paths.checkpoints():
            raise RunConflictError(
                f"run folder {paths.run_dir} already holds checkpoints; pass resume=auto (tools.fit: --resume "
                "auto) to continue it, or choose another run name"
            )

    def _prepare_run_dir(self, paths: RunPaths) -> None:
        paths.create()
        for removed in remove_stale_temporaries(paths.checkpoint_dir) + remove_stale_temporaries(paths.export_root):
            log.warning("removed %s: left by an interrupted save", removed)
        if paths.read_run_info() is None:
            identity = {k: v for k, v in self._identity.items() if k != "legacy_config_hash"}
            paths.write_run_info({**identity, "experiment": paths.experiment, "run": paths.run,
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def configure_checkpoint(self, cb: ModelCheckpoint) -> None:
        """Point a ModelCheckpoint at the run's checkpoints/ (a dirpath it already has is resolved, idempotently)."""
        paths = self.paths
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
        n = self.export_every_n_steps
        if n and step > 0 and step % n == 0 and step != self._last_export_step:
            self.export(trainer, pl_module)
        if 0 < trainer.max_steps <= step:
            self.save_final_checkpoint(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run stopped before ``max_steps`` (``max_time``, early stopping, ``should_stop``) keeps its last steps too:
        without this, ``last.ckpt`` was the last periodic checkpoint (a 4.5-minute run evaluated at step 2000 of
        3600, docs/results.md)."""
        if trainer.global_step > 0 and trainer.global_step != self._final_step and not trainer.fast_dev_run:
            self.save_final_checkpoint(trainer)

    def save_final_checkpoint(self, trainer: pl.Trainer) -> None:
        """At ``max_steps``: write ``last.ckpt`` for every ModelCheckpoint that keeps one but would not save this step
        itself (e.g. ``every_n_train_steps=100`` and ``max_steps=150``), so ``--resume auto`` with a larger
        ``max_steps`` continues from the step where training stopped. Written from the same hook, with the same
        loop state, as ModelCheckpoint's own step checkpoints (collective: every rank calls it)."""
        step = self._final_step = trainer.global_step
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb.dirpath is None:
                continue
            every = getattr(cb, "_every_n_train_steps", 0) or 0
            if every and step % every == 0:
                continue  # ModelCheckpoint saves this step (and last.ckpt with it)
            path = os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            trainer.save_checkpoint(path)
            cb.last_model_path = path
            log.info("saved the final state (step %d) to %s", step, path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.export_on_fit_end and trainer.global_step != self._last_export_step and not trainer.fast_dev_run:
            self.export(trainer, pl_module)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """``pl_module.export(export/step_<global_step>, ema_weights=...)`` on rank 0, built under a temporary
        name and renamed into place when complete. Returns the folder (None on other ranks / without export)."""
        step = trainer.global_step
        self._last_export_step = step
        if hasattr(pl_module, "on_before_export"):  # collective work (e.g. merging per-rank records): every rank
            pl_module.on_before_export()
        if not trainer.is_global_zero:
            return None
        if not hasattr(pl_module, "export"):
            log.warning("%s has no export(); nothing exported", type(pl_module).__name__)
            return None
        target = self.paths.export_dir(step)
        ema_weights = _ema_weights(trainer)
        with atomic_directory(target) as tmp:
            pl_module.export(tmp, ema_weights=ema_weights)
        log.info("exported step %d to %s", step, target)
        return target

    def state_dict(self) -> dict[str, Any]:
        return {"run": self._paths.run if self._paths else self.run, "last_export_step": self._last_export_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_export_step = state_dict.get("last_export_step")


def _flush_loggers(trainer: pl.Trainer) -> None:
    for logger in trainer.loggers:
        try:
            logger.save()  # rank-zero only in Lightning's loggers
        except OSError as e:  # a logger that cannot flush must not cost the checkpoint
            log.warning("could not flush logger %s before a checkpoint save: %s", type(logger).__name__, e)


def _ema_weights(trainer: pl.Trainer) -> dict[str, Any] | None:
    from callbacks.ema import EMA

    for cb in trainer.callbacks:
        if isinstance(cb, EMA):
            return cb.ema_state_dict()
    return None


__all__ = [
    "CHECKPOINTS",
    "EXPORT",
    "LOGS",
    "RUN_ENV",
    "CheckpointPaths",
    "PathError",
    "RunConflictError",
    "RunPaths",
    "check_root",
    "find_matching_run",
    "identity_differences",
    "run_identity",
]
