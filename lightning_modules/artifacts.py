"""Checkpoint and export artifacts: the one home of their format, and of what ``torch.load`` may build from a
user's file.

The format. A stage's artifact is a Lightning ``.ckpt`` or an export folder; both carry the same metadata
(docs/ARCHITECTURE.md, "Checkpoint metadata"): ``stage``, ``rig``, ``version``, the training ``background`` and the
stage's own keys, in ``checkpoint["mvlift"]`` of a ``.ckpt`` and in :data:`METADATA_FILE` of an export folder (with
the constructor arguments under ``hparams``; a ``.ckpt`` keeps them in Lightning's ``hyper_parameters``). An export
folder also holds :data:`RIG_FILE`, a model card :data:`MODEL_CARD_FILE` and the stage's weights, :data:`WEIGHTS`
and, when it was exported with them, :data:`EMA_WEIGHTS` (a diffusion export is also a diffusers pipeline folder:
:data:`MODEL_INDEX_FILE` and :data:`PIPELINE_FILE`, ``lightning_modules.diffusion.mv_pipeline``); a ``.ckpt`` holds the EMA
callback's shadow in its callback state. The readers
(:func:`checkpoint_metadata`, :func:`checkpoint_stage`, :func:`checkpoint_rig`, :func:`checkpoint_hparams`,
:func:`checkpoint_background`, :func:`checkpoint_ema_state`, :func:`has_ema_weights`) take either kind; the one
writer of an export's metadata is :func:`write_export_metadata` (``StageModule.export``, ``tools.convert``). Nothing
else knows these names. The diffusion export's diffusers sub-folders (``unet/``, ``vae/``, ...) keep their own
``config.json`` files (``lightning_modules.diffusion.pretrained``).

Content hashes. A stored copy can rot (a flipped bit, a bad copy) and still load, giving other numbers. Every export's
metadata lists the sha256 of each of its weight files (:data:`HASH_KEY`: ``{relative path: hex}``, written by
:func:`write_export_metadata` after the weights), and a ``.ckpt`` written by a stage module carries the sha256 of
each tensor of its ``state_dict`` (``checkpoint["mvlift"][HASH_KEY]``, and of the EMA callback's shadow under
:data:`EMA_HASH_KEY`; ``StageModule.on_save_checkpoint``). Loading checks them (``StageModule.from_export`` /
``on_load_checkpoint``, :func:`checkpoint_ema_state`) and raises :class:`CorruptWeightsError` naming the file and the
tensor or file that differs. Artifacts written before hashes were recorded load without the check.

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
import hashlib
import importlib
import io
import json
import logging
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
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
MODEL_INDEX_FILE = "model_index.json"  # a diffusion export's diffusers pipeline index (lightning_modules.diffusion.mv_pipeline)
PIPELINE_FILE = "pipeline.py"       # ... and its custom-pipeline file, importing mvlift's MVLiftPipeline

HASH_KEY = "weights_sha256"          # metadata: sha256 of an export's weight files / a .ckpt's state_dict tensors
EMA_HASH_KEY = "ema_sha256"           # checkpoint["mvlift"]: sha256 of the EMA callback's shadow tensors
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")  # files an export's hashes cover
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # weight files loaded through torch.load (pickles)

_GLOBAL_RE = re.compile(r"GLOBAL (\S+) was not an allowed global")
_TRUST: ContextVar[bool] = ContextVar("mvlift_trust_checkpoint", default=False)


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


class CorruptWeightsError(ValueError):
    """Stored weights whose content differs from the sha256 recorded when they were written (module docstring)."""


@contextlib.contextmanager
def trusting(trust: bool | None = None) -> Iterator[None]:
    """Inside the block, loads that are not given ``trust`` explicitly (weights files a model reads while it is built:
    VGG / LPIPS ``.pth``, a pipeline folder's ``.bin``, FaceLift's view embeddings ``.pt``) trust their files when
    ``trust`` is True: the tools' ``--trust-checkpoint``. None keeps the current setting (a scope for
    :func:`set_trust`). The setting is restored when the block ends."""
    token = _TRUST.set(_TRUST.get() if trust is None else bool(trust))
    try:
        yield
    finally:
        _TRUST.reset(token)


def set_trust(trust: bool) -> None:
    """Set the ambient trust of :func:`trusting` (inside such a block: tools.fit reads ``--trust-checkpoint`` from its
    parsed config, after the block began)."""
    _TRUST.set(bool(trust))


def trusted() -> bool:
    """Whether the current block trusts files (:func:`trusting`); False unless a tool's ``--trust-checkpoint`` said so."""
    return _TRUST.get()


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


