"""Checkpoint and export artifacts: the one home of their format, and of what ``torch.load`` may build from a
user's file.

The format. A stage's artifact is a Lightning ``.ckpt`` or an export folder; both carry the same metadata
(docs/ARCHITECTURE.md, "Checkpoint metadata"): ``stage``, ``rig``, ``version``, the training ``background`` and the
stage's own keys, in ``checkpoint["mvlift"]`` of a ``.ckpt`` and in :data:`METADATA_FILE` of an export folder (with
the constructor arguments under ``hparams``; a ``.ckpt`` keeps them in Lightning's ``hyper_parameters``). An export
folder also holds :data:`RIG_FILE`, a model card :data:`MODEL_CARD_FILE` and the stage's weights, :data:`WEIGHTS`
and, when it was exported with them, :data:`EMA_WEIGHTS` (a diffusion export is also a diffusers pipeline folder:
:data:`MODEL_INDEX_FILE` and :data:`PIPELINE_FILE`, ``lightning_modules.mv_pipeline``); a ``.ckpt`` holds the EMA
callback's shadow in its callback state. The readers
(:func:`checkpoint_metadata`, :func:`checkpoint_stage`, :func:`checkpoint_rig`, :func:`checkpoint_hparams`,
:func:`checkpoint_background`, :func:`checkpoint_ema_state`, :func:`has_ema_weights`) take either kind; the one
writer of an export's metadata is :func:`write_export_metadata` (``StageModule.export``, ``tools.convert``). Nothing
else knows these names. The diffusion export's diffusers sub-folders (``unet/``, ``vae/``, ...) keep their own
``config.json`` files (``lightning_modules.pretrained``).

Safe loading.

``torch.load`` unpickles, and a pickle may name any importable callable, so loading a ``.ckpt`` / ``.pt`` from
elsewhere with ``weights_only=False`` can run code. Every load of a user-supplied file in mvlift (the metadata
readers above, ``lightning_modules.loading.load_stage``, ``tools.convert``, ``tools.fit``'s resume) goes through this
module: ``weights_only=True`` (tensors, dicts, lists, tuples, sets, numbers, strings, ``torch.dtype`` /
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
    >>> METADATA_FILE, RIG_FILE, WEIGHTS["reconstruction"], EMA_WEIGHTS["diffusion"]
    ('mvlift.json', 'rig.json', 'model.safetensors', 'unet_ema')
    >>> buf = io.BytesIO(); torch.save({"lpips_weights": pathlib.Path("w.pth"), "step": 3}, buf); _ = buf.seek(0)
    >>> sorted(load_checkpoint(buf))
    ['lpips_weights', 'step']
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from geometry.rig import Rig
from lightning_modules.hparams import init_hparams

log = logging.getLogger("mvlift.artifacts")

SAFE_GLOBALS: tuple[type, ...] = (pathlib.PosixPath, pathlib.WindowsPath)
TRUST_FLAG = "--trust-checkpoint"

# ---- the format: one place that knows the names ----------------------------------------------------------------
STAGES = ("diffusion", "reconstruction")
FORMAT_VERSION = 1
CKPT_KEY = "mvlift"                 # checkpoint["mvlift"]: the metadata of a .ckpt
METADATA_FILE = "mvlift.json"       # an export folder's metadata (both stages), with "hparams"
RIG_FILE = "rig.json"               # an export folder's rig (Rig.to_dict())
WEIGHTS = {"diffusion": "unet", "reconstruction": "model.safetensors"}  # an export's weights (diffusion: a folder)
EMA_WEIGHTS = {"diffusion": "unet_ema", "reconstruction": "model_ema.safetensors"}  # its EMA weights, when exported
MODEL_CARD_FILE = "README.md"      # an export's model card (both stages; StageModule.export)
MODEL_INDEX_FILE = "model_index.json"  # a diffusion export's diffusers pipeline index (lightning_modules.mv_pipeline)
PIPELINE_FILE = "pipeline.py"       # ... and its custom-pipeline file, importing mvlift's MVLiftPipeline

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


# ---- reading an artifact: a .ckpt or an export folder -------------------------------------------------------------
class MissingMetadataError(FileNotFoundError):
    """An export folder without :data:`METADATA_FILE` (not written by an mvlift export or ``tools.convert``)."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable {what} ({e})") from e


