"""Load a stage from a Lightning ``.ckpt`` or an export folder, whichever the user points at (the tools and the
evaluation library).

A checkpoint's stage, rig and EMA weights are read through :mod:`lightning_modules.artifacts` (the format's one
home: :func:`~lightning_modules.artifacts.checkpoint_stage`, :func:`~lightning_modules.artifacts.checkpoint_rig`,
re-exported here for the tools), never guessed from the file name.

Files are read without unpickling code (``weights_only=True`` with the allow-list of
:mod:`lightning_modules.artifacts`); a file that needs more is refused naming the file and the types, unless the
caller passes ``trust=True`` (the tools' ``--trust-checkpoint``).

``--ema`` in the tools picks the EMA weights: those of an export folder, or the EMA callback's shadow saved in a
``.ckpt`` (:func:`lightning_modules.artifacts.checkpoint_ema_state`).

Example:
    >>> spec = parse_labelled("finetuned=runs/mouse/r1/checkpoints/last.ckpt")
    >>> spec.label, spec.path.name
    ('finetuned', 'last.ckpt')
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from lightning_modules.artifacts import (
    UntrustedCheckpointError,
    checkpoint_ema_state,
    checkpoint_rig,
    checkpoint_stage,
    load_lightning_module,
)

log = logging.getLogger("mvlift.checkpoints")

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+@-]+$")


@dataclasses.dataclass(frozen=True)
class Labelled:
    """A path with the short name the result tables use for it."""

    label: str
    path: Path


def parse_labelled(spec: str) -> Labelled:
    """``LABEL=PATH`` or ``PATH`` (label derived from the path, see :func:`default_label`). A label holds letters,
    digits and ``_ . + @ -``; anything else before a ``=`` (``runs/a/checkpoints/step=5.ckpt``) is part of a path."""
    label, eq, path = spec.partition("=")
    if eq and _LABEL_RE.match(label) and not Path(spec).exists():  # else a path holding '=' (step=5.ckpt)
        if not path:
            raise ValueError(f"{spec!r}: no path after '='")
        return Labelled(label, Path(path))
    return Labelled(default_label(Path(spec)), Path(spec))


def default_label(path: Path) -> str:
    """A short name for a checkpoint or config path: ``<run>/<file stem>`` for ``<run>/checkpoints/x.ckpt``,
    ``<run>/<step_N>`` for ``<run>/export/step_N``, else the file stem / folder name."""
    path = Path(path)
    name = path.stem if path.suffix in (".ckpt", ".yaml", ".yml", ".json", ".pt", ".pth") else path.name
    parent = path.parent
    if parent.name in ("checkpoints", "export") and parent.parent.name:
        return f"{parent.parent.name}/{name}"
    return name or str(path)


def unique_labels(items: list[Labelled]) -> list[Labelled]:
    """Make labels unique by appending ``#2``, ``#3``... (the table rows must be told apart)."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        n = seen.get(it.label, 0) + 1
        seen[it.label] = n
        out.append(it if n == 1 else Labelled(f"{it.label}#{n}", it.path))
    return out


def _module_class(stage: str) -> type:
    if stage == "diffusion":
        from lightning_modules.diffusion.module import DiffusionModule

        return DiffusionModule
    from lightning_modules.reconstruction.module import ReconstructionModule

    return ReconstructionModule


def load_stage(path: str | os.PathLike, stage: str | None = None, ema: bool = False,
               device: str | torch.device = "cpu", trust: bool = False, **overrides: Any) -> Any:
    """The LightningModule saved at ``path`` (``.ckpt`` or export folder), in eval mode on ``device``.

    ``stage``: the stage the caller needs; a checkpoint of the other stage is an error naming the file.
    ``overrides``: constructor arguments to change (e.g. ``rasterizer="torch"``); unknown ones are dropped with a
    debug log, so the same call works for both stages.
    ``trust``: load a ``.ckpt`` with full unpickling (``--trust-checkpoint``); without it a file that needs more
    than :data:`lightning_modules.artifacts.SAFE_GLOBALS` is refused (:class:`UntrustedCheckpointError`).
    """
    path = Path(path)
    found = checkpoint_stage(path, trust)
    if stage is not None and found != stage:
        raise ValueError(f"{path}: is a {found} checkpoint, but a {stage} checkpoint is needed here")
    cls = _module_class(found)

    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kept = {k: v for k, v in overrides.items() if k in known}
    if len(kept) != len(overrides):
        log.debug("load_stage(%s): ignored overrides %s", path, sorted(set(overrides) - set(kept)))
    if path.is_dir():
        module = cls.from_export(path, ema=ema, **kept)
    else:
        module = load_lightning_module(cls, path, trust=trust, map_location="cpu", **kept)
        if ema:
            target = getattr(module, module.ema_target)
            shadow = checkpoint_ema_state(path, trust)
            own = target.state_dict()
            state = {k: v.to(own[k].dtype) if k in own else v for k, v in shadow.items()}
            target.load_state_dict(state, strict=True)
    module.eval()
    return module.to(device)


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N``; ``cuda`` without a CUDA device is an error (never a silent fallback)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device available")
    return device


__all__ = [
    "Labelled", "UntrustedCheckpointError", "checkpoint_rig", "checkpoint_stage", "default_label", "load_stage", "parse_labelled",
    "resolve_device", "unique_labels",
]
