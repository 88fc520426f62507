"""Atomic checkpoint writes: a run killed while saving leaves the previous checkpoint loadable.

Every file is written to a hidden temporary sibling (``.NAME.tmp-<pid>``), flushed and fsync'ed, then moved over the
target with ``os.replace`` (atomic on POSIX file systems), and the directory entry is fsync'ed. A reader therefore
sees either the old complete file or the new complete file, never a prefix of the new one. Temporary files left by a
killed writer never end in ``.ckpt`` and are ignored by :func:`is_complete_checkpoint` and removed by
:func:`remove_stale_temporaries`.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(plugins=[AtomicCheckpointIO()], logger=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geometry.files import make_tree_readable

TMP_MARKER = ".tmp-"


def temporary_sibling(path: str | Path) -> Path:
    """Hidden temporary name next to ``path`` for this process: ``.NAME.tmp-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def is_temporary(path: str | Path) -> bool:
    """True for a temporary file or folder made by this module (possibly left by a killed writer)."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARKER in name


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry to disk (after a rename in it); a no-op where directories can't be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through ``write(fileobj)`` atomically (temp + fsync + ``os.replace``); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new folder is complete (it is renamed aside, the new folder
    renamed in, then the old one deleted), so a crash leaves either the old or the new folder under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    make_tree_readable(tmp)  # files of writers that ignore the umask (safetensors: 0600) as the umask allows
    old = path.with_name(f".{path.name}{TMP_MARKER}old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def is_complete_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a whole ``torch.save`` file (its zip central directory is intact).

    A file cut short by a crash loses the end-of-archive record and fails this check without being loaded.
    Temporary files of :func:`atomic_write` are never complete checkpoints.
    """
    path = Path(path)
    if is_temporary(path) or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("data.pkl") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries left in ``folder`` by killed writers; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_temporary(p):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that streams ``torch.save`` into a temporary file, fsyncs it and renames it into place.

    Local paths only (remote URLs fall back to Lightning's own writer). Loading and removal are Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        local = Path(str(path).removeprefix("file://"))
        atomic_write(local, lambda f: self.write_checkpoint(checkpoint, f))

    def write_checkpoint(self, checkpoint: dict[str, Any], fileobj: IO[bytes]) -> None:
        """Serialize ``checkpoint`` into an open binary file (the part that takes time for big checkpoints)."""
        torch.save(checkpoint, fileobj)


__all__ = [
    "AtomicCheckpointIO", "atomic_directory", "atomic_write", "is_complete_checkpoint", "is_temporary",
    "remove_stale_temporaries", "temporary_sibling",
]
