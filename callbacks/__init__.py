"""Callbacks that own a run's side effects: paths and exports, atomic checkpoints, EMA, image logs, the rig guard."""

from callbacks.atomic import AtomicCheckpointIO, is_complete_checkpoint
from callbacks.ema import EMA
from callbacks.image_log import ImageLogger
from callbacks.paths import CheckpointPaths
from callbacks.rig_guard import RigMismatchError, check_rigs
from callbacks.run_layout import PathError, RunConflictError, RunPaths

__all__ = [
    "EMA", "AtomicCheckpointIO", "CheckpointPaths", "ImageLogger", "PathError", "RigMismatchError",
    "RunConflictError", "RunPaths", "check_rigs", "is_complete_checkpoint",
]
