"""Files others can read: what mvlift writes gets the permissions the user's umask allows (0644 under umask 022).

``tempfile.mkstemp`` / ``mkdtemp`` (atomic writes) and safetensors' writer create files 0600 / folders 0700 whatever
the umask, so collaborators on a shared server could not read camera files, PLYs, synthesized datasets or exports.
:func:`write_atomic` writes a file atomically with the umask's mode (:func:`atomic_write` through a writer function,
:func:`atomic_directory` a whole folder: temporary sibling, fsync, ``os.replace``); :func:`make_readable` widens a file (or, with
:func:`make_tree_readable`, a folder tree) to it after a writer that does not honour the umask. Permissions are only
ever added, up to what the umask allows, never removed.

Example:
    >>> import os, tempfile
    >>> old = os.umask(0o022)
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> _ = write_atomic(path, "hello")
    >>> oct(os.stat(path).st_mode & 0o777)
    '0o644'
    >>> _ = os.umask(old)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``; ``os.umask`` set-and-
    restore elsewhere, which is not thread-safe)."""
    with contextlib.suppress(OSError):
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def make_readable(path: str | os.PathLike, directory: bool = False) -> None:
    """Add the permission bits the umask allows (files ``0o666 & ~umask``, folders ``0o777 & ~umask``) to ``path``."""
    allowed = (0o777 if directory else 0o666) & ~current_umask()
    mode = os.stat(path).st_mode & 0o7777
    if mode | allowed != mode:
        os.chmod(path, mode | allowed)


def make_tree_readable(folder: str | os.PathLike) -> None:
    """:func:`make_readable` for ``folder`` and every file and folder under it (symlinks left alone)."""
    make_readable(folder, directory=True)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            if not os.path.islink(os.path.join(root, d)):
                make_readable(os.path.join(root, d), directory=True)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                make_readable(os.path.join(root, f))


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place, with the umask's mode; returns
    ``path``. The folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


__all__ = ["TMP_MARKER", "atomic_directory", "atomic_write", "current_umask", "fsync_dir", "is_temporary",
           "make_readable", "make_tree_readable", "remove_stale_temporaries", "temporary_sibling", "write_atomic"]
