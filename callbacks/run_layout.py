"""The run folder's layout: every path of one run, ``<root>/<experiment>/<run>/``::

    run.json                 identity of the run (callbacks.run_identity): config hash, stage, rig
    config.yaml              the resolved LightningCLI config (tools.fit)
    checkpoints/             Lightning .ckpt files, last.ckpt
    export/step_<N>/         ``pl_module.export(dir, ema_weights=...)`` folders (callbacks.run_exports)
    logs/                    TensorBoard (logs/tensorboard) and CSV logs, image grids (logs/images); the CSV log
                             has one logs/csv/version_<k>/metrics.csv per tools.fit invocation (a resume adds one)

:class:`RunPaths` computes these paths; :meth:`RunPaths.resolve` is idempotent — a path already inside the run is
returned unchanged and a relative path that already starts with its folder's name is not joined again, so
``checkpoints/checkpoints/...`` cannot be produced. Paths that escape the run (``..``, absolute elsewhere) raise
:class:`PathError`; :func:`check_root` refuses a root that would nest a run in a run.

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
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from callbacks.atomic import is_complete_checkpoint
from geometry.files import atomic_write

RUN_JSON = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
LOGS = "logs"
SUBDIRS = {"run": (), "checkpoints": (CHECKPOINTS,), "export": (EXPORT,), "logs": (LOGS,)}
Under = Literal["run", "checkpoints", "export", "logs"]
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+=@-]+$")
_EXPORT_RE = re.compile(r"^step_(\d+)$")



class PathError(ValueError):
    """A path that would land outside its run folder, or a malformed run/experiment name."""


class RunConflictError(RuntimeError):
    """The run folder already belongs to another config, holds checkpoints and resuming was not asked for
    (callbacks.run_identity), or its ``run.json`` cannot be read."""


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _within(path: Path, folder: Path) -> bool:
    if path == folder or folder in path.parents:
        return True
    real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == real_folder or real_folder in real.parents


def check_name(kind: str, name: str) -> str:
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
        object.__setattr__(self, "experiment", check_name("experiment", self.experiment))
        object.__setattr__(self, "run", check_name("run", self.run))

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
        """The run's CSV metric files in the order they were written (``logs/csv/version_<k>/metrics.csv`` by k)."""
        csv_dir = self.log_dir / "csv"
        versioned = [(int(m.group(1)), p) for p in csv_dir.glob("version_*/metrics.csv")
                     if (m := re.fullmatch(r"version_(\d+)", p.parent.name))]
        return [p for _, p in sorted(versioned)]

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


def check_checkpoint_filename(filename: str | None) -> None:
    """A ModelCheckpoint's ``filename`` (``--checkpoint.filename``) names a file directly in the run's
    ``checkpoints/`` folder, as ``dirpath`` must stay inside it: an absolute path, a ``..`` component or a ``/`` would
    write the checkpoint elsewhere (or where ``--resume auto`` never looks) and raises :class:`PathError`."""
    if filename is None:
        return
    text = os.fspath(filename)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.path.isabs(text):
        raise PathError(f"checkpoint filename {text!r} must be a file name inside the run's {CHECKPOINTS}/ folder "
                        "(no '/', no '..', not an absolute path); the folder is the run's, set by the run folder")


def new_run_name(experiment_dir: Path) -> str:
    name = time.strftime("%Y%m%d-%H%M%S")
    candidate, i = name, 1
    while (experiment_dir / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate


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


__all__ = ["CHECKPOINTS", "CONFIG_FILE", "EXPORT", "LOGS", "RUN_JSON", "PathError", "RunConflictError", "RunPaths",
           "check_checkpoint_filename", "check_name", "check_root", "new_run_name"]
