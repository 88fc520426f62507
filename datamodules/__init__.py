"""Data for both stages: sources (procedural, FaceLift folders, shards), mixing, view selection, augmentation and
the MultiViewDataModule. Import submodules directly for the rest (datamodules.procedural.make_scene, ...)."""

from __future__ import annotations

from typing import Any

__all__ = ["MultiViewDataModule"]


def __getattr__(name: str) -> Any:  # lazy: importing datamodules.procedural need not import Lightning
    if name == "MultiViewDataModule":
        from datamodules.datamodule import MultiViewDataModule

        return MultiViewDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
