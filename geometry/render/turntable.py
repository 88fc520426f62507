"""Turntables: cameras circling a rig, the frames rendered from them, and the GIF / MP4 files written from those.

Example:
    >>> c2w, k = turntable_cameras(load_rig("facelift_6view"), 4, 32)
    >>> c2w.shape, k.shape
    (torch.Size([4, 4, 4]), torch.Size([4, 4]))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor

from geometry.progress import counter
from geometry.render.gaussians import Gaussians
from geometry.render.rasterizer import rasterize
from geometry.rig import Rig, load_rig


def turntable_cameras(rig: Rig, num_frames: int, size: int, device: torch.device | str | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Cameras circling the rig's up axis at its radius, mean elevation and field of view: (c2w [T,4,4], K [T,4])."""
    az = tuple(float(a) for a in np.linspace(0.0, 360.0, num_frames, endpoint=False))
    elev = float(np.mean(rig.elevations_deg))
    ring = Rig(name=f"{rig.name}_turntable", view_names=tuple(f"frame_{i:03d}" for i in range(num_frames)),
               azimuths_deg=az, elevations_deg=(elev,) * num_frames, radius=rig.radius, fov_deg=rig.fov_deg,
               image_size=size, up_axis=rig.up_axis, target=rig.target)
    return ring.cameras(size, device=device)


@torch.no_grad()
def render_turntable(gaussians: Gaussians, rig: Rig | str, num_frames: int = 36, size: int = 256,
                     background: Tensor | None = None, backend: str = "auto", chunk: int = 8) -> np.ndarray:
    """Frames [T, size, size, 3] uint8 of the first scene of ``gaussians`` seen from a turntable around the rig (a
    progress bar over the frames on a terminal: ``geometry.progress``; on a CPU it is most of an inference's time)."""
    rig = load_rig(rig)
    scene = gaussians.select(0)
    device = scene.means.device
    c2w, k = turntable_cameras(rig, num_frames, size, device=device)
    bg = background if background is not None else torch.ones(3, device=device)
    frames = []
    bar = counter(num_frames, "turntable", unit="frame")
    try:
        for s in range(0, num_frames, chunk):
            out = rasterize(scene, c2w[None, s: s + chunk], k[None, s: s + chunk], size, size, bg, backend=backend)
            frames.append(out["rgb"][0])
            bar.update(out["rgb"].shape[1])
    finally:
        bar.close()
    rgb = torch.cat(frames).clamp(0, 1).permute(0, 2, 3, 1)
    return (rgb * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 12) -> Path:
    """Write frames [T, H, W, 3] uint8 as a looping GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(str(path), list(frames), duration=1.0 / fps, loop=0)
    return path


TURNTABLE_FORMATS = ("gif", "mp4")


def check_video_formats(formats: list[str]) -> None:
    """Fail early (before any model runs) when a requested turntable format cannot be written."""
    bad = [f for f in formats if f not in TURNTABLE_FORMATS]
    if bad:
        raise ValueError(f"turntable format {bad[0]!r}: choose from {', '.join(TURNTABLE_FORMATS)}")
    if "mp4" in formats and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError("turntable.mp4 needs an H.264 encoder: pip install imageio-ffmpeg (mvlift's `video` extra)")


def write_turntable(frames: np.ndarray, stem: Path, formats: list[str], fps: int = 12) -> list[Path]:
    """Write frames [T, H, W, 3] uint8 as ``stem.gif`` (looping) and/or ``stem.mp4`` (H.264, yuv420p); returns
    the paths written."""
    check_video_formats(formats)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "gif":
            write_gif(frames, path, fps=fps)
        else:
            imageio.mimsave(str(path), list(frames), fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=2)
        written.append(path)
    return written


__all__ = ["TURNTABLE_FORMATS", "check_video_formats", "render_turntable", "turntable_cameras", "write_gif",
           "write_turntable"]