def load_checkpoint(path: str | os.PathLike | IO[bytes], *, trust: bool | None = None, map_location: Any = "cpu",
                    mmap: bool | None = None) -> Any:
    """``torch.load`` of a user's file: ``weights_only=True`` with :data:`SAFE_GLOBALS`; a file that needs more
    raises :class:`UntrustedCheckpointError`. ``trust=True`` (the tools' ``--trust-checkpoint``): full
    unpickling, logged; None: as the enclosing :func:`trusting` block says (default: not trusted)."""
    trust = trusted() if trust is None else trust
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
    try:
        if trust:
            return cls.load_from_checkpoint(str(path), weights_only=False, **kwargs)
        with allowed_globals():
            return cls.load_from_checkpoint(str(path), weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise refusal(path, e) from None
    except CorruptWeightsError as e:  # StageModule.on_load_checkpoint does not know the file
        raise CorruptWeightsError(f"{path}: {e}") from None


@contextlib.contextmanager
def pickled_weights(folder: str | os.PathLike) -> Iterator[None]:
    """For loaders that call ``torch.load(weights_only=True)`` themselves (diffusers' and transformers'
    ``from_pretrained`` of ``.bin`` weights): every pickled weights file under ``folder`` (:data:`PICKLED_SUFFIXES`)
    is scanned first; one that asks for types beyond ``weights_only`` is refused with
    :class:`UntrustedCheckpointError` naming the file and the types (their own error is a raw UnpicklingError), or,
    inside a trusting block (:func:`trusting`, ``--trust-checkpoint``), those types are allowed for the block, with a
    logged warning."""
    folder = Path(folder)
    extra: list[Any] = []
    files = sorted(p for p in folder.rglob("*") if p.suffix in PICKLED_SUFFIXES and p.is_file()) \
        if folder.is_dir() else []
    for f in files:
        types = unsafe_types(f)
        if not types:
            continue
        if not trusted():
            raise UntrustedCheckpointError(str(f), types)
        log.warning("%s: loading with the types it asks for allowed (%s): %s", f, TRUST_FLAG, ", ".join(types))
        extra += [_import_global(t) for t in types]
    if not extra:
        yield
        return
    with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra]):
        yield


