"""Reading checkpoint files without running code from them: the one place that decides what ``torch.load`` may
build from a user's file.

``torch.load`` unpickles, and a pickle may name any importable callable, so loading a ``.ckpt`` / ``.pt`` from
elsewhere with ``weights_only=False`` can run code. Every load of a user-supplied file in mvlift (the rig guard's
metadata read, ``tools.checkpoints.load_stage``, ``tools.infer``, ``tools.convert``, ``tools.fit``'s resume) goes
through this module: ``weights_only=True`` (tensors, dicts, lists, tuples, sets, numbers, strings, ``torch.dtype`` /
``torch.device``, ...) plus :data:`SAFE_GLOBALS`, exactly the types mvlift's own Lightning checkpoints may hold
beyond that:

- ``pathlib.PosixPath`` / ``pathlib.WindowsPath``: hyper-parameters given as ``Path`` objects through the Python API
  (e.g. ``lpips_weights=Path(...)``, a data source's ``path``). Checkpoints written by ``tools.fit`` hold none
  (LightningCLI passes strings), but a module built in Python does.

Measured: checkpoints of both stages written by ``tools.fit`` (EMA callback, ModelCheckpoint, LambdaLR schedule,
AdamW state, the DataModule's state, ``checkpoint["mvlift"]``) need nothing else.

A file that needs more is refused with :class:`UntrustedCheckpointError`, naming the file and the types it asks
for (found by scanning the pickle's opcodes, nothing is run). The tools then say how to go on when the user trusts
the file: ``--trust-checkpoint`` (``trust=True`` here) loads it with full unpickling, with a logged warning. There is
no silent fallback from the safe load to the unsafe one.

Example:
    >>> import io, pathlib, torch
    >>> buf = io.BytesIO(); torch.save({"lpips_weights": pathlib.Path("w.pth"), "step": 3}, buf); _ = buf.seek(0)
    >>> sorted(load_checkpoint(buf))
    ['lpips_weights', 'step']
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import pickle
import re
from collections.abc import Iterator
from typing import IO, Any

import torch

log = logging.getLogger("mvlift.artifacts")

SAFE_GLOBALS: tuple[type, ...] = (pathlib.PosixPath, pathlib.WindowsPath)
TRUST_FLAG = "--trust-checkpoint"

_GLOBAL_RE = re.compile(r"GLOBAL (\S+) was not an allowed global")


class UntrustedCheckpointError(ValueError):
    """A checkpoint file asks to unpickle a type outside ``weights_only`` + :data:`SAFE_GLOBALS`."""

    def __init__(self, path: str, types: list[str]):
        self.path, self.types = path, types
        what = ", ".join(types) if types else "objects that weights_only loading refuses"
        super().__init__(
            f"{path}: refused to load: the file asks to unpickle {what}, which mvlift checkpoints never contain "
            f"(they hold tensors, plain Python values and {', '.join(_name(t) for t in SAFE_GLOBALS)}); unpickling "
            f"it could run code from the file. If you trust the file and whoever wrote it, pass {TRUST_FLAG}."
        )


def _name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


@contextlib.contextmanager
def allowed_globals() -> Iterator[None]:
    """``weights_only`` loads inside this block may also build :data:`SAFE_GLOBALS` (for Lightning's own loaders:
    ``load_from_checkpoint(..., weights_only=True)``, ``trainer.fit(..., weights_only=True)``)."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        yield


def unsafe_types(path: str | os.PathLike) -> list[str]:
    """The types a torch zip checkpoint asks for beyond ``weights_only`` + :data:`SAFE_GLOBALS` (its pickle's
    opcodes are scanned, nothing is run); [] for a file that needs nothing more or that is not a torch zip file."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint (legacy format, truncated): the load itself says what is wrong  # noqa: BLE001
        return []
    allowed = {_name(t) for t in SAFE_GLOBALS}
    return [t for t in found if t not in allowed]


def check_loadable(path: str | os.PathLike, trust: bool = False) -> None:
    """Raise :class:`UntrustedCheckpointError` when ``path`` needs more than the safe load allows (unless
    ``trust``): for loads mvlift does not make itself (Lightning's resume), checked before they start."""
    if trust:
        return
    types = unsafe_types(path)
    if types:
        raise UntrustedCheckpointError(str(path), types)


def refusal(path: str | os.PathLike | IO[bytes], error: BaseException) -> UntrustedCheckpointError:
    """The named error for a failed ``weights_only`` load of ``path``."""
    types = unsafe_types(path) if isinstance(path, (str, os.PathLike)) else []
    if not types:
        types = sorted(set(_GLOBAL_RE.findall(str(error))))
    return UntrustedCheckpointError(str(path if isinstance(path, (str, os.PathLike)) else "<stream>"), types)


def load_checkpoint(path: str | os.PathLike | IO[bytes], *, trust: bool = False, map_location: Any = "cpu",
                    mmap: bool | None = None) -> Any:
    """``torch.load`` of a user's file: ``weights_only=True`` with :data:`SAFE_GLOBALS`; a file that needs more
    raises :class:`UntrustedCheckpointError`. ``trust=True`` (the tools' ``--trust-checkpoint``): full
    unpickling, logged."""
    if isinstance(path, io.IOBase):
        mmap = None
    if trust:
        log.warning("%s: loading with full unpickling (%s): code in the file can run", path, TRUST_FLAG)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with allowed_globals():
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise refusal(path, e) from None


def load_lightning_module(cls: type, path: str | os.PathLike, *, trust: bool = False, **kwargs: Any) -> Any:
    """``cls.load_from_checkpoint(path, **kwargs)`` through the same rule as :func:`load_checkpoint`."""
    check_loadable(path, trust)
    if trust:
        return cls.load_from_checkpoint(str(path), weights_only=False, **kwargs)
    try:
        with allowed_globals():
            return cls.load_from_checkpoint(str(path), weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise refusal(path, e) from None


__all__ = [
    "SAFE_GLOBALS", "TRUST_FLAG", "UntrustedCheckpointError", "allowed_globals", "check_loadable", "load_checkpoint",
    "load_lightning_module", "refusal", "unsafe_types",
]
