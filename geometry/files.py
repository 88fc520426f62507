"""Files others can read: what mvlift writes gets the permissions the user's umask allows (0644 under umask 022).

``tempfile.mkstemp`` / ``mkdtemp`` (atomic writes) and safetensors' writer create files 0600 / folders 0700 whatever
the umask, so collaborators on a shared server could not read camera files, PLYs, synthesized datasets or exports.
:func:`write_atomic` writes a file atomically with the umask's mode; :func:`make_readable` widens a file (or, with
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
import tempfile
from pathlib import Path


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


__all__ = ["current_umask", "make_readable", "make_tree_readable", "write_atomic"]
