"""Progress bars for long loops (evaluation rows, inference per photo, shard conversion, synthesis, the diffusion
sampler): tqdm on standard error when it is a terminal, nothing otherwise (logs, CI, pipes stay clean).

``MVLIFT_PROGRESS=1`` forces the bars on, ``0`` off.

Example:
    >>> sum(progress(range(3), "adding"))  # not a terminal here: no bar, the values pass through
    3
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def bars_on() -> bool:
    """Whether progress bars are drawn (module docstring)."""
    forced = os.environ.get("MVLIFT_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             leave: bool = True) -> Iterator[T]:
    """``items`` with a tqdm bar named ``desc`` when :func:`bars_on`, else ``items`` unchanged."""
    if not bars_on():
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def counter(total: int, desc: str, unit: str = "it", leave: bool = False):
    """A bar to ``update(n)`` by hand (work done in chunks: e.g. turntable frames rendered 8 at a time) when
    :func:`bars_on`, else an object whose ``update`` / ``close`` do nothing; ``close()`` it at the end."""
    if not bars_on():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


__all__ = ["bars_on", "counter", "progress"]
