"""Atomic checkpoint writes: a run killed while saving leaves the previous checkpoint loadable.

Every file is written to a hidden temporary sibling (``.NAME.tmp-<pid>``), flushed and fsync'ed, then moved over the
target with ``os.replace`` (atomic on POSIX file systems), and the directory entry is fsync'ed. A reader therefore
sees either the old complete file or the new complete file, never a prefix of the new one. Temporary files left by a
killed writer never end in ``.ckpt`` and are ignored by :func:`is_complete_checkpoint` and removed by
``geometry.files.remove_stale_temporaries`` (the atomic writes themselves live there, the file-system floor).

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(plugins=[AtomicCheckpointIO()], logger=False)  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geometry.files import atomic_write, is_temporary


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


__all__ = ["AtomicCheckpointIO", "is_complete_checkpoint"]
