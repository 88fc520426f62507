"""Data configs as files: the MultiViewDataModule's init arguments read from YAML (tools.evaluate, tools.synthesize).

A data config is ``configs/data/*.yaml`` (the arguments themselves, or ``class_path`` / ``init_args``) or a fit
config whose ``data:`` holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_data_config(path: Path) -> dict[str, Any]:
    """DataModule init args from a YAML data config (plain, ``init_args:`` or a fit config's ``data:``)."""
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


__all__ = ["load_data_config"]
