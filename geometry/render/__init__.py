"""Rendering 3D Gaussians, importable by data and models alike (the procedural generator, GS-LRM, the tools).

- :mod:`geometry.render.gaussians`: the ``Gaussians`` container (a batch of scenes) and its quaternion helpers;
- :mod:`geometry.render.rasterizer`: ``rasterize``, the one entry point, and the backend choice (``resolve_backend``);
- :mod:`geometry.render.torch_rasterizer`: the pure PyTorch reference (CPU or GPU, differentiable);
- :mod:`geometry.render.gsplat_backend`: the gsplat CUDA backend, set up to give the reference's image;
- :mod:`geometry.render.ply`: 3DGS PLY files (``save_ply``, ``load_ply``, ``save_scene_ply``, ``save_inria_model``);
- :mod:`geometry.render.turntable`: turntable cameras around a rig, their frames, and the GIF / MP4 writers.
"""

from geometry.render.gaussians import SH_C0, Gaussians, covariance_3d, quat_to_rotmat
from geometry.render.gsplat_backend import gsplat_available
from geometry.render.ply import PLY_PROPERTIES, load_ply, ply_properties, save_inria_model, save_ply, save_scene_ply
from geometry.render.rasterizer import rasterize, resolve_backend
from geometry.render.torch_rasterizer import project_gaussians
from geometry.render.turntable import (
    TURNTABLE_FORMATS,
    check_video_formats,
    render_turntable,
    turntable_cameras,
    write_gif,
    write_turntable,
)

__all__ = [
    "PLY_PROPERTIES",
    "SH_C0",
    "TURNTABLE_FORMATS",
    "Gaussians",
    "check_video_formats",
    "covariance_3d",
    "gsplat_available",
    "load_ply",
    "ply_properties",
    "project_gaussians",
    "quat_to_rotmat",
    "rasterize",
    "render_turntable",
    "resolve_backend",
    "save_inria_model",
    "save_ply",
    "save_scene_ply",
    "turntable_cameras",
    "write_gif",
    "write_turntable",
]