def _load_ckpt(path: Path, trust: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a complete torch checkpoint (truncated or another format)")
    return load_checkpoint(path, trust=trust, mmap=True)  # weights_only unless trusted


def checkpoint_metadata(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """The metadata stored with a ``.ckpt`` (``checkpoint["mvlift"]``) or an export folder (:data:`METADATA_FILE`);
    errors name the file or folder when it is missing, unreadable or not written by an mvlift module."""
    path = Path(path)
    if path.is_dir():
        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            raise MissingMetadataError(f"{path}: export folder without {METADATA_FILE} (not written by an mvlift "
                                       "module's export() or tools.convert)")
        meta = _read_json(meta_file, "export metadata")
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file}: export metadata is not a JSON object")
        return meta
    ckpt = _load_ckpt(path, trust)
    meta = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: no checkpoint['{CKPT_KEY}'] metadata (not written by an mvlift module)")  # noqa: TRY004
    return meta


def export_metadata(path: str | os.PathLike, stage: str) -> dict[str, Any]:
    """An export folder's metadata, which must be of ``stage`` (``from_export``'s first read)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not an export folder")
    meta = checkpoint_metadata(path)
    if meta.get("stage") != stage:
        raise ValueError(f"{path / METADATA_FILE}: stage is {meta.get('stage')!r}, expected {stage!r}")
    return meta


def checkpoint_stage(path: str | os.PathLike, trust: bool = False) -> str:
    """``"diffusion"`` or ``"reconstruction"`` as stored with a ``.ckpt`` or export folder (never guessed from the
    name); errors name the file when it is missing, unreadable, unmarked or (without ``trust``) needs unpickling
    beyond the allow-list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stage = checkpoint_metadata(path, trust).get("stage")
    if stage not in STAGES:
        raise ValueError(f"{path}: cannot tell the stage of this {'export folder' if path.is_dir() else 'checkpoint'}"
                         f"; got {stage!r}")
    return stage


def checkpoint_rig(path: str | os.PathLike, trust: bool = False) -> Rig:
    """The rig stored with a ``.ckpt`` (``checkpoint["mvlift"]["rig"]``), an export folder (:data:`RIG_FILE`), a
    view embeddings ``.safetensors`` (``lightning_modules.view_conditioning``: the rig in its metadata; embeddings are
    bound to the rig they were made for) or a rig file itself."""
    path = Path(path)
    if path.is_dir():
        rig_file = path / RIG_FILE
        if not rig_file.is_file():
            raise FileNotFoundError(f"{path}: export folder without {RIG_FILE}")
        return _rig_file(rig_file)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".json":
        return _rig_file(path)
    if path.suffix == ".safetensors":
        return _safetensors_rig(path)
    meta = checkpoint_metadata(path, trust)
    if "rig" not in meta:
        raise ValueError(f"{path}: checkpoint['{CKPT_KEY}'] has no 'rig'")
    try:
        return Rig.from_dict(meta["rig"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad rig in checkpoint['{CKPT_KEY}']['rig']: {e}") from e


def _safetensors_rig(path: Path) -> Rig:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return Rig.from_dict(json.loads(meta["rig"]))
    except KeyError:
        raise ValueError(f"{path}: no rig in the file's metadata (not an mvlift view embeddings file)") from None
    except (ValueError, TypeError, OSError, SafetensorError) as e:
        raise ValueError(f"{path}: bad view embeddings file: {e}") from e


def _rig_file(path: Path) -> Rig:
    try:
        return Rig.from_dict(_read_json(path, "rig file"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad rig file: {e}") from e


def checkpoint_hparams(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """The module's constructor arguments stored with a ``.ckpt`` (Lightning's ``hyper_parameters``) or an export
    folder (:data:`METADATA_FILE`'s ``hparams``), without private and runtime keys
    (:func:`lightning_modules.hparams.init_hparams`)."""
    path = Path(path)
    if path.is_dir():
        return init_hparams(checkpoint_metadata(path).get("hparams") or {})
    ckpt = _load_ckpt(path, trust)
    return init_hparams((ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None) or {})


def checkpoint_background(path: str | os.PathLike, trust: bool = False) -> dict[str, Any] | None:
    """The training-background record (``lightning_modules.training_background``) stored with a ``.ckpt`` or an
    export folder; None when not recorded."""
    return checkpoint_metadata(path, trust).get("background")


def has_ema_weights(path: str | os.PathLike, stage: str) -> bool:
    """Whether an export folder of ``stage`` holds EMA weights (:data:`EMA_WEIGHTS`)."""
    return (Path(path) / EMA_WEIGHTS[stage]).exists()


def checkpoint_ema_state(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The EMA callback's shadow saved in a ``.ckpt`` (``checkpoint["callbacks"][...]["shadow"]``); an error naming
    the file when there is none or more than one."""
    path = Path(path)
    ckpt = _load_ckpt(path, trust)
    found = [state["shadow"] for state in (ckpt.get("callbacks") or {}).values()
             if isinstance(state, dict) and isinstance(state.get("shadow"), dict)]
    if not found:
        raise ValueError(f"{path}: --ema asked for, but the checkpoint holds no EMA callback state (train with "
                         "callbacks.ema.EMA, or use an export folder with EMA weights)")
    if len(found) > 1:
        raise ValueError(f"{path}: {len(found)} EMA callback states in the checkpoint; cannot tell which to use")
    return found[0]


# ---- writing an export's metadata ---------------------------------------------------------------------------------
def write_export_metadata(out: str | os.PathLike, metadata: Mapping[str, Any], hparams: Mapping[str, Any],
                          rig: Rig) -> None:
    """Write :data:`RIG_FILE` and :data:`METADATA_FILE` (``metadata`` + ``hparams``) into the export folder ``out``
    (the weights are the module's; ``callbacks.atomic.atomic_directory`` makes the folder appear whole)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RIG_FILE).write_text(json.dumps(rig.to_dict(), indent=2))
    (out / METADATA_FILE).write_text(json.dumps({**metadata, "hparams": dict(hparams)}, indent=2, default=list))


__all__ = [
    "CKPT_KEY",
    "EMA_WEIGHTS",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "MODEL_CARD_FILE",
    "MODEL_INDEX_FILE",
    "PIPELINE_FILE",
    "RIG_FILE",
    "SAFE_GLOBALS",
    "STAGES",
    "TRUST_FLAG",
    "WEIGHTS",
    "MissingMetadataError",
    "UntrustedCheckpointError",
    "allowed_globals",
    "check_loadable",
    "checkpoint_background",
    "checkpoint_ema_state",
    "checkpoint_hparams",
    "checkpoint_metadata",
    "checkpoint_rig",
    "checkpoint_stage",
    "export_metadata",
    "has_ema_weights",
    "load_checkpoint",
    "load_lightning_module",
    "refusal",
    "unsafe_types",
    "write_export_metadata",
]
