"""A run's identity: what makes a run folder this config's (``run.json``), and the refusals that follow from it.

:func:`run_identity` hashes the model's and the DataModule's hyper-parameters except ``EXECUTION_ONLY`` and
``RUN_LENGTH`` ones; ``--resume auto`` finds the newest run with that hash (:func:`find_matching_run`), and a run
folder of another config is refused naming each differing key (:func:`check_identity`, :func:`identity_differences`);
so is a folder that already holds checkpoints when not resuming (:func:`check_no_checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from callbacks.run_layout import RUN_JSON, RunConflictError, RunPaths
from lightning_modules.hparams import RUNTIME


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj) if not hasattr(obj, "to_dict") else _jsonable(obj.to_dict())


# Hyper-parameters that change how fast a run goes, never what it computes: left out of the config hash so a run
# can be resumed on a machine with other cores (loader workers), another GPU (attention kernel) or with compilation /
# checkpointing switched: the loader's settings, gradient checkpointing, and the modules' RUNTIME settings (compile,
# attention kernel; what exports leave out).
EXECUTION_ONLY = frozenset({"num_workers", "persistent_workers", "pin_memory", "prefetch_factor", "grad_checkpointing",
                            *RUNTIME})
# The run length is the trainer's (StageModule.schedule_steps): a module's max_steps is its fallback, not the run's
# identity, so extending a run is never "another config".
RUN_LENGTH = frozenset({"max_steps"})


def _identity_hparams(obj: Any) -> dict[str, Any] | None:
    """``obj``'s hyper-parameters as JSON, without ``EXECUTION_ONLY``, ``RUN_LENGTH`` and ``_``-prefixed (LightningCLI)
    keys. None for no ``obj``."""
    if obj is None:
        return None
    hp = dict(getattr(obj, "hparams", {}) or {})
    return _jsonable({k: v for k, v in hp.items() if k not in EXECUTION_ONLY | RUN_LENGTH and not str(k).startswith("_")})


def run_identity(pl_module: pl.LightningModule, datamodule: Any = None) -> dict[str, Any]:
    """What makes a run this run: stage, rig (name + fingerprint), and a hash of the model's and the
    DataModule's hyper-parameters except ``EXECUTION_ONLY`` ones. Trainer settings (steps, devices, precision) are
    not part of it."""
    meta = pl_module.mvlift_metadata() if hasattr(pl_module, "mvlift_metadata") else {}
    stage = meta.get("stage", type(pl_module).__name__)
    rig = getattr(pl_module, "rig", None)
    rig_info = {"name": rig.name, "fingerprint": rig.fingerprint} if hasattr(rig, "fingerprint") else None
    payload = {
        "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
        "model": _identity_hparams(pl_module),
        "data_class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}" if datamodule else None,
        "data": _identity_hparams(datamodule),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return {"config_hash": digest, "stage": stage, "rig": rig_info,
            "model_class": payload["model_class"],
            "data_class": payload["data_class"],
            "hparams": flat_identity_hparams(payload)}


# a value whose JSON is longer than this is stored in run.json as its digest (run.json stays small; a change in it
# is still named by its key)
LONG_VALUE = 120


def flat_identity_hparams(payload: dict[str, Any]) -> dict[str, Any]:
    """The hashed hyper-parameters as one flat ``{"model.lr": 0.001, "data.sources.0.name": "syn", ...}`` mapping
    (what ``run.json`` stores so that a conflict names the keys that differ); long values become ``sha256:<12>``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            text = json.dumps(value, sort_keys=True)
            flat[prefix] = value if len(text) <= LONG_VALUE else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]

    for part in ("model", "data"):
        walk(part, payload.get(part))
    return flat


def identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"KEY: STORED -> CURRENT"`` for each class or hyper-parameter that differs between a run.json and an
    identity (``<unset>`` for a key only one side has); empty when the stored record predates ``hparams``."""
    out = [f"{k}: {stored.get(k)} -> {current.get(k)}" for k in ("model_class", "data_class")
           if k in stored and stored.get(k) != current.get(k)]
    a, b = stored.get("hparams"), current.get("hparams") or {}
    if not isinstance(a, dict):
        return out
    unset = "<unset>"
    for k in sorted(set(a) | set(b)):
        if a.get(k, unset) != b.get(k, unset):
            out.append(f"{k}: {json.dumps(a.get(k, unset))} -> {json.dumps(b.get(k, unset))}")
    return out


def find_matching_run(experiment_dir: Path, config_hash: str) -> str | None:
    """Newest run of an experiment with the same config hash and a complete checkpoint (for ``resume: auto``)."""
    if not experiment_dir.is_dir():
        return None
    best: tuple[int, str] | None = None
    for d in experiment_dir.iterdir():
        info_path = d / RUN_JSON
        if not info_path.is_file():
            continue
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            continue
        if info.get("config_hash") != config_hash:
            continue
        latest = RunPaths(experiment_dir.parent, experiment_dir.name, d.name).latest_checkpoint()
        if latest is not None:
            key = (latest.stat().st_mtime_ns, d.name)
            best = max(best, key) if best else key
    return best[1] if best else None


def check_identity(paths: RunPaths, identity: dict[str, Any]) -> None:
    """Refuse a run folder whose ``run.json`` records another config, naming the keys that differ."""
    stored = paths.read_run_info()
    if stored is not None and stored.get("config_hash") != identity["config_hash"]:
        diffs = identity_differences(stored, identity)
        differing = ("; differing (stored -> this run): " + "; ".join(diffs)) if diffs else (
            "; its run.json does not record the hyper-parameters, so the differing keys are unknown")
        raise RunConflictError(
            f"run folder {paths.run_dir} belongs to another config (stored: stage {stored.get('stage')!r}, "
            f"rig {(stored.get('rig') or {}).get('name')!r}, config hash {stored.get('config_hash')}; this run: "
            f"stage {identity['stage']!r}, rig {(identity['rig'] or {}).get('name')!r}, config hash "
            f"{identity['config_hash']}){differing}. Use another run name or experiment."
        )


def check_no_checkpoints(paths: RunPaths, resuming: bool) -> None:
    """Refuse a run folder that already holds checkpoints unless the run resumes."""
    if not resuming and paths.checkpoints():
        raise RunConflictError(
            f"run folder {paths.run_dir} already holds checkpoints; pass resume=auto (tools.fit: --resume "
            "auto) to continue it, or choose another run name"
        )


def run_record(identity: dict[str, Any], paths: RunPaths, created: str) -> dict[str, Any]:
    """What ``run.json`` stores: the identity, experiment, run and creation time."""
    return {**identity, "experiment": paths.experiment,
            "run": paths.run, "created": created}


__all__ = ["EXECUTION_ONLY", "LONG_VALUE", "RUN_LENGTH", "RunConflictError", "check_identity", "check_no_checkpoints",
           "find_matching_run", "flat_identity_hparams", "identity_differences", "run_identity", "run_record"]
