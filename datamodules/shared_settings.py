"""Settings that the model and the data both need, declared once: in the data.

The camera rig, the image size and, for reconstruction, the number of input views and whether the inputs are also
supervised describe the batches; a model built for other values either fails late or, worse, trains on what the data
serves while its hyper-parameters (and its export) say something else. So ``tools.fit`` declares them once, in the
data section, and links each into the model (LightningCLI ``link_arguments``); setting one in the model section as
well is refused before anything is built, naming the key and where it was set (:func:`given_on_model`).

Pairing a trained model with data outside ``tools.fit`` (``tools.evaluate``, ``init_from``) compares every shared key
at once (:func:`differences`), so a report names all of them, not the first.

Example:
    >>> differences({"rig": "a", "image_size": 128, "num_input_views": 4}, {"rig": "a", "image_size": 256})
    {'image_size': (128, 256)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from geometry.rig import load_rig

# key -> the stages whose model takes it (the DataModule takes all of them)
SHARED_SETTINGS: dict[str, tuple[str, ...]] = {
    "rig": ("diffusion", "reconstruction"),
    "image_size": ("diffusion", "reconstruction"),
    "num_input_views": ("reconstruction",),
    "supervise_inputs": ("reconstruction",),
}


class SharedSettingError(ValueError):
    """A shared setting was given to the model as well as (or instead of) the data."""


def link_shared_settings(parser: Any) -> None:
    """``data.init_args.KEY -> model.init_args.KEY`` for every shared key (a model class without the key, e.g. the
    diffusion module's ``num_input_views``, is left alone by jsonargparse)."""
    for key in SHARED_SETTINGS:
        parser.link_arguments(f"data.init_args.{key}", f"model.init_args.{key}", apply_on="parse")


def _model_keys(cfg: Any) -> set[str]:
    if not isinstance(cfg, Mapping):
        return set()
    init = cfg.get("init_args", cfg)  # a model section or its init_args, as jsonargparse accepts both
    return {k for k in (init if isinstance(init, Mapping) else {}) if k in SHARED_SETTINGS}


def given_on_model(args: Sequence[str]) -> list[tuple[str, str]]:
    """(key, where) for every shared key set on the model in a command line: in a config file (``-c`` / ``--config``),
    a ``--model`` file or mapping, or ``--model.init_args.KEY`` / ``--model.KEY``."""
    found: list[tuple[str, str]] = []
    args = list(args)
    for i, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
        if name in ("-c", "--config") and value and Path(value).is_file():
            cfg = yaml.safe_load(Path(value).read_text()) or {}
            found += [(k, value) for k in sorted(_model_keys(cfg.get("model") if isinstance(cfg, Mapping) else None))]
        elif name == "--model" and value:
            path = Path(value)
            cfg = yaml.safe_load(path.read_text()) if path.is_file() else yaml.safe_load(value)
            found += [(k, value if path.is_file() else "--model") for k in sorted(_model_keys(cfg))]
        elif name.startswith("--model."):
            key = name.rsplit(".", 1)[-1]
            if key in SHARED_SETTINGS and name in (f"--model.init_args.{key}", f"--model.{key}"):
                found.append((key, name))
    return found


def check_not_on_model(args: Sequence[str]) -> None:
    """SharedSettingError naming every shared key set on the model (:func:`given_on_model`)."""
    found = given_on_model(args)
    if found:
        where = "; ".join(f"{key} (in {place})" for key, place in found)
        keys = ", ".join(sorted({key for key, _ in found}))
        raise SharedSettingError(
            f"set on the model: {where}. {keys} {'is' if len(found) == 1 else 'are'} declared once, in the data "
            f"(data.init_args.KEY), and linked into the model; remove {'it' if len(found) == 1 else 'them'} from "
            "the model section")


def model_args(cfg: Mapping[str, Any], stage: str | None = None) -> dict[str, Any]:
    """A fit config's model ``init_args`` with the shared settings of its data section filled in, as ``tools.fit``
    links them: for building the model of a config in Python. ``stage``: the model's (default: the data's)."""
    model = dict((cfg.get("model") or {}).get("init_args") or {})
    data = (cfg.get("data") or {}).get("init_args") or {} if isinstance(cfg.get("data"), Mapping) else {}
    stage = stage or data.get("stage", "reconstruction")
    model.update({k: data[k] for k, stages in SHARED_SETTINGS.items() if k in data and stage in stages})
    return model


def differences(model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (model's value, data's value)} for every shared key both declare with different values."""
    out = {}
    for key in SHARED_SETTINGS:
        declared = model.get(key) is not None and data.get(key) is not None
        if declared and not _same(key, model[key], data[key]):
            out[key] = (model[key], data[key])
    return out


def _normal(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _same(key: str, a: Any, b: Any) -> bool:
    if _normal(a) == _normal(b):
        return True
    if key == "rig":  # a name and a file of the same cameras are the same rig

        try:
            return load_rig(a).fingerprint == load_rig(b).fingerprint
        except (OSError, ValueError, KeyError):
            return False
    return False


def describe(diffs: Mapping[str, tuple[Any, Any]], model_name: str = "model", data_name: str = "data") -> str:
    """``image_size 128 (model) vs 256 (data); rig a (model) vs b (data)``."""
    return "; ".join(f"{k} {m!r} ({model_name}) vs {d!r} ({data_name})" for k, (m, d) in diffs.items())


__all__ = ["SHARED_SETTINGS", "SharedSettingError", "check_not_on_model", "describe", "differences", "given_on_model",
           "link_shared_settings", "model_args"]
