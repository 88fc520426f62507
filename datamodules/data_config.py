"""Data configs as files: the MultiViewDataModule's init arguments read from YAML (tools.evaluate, tools.synthesize).

A data config is ``configs/data/*.yaml`` (the arguments themselves, or ``class_path`` / ``init_args``) or a fit
config whose ``data:`` holds them.

The configs ship with the package (``configs/`` is package data): :func:`find_config` resolves a config path that
does not exist relative to the working directory in the installed ``configs/`` folder, so ``recipes/X.yaml`` and
``configs/recipes/X.yaml`` work from any folder (``mvlift fit -c recipes/gslrm_procedural_128.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"  # beside the packages: the checkout's or the installed


def find_config(path: str | Path) -> Path:
    """``path`` when it exists (relative to the working directory, or absolute); else the shipped config of that name
    (``CONFIGS_DIR / path``, or with a leading ``configs/`` dropped) when there is one; else ``path`` unchanged, for
    the caller's own not-found error."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = CONFIGS_DIR.joinpath(*parts) if parts else None
    if shipped is not None and shipped.is_file() and ".." not in parts:
        return shipped
    return path


def load_data_config(path: Path) -> dict[str, Any]:
    """DataModule init args from a YAML data config (plain, ``init_args:`` or a fit config's ``data:``); a path that
    is not there is looked up among the shipped configs (:func:`find_config`)."""
    path = find_config(path)
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
        cfg = cfg["data"]
    if isinstance(cfg, dict) and ("class_path" in cfg or "init_args" in cfg):
        cfg = cfg.get("init_args") or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a data config must be a mapping of MultiViewDataModule arguments")  # noqa: TRY004
    return dict(cfg)


__all__ = ["CONFIGS_DIR", "find_config", "load_data_config"]
