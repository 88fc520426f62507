"""``tools.fit``'s config checks: what a config gets wrong, named by its key, before anything is built or written.

A bad value that reaches the constructors or the DataLoader ends as a 50-70-line traceback (jsonargparse's union
error around the real one, or a crash inside ``trainer.fit`` after the run folder was made). These checks run on the
parsed config (:meth:`callbacks.fit_cli.FitCLI.before_instantiate_classes`) and raise :class:`ConfigError` naming the
key as it is given on the command line (``data.init_args.batch_size: must be an integer >= 1, got 0``); tools.fit
prints it as one line with exit code 2. A constructor's own error (any other bad value) is turned into one line naming
the section and class (:func:`constructor_error`). :func:`check_resume_hparams` refuses resuming a checkpoint with an
optimizer setting that the restored optimizer would silently override.

Example:
    >>> check_data_config({"class_path": "datamodules.MultiViewDataModule", "init_args": {"batch_size": 0}})
    Traceback (most recent call last):
    ...
    callbacks.fit_config.ConfigError: data.init_args.batch_size: must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geometry.rig import load_rig


class ConfigError(ValueError):
    """A config value tools.fit cannot run with, named by its key."""


def _plain(value: Any) -> Any:
    """jsonargparse Namespaces as dicts (recursively), so the checks read plain mappings."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _integer(init: Mapping[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = init.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def _section(config: Mapping[str, Any], name: str) -> tuple[dict[str, Any], str]:
    section = _plain(config.get(name)) or {}
    if not isinstance(section, Mapping):
        return {}, name
    if "init_args" in section or "class_path" in section:
        return dict(section.get("init_args") or {}), f"{name}.init_args"
    return dict(section), name


def check_data_config(data: Any, where: str = "data") -> None:
    """The DataModule section: image_size, batch_size, num_views / num_input_views, the rig, every source's keys and
    weight (:data:`datamodules.sources.SOURCE_KEYS`)."""
    init, where = _section({"data": data}, "data")
    if not init:
        return
    _integer(init, "image_size", where, 1)
    _integer(init, "batch_size", where, 1)
    _integer(init, "num_workers", where, 0)
    views = _integer(init, "num_views", where, 1)
    inputs = _integer(init, "num_input_views", where, 1)
    if init.get("stage", "reconstruction") == "reconstruction" and views is not None and inputs is not None \
            and inputs > views:
        raise ConfigError(f"{where}.num_input_views: {inputs} input views but num_views is {views} "
                          f"({where}.num_views); the inputs are drawn from the scene's num_views views")
    if init.get("rig") is not None:
        try:
            load_rig(init["rig"])
        except (ValueError, OSError) as e:
            raise ConfigError(f"{where}.rig: {e}") from None
    for key in ("sources", "val_sources"):
        _check_sources(init.get(key), f"{where}.{key}")


def _check_sources(sources: Any, where: str) -> None:
    from datamodules.sources import SOURCE_KEYS  # the data package only when there are sources to check

    if sources is None:
        return
    if not isinstance(sources, (list, tuple)):
        raise ConfigError(f"{where}: must be a list of source mappings, got {type(sources).__name__}")
    for i, src in enumerate(sources):
        here = f"{where}[{i}]"
        if not isinstance(src, Mapping):
            raise ConfigError(f"{here}: a source must be a mapping ({{name: ..., kind: ..., format: ...}}), got "
                              f"{src!r}"[:300])
        here += f" ({src['name']})" if src.get("name") else ""
        unknown = sorted(set(src) - SOURCE_KEYS)
        if unknown:
            raise ConfigError(f"{here}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(SOURCE_KEYS))}")
        weight = src.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"{here}.weight: must be a finite number >= 0, got {weight!r}")


def check_model_config(model: Any) -> None:
    """The model section: ``init_from`` must be an export folder or a ``.safetensors`` file that exists (a Lightning
    ``.ckpt`` is resumed with ``--resume PATH``, not loaded as starting weights)."""
    init, where = _section({"model": model}, "model")
    init_from = init.get("init_from")
    if not init_from:
        return
    path = Path(str(init_from))
    if path.suffix == ".ckpt":
        raise ConfigError(f"{where}.init_from: {path} is a Lightning checkpoint; init_from takes an export folder "
                          "(<run>/export/step_N) or a .safetensors file — continue a run from a .ckpt with --resume "
                          "PATH")
    if not path.exists():
        raise ConfigError(f"{where}.init_from: {path} does not exist (an export folder or a .safetensors file)")


def check_fit_config(config: Any) -> None:
    """Every check above on a parsed tools.fit config (:class:`ConfigError` naming the first bad key)."""
    config = _plain(config)
    check_data_config(config.get("data"))
    check_model_config(config.get("model"))


_CLASS_RE = re.compile(r"class_path='([^']+)'")


def constructor_error(error: BaseException, config: Any) -> ConfigError:
    """One line for an error raised while the config's classes were built: the section (model / data / trainer) and
    class it came from, and the constructor's own message (jsonargparse wraps it in a union-type report)."""
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    found = _CLASS_RE.search(str(error))
    section = "the config"
    if found:
        plain = _plain(config)
        for name in ("model", "data"):
            sec = plain.get(name)
            if isinstance(sec, Mapping) and sec.get("class_path") == found.group(1):
                section = f"{name} ({found.group(1)})"
                break
        else:
            section = found.group(1)
    return ConfigError(f"{section}: {type(cause).__name__}: {message}")


# hyper-parameters a resumed optimizer takes from the checkpoint, whatever the module was built with
OPTIMIZER_STATE_KEYS = ("lr", "lr_groups", "weight_decay", "betas")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def check_resume_hparams(ckpt_path: str | Path, hparams: Mapping[str, Any], trust: bool = False) -> None:
    """Refuse resuming ``ckpt_path`` with ``hparams`` (the module's) whose optimizer settings differ from the
    checkpoint's: Lightning restores the optimizer's state, learning rates and schedule base rates included, so a
    changed ``lr`` would be recorded in the run's hyper-parameters but not used. Names every differing key."""
    from lightning_modules.artifacts import checkpoint_hparams  # torch: only when resuming

    stored = checkpoint_hparams(ckpt_path, trust)
    changed = [f"model.{k}: {stored.get(k)!r} -> {hparams.get(k)!r}" for k in OPTIMIZER_STATE_KEYS
               if k in stored and k in hparams and not _same(stored.get(k), hparams.get(k))]
    if changed:
        raise ConfigError(f"--resume {ckpt_path}: the checkpoint's optimizer was built with other settings "
                          f"({'; '.join(changed)}); resuming restores its learning rates and betas, so the new values "
                          "would be recorded but not used. Resume with the checkpoint's values, or start a new run "
                          "from one of the run's exports (export/step_N: the GS-LRM's init_from, the diffusion "
                          "model's pretrained)")


__all__ = ["OPTIMIZER_STATE_KEYS", "ConfigError", "check_data_config", "check_fit_config", "check_model_config",
           "check_resume_hparams", "constructor_error"]