def _import_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# ---- content hashes ---------------------------------------------------------------------------------------------
def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on any device; copied to the host)."""
    t = t.detach()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_sha256(state: Mapping[str, Any]) -> dict[str, str]:
    """{name: :func:`tensor_sha256`} of the tensors of a state dict."""
    return {k: tensor_sha256(v) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_state_sha256(state: Mapping[str, Any] | None, stored: Mapping[str, str] | None, where: str) -> None:
    """Every tensor of ``state`` must have the sha256 ``stored`` for it when it was written
    (:class:`CorruptWeightsError` naming ``where`` and the first tensor that differs); nothing to check without
    ``stored`` (written before hashes were recorded). Names in ``stored`` but not in ``state`` (a diffusion
    checkpoint leaves its frozen parts out) are not checked."""
    if not stored or not isinstance(state, Mapping):
        return
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and stored.get(k) != tensor_sha256(v)]
    if bad:
        raise CorruptWeightsError(
            f"{where}: {len(bad)} tensor{'s' if len(bad) > 1 else ''} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}) differ from the sha256 recorded when it was written: the file is "
            "corrupt (a flipped bit, a bad copy); use another copy")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def export_weight_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of the weight files (:data:`WEIGHT_SUFFIXES`) of an export folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.suffix in WEIGHT_SUFFIXES and p.is_file()}


def verify_export_weights(path: str | os.PathLike, meta: Mapping[str, Any], stage: str, ema: bool = False) -> None:
    """The weight files an export load reads (the EMA weights or the others, :data:`EMA_WEIGHTS`) must have the sha256
    its metadata lists (:data:`HASH_KEY`): :class:`CorruptWeightsError` naming the file otherwise. An export without
    hashes (written before they were recorded) is not checked."""
    path = Path(path)
    stored = meta.get(HASH_KEY)
    if not isinstance(stored, Mapping):
        return
    skip = WEIGHTS[stage] if ema else EMA_WEIGHTS[stage]
    for rel, digest in stored.items():
        if rel == skip or rel.startswith(skip + "/"):
            continue
        f = path / rel
        if f.is_file() and file_sha256(f) != digest:
            raise CorruptWeightsError(f"{f}: its sha256 differs from the one in {path / METADATA_FILE} (written with "
                                      "the export): the file is corrupt (a flipped bit, a bad copy); use another copy")


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
    view embeddings ``.safetensors`` (``lightning_modules.diffusion.view_conditioning``: the rig in its metadata; embeddings are
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
    meta = ckpt.get(CKPT_KEY) if isinstance(ckpt.get(CKPT_KEY), dict) else {}
    check_state_sha256(found[0], meta.get(EMA_HASH_KEY), f"{path}: the EMA weights")
    return found[0]


# ---- writing an export's metadata ---------------------------------------------------------------------------------
def write_export_metadata(out: str | os.PathLike, metadata: Mapping[str, Any], hparams: Mapping[str, Any],
                          rig: Rig) -> None:
    """Write :data:`RIG_FILE` and :data:`METADATA_FILE` (``metadata``, the sha256 of the weight files already in
    ``out`` under :data:`HASH_KEY`, ``hparams``) into the export folder ``out`` (the weights are the module's, written
    first; ``geometry.files.atomic_directory`` makes the folder appear whole)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RIG_FILE).write_text(json.dumps(rig.to_dict(), indent=2))
    meta = {**metadata, HASH_KEY: export_weight_hashes(out), "hparams": dict(hparams)}
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=list))


# ---- sharing an export ----------------------------------------------------------------------------------------------
def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None, create_pr: bool = False) -> str:
    """Upload the export folder ``folder`` as the Hugging Face Hub model repository ``repo_id`` (created when
    missing): the files as they are, the model card (:data:`MODEL_CARD_FILE`, with its metadata) included. Returns
    the commit's URL. ``snapshot_download(repo_id)`` gives the export folder back."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not an export folder (no {METADATA_FILE})")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", create_pr=create_pr,
                             commit_message=commit_message or f"Upload mvlift export {folder.name}")
    return str(getattr(info, "commit_url", info))


__all__ = [
    "CKPT_KEY",
    "EMA_HASH_KEY",
    "EMA_WEIGHTS",
    "FORMAT_VERSION",
    "HASH_KEY",
    "METADATA_FILE",
    "MODEL_CARD_FILE",
    "MODEL_INDEX_FILE",
    "PIPELINE_FILE",
    "RIG_FILE",
    "SAFE_GLOBALS",
    "STAGES",
    "TRUST_FLAG",
    "WEIGHTS",
    "CorruptWeightsError",
    "MissingMetadataError",
    "UntrustedCheckpointError",
    "allowed_globals",
    "check_loadable",
    "check_state_sha256",
    "checkpoint_background",
    "checkpoint_ema_state",
    "checkpoint_hparams",
    "checkpoint_metadata",
    "checkpoint_rig",
    "checkpoint_stage",
    "export_metadata",
    "export_weight_hashes",
    "file_sha256",
    "has_ema_weights",
    "load_checkpoint",
    "load_lightning_module",
    "pickled_weights",
    "push_to_hub",
    "refusal",
    "set_trust",
    "state_sha256",
    "tensor_sha256",
    "trusted",
    "trusting",
    "unsafe_types",
    "verify_export_weights",
    "write_export_metadata",
]
