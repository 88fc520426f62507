"""Camera geometry shared by both stages: conventions, rigs, rays (OpenCV cameras, Z-up world by default)."""

from geometry.rig import Rig, RigDiff, available_rigs, load_rig

__all__ = ["Rig", "RigDiff", "available_rigs", "load_rig"]
