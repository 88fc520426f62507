"""FaceLift's ``opencv_cameras.json``: read and write (w2c on disk, c2w in memory).

Layout: ``{"id": ..., "frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c": 4x4, "file_path": "images/cam_000.png"}]}``.

A frame's ``file_path`` (default ``images/cam_VVV.png``) is relative to the scene folder and must stay inside it:
:func:`frame_image_path` refuses absolute paths, ``..`` components and symlinks that lead outside with a
:class:`PathEscapeError` naming the camera file, the frame and the entry (readers and writers of scene folders and
shards all go through it, so a camera file cannot make mvlift read ``/etc/hostname`` or write outside its output).

Example:
    >>> frame_image_path(Path("scene"), "images/cam_001.png", 1, "scene/opencv_cameras.json").as_posix()
    'scene/images/cam_001.png'
    >>> frame_image_path(Path("scene"), "../../x.png", 1, "scene/opencv_cameras.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geometry.camera_files.PathEscapeError: scene/opencv_cameras.json frame 1: file_path '../../x.png' leaves ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from torch import Tensor

from geometry.cameras import check_c2w, check_intrinsics, invert_rigid
from geometry.files import write_atomic


@dataclass
class CameraFile:
    """Cameras of one scene: c2w [V, 4, 4], fxfycxcy [V, 4], sizes [(H, W)], file_paths (relative, may be None)."""

    scene_id: str
    c2w: Tensor
    fxfycxcy: Tensor
    sizes: list[tuple[int, int]]
    file_paths: list[str | None]


class PathEscapeError(ValueError):
    """A path inside a camera file or shard would resolve outside the folder it belongs to."""


def check_relative(rel: object, what: str, folder: str = "its folder") -> str:
    """``rel`` when it is a non-empty relative path without ``..`` components (the part of :func:`contained_path`
    that needs no file system: for names read from a shard, which has no folder yet); else :class:`PathEscapeError`
    ``"{what} {rel!r} ..."``."""
    if not isinstance(rel, str) or not rel.strip():
        raise PathEscapeError(f"{what} {rel!r} is not a relative path")
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise PathEscapeError(f"{what} {rel!r} leaves {folder} (absolute path or '..'); paths in scene "
                              "files must be relative to the scene folder, inside it")
    return rel


def contained_path(root: str | Path, rel: object, what: str) -> Path:
    """``root / rel`` when ``rel`` is a non-empty relative path without ``..`` components that, symlinks resolved,
    stays inside ``root``; else :class:`PathEscapeError` ``"{what} {rel!r} ..."``."""
    root = Path(root)
    check_relative(rel, what, f"its folder {root}")
    target = root / rel
    real_root, real = root.resolve(), target.resolve()
    if real != real_root and real_root not in real.parents:
        raise PathEscapeError(f"{what} {rel!r} resolves to {real}, outside its folder {root} (a symlink)")
    return target


def frame_image_path(scene_dir: str | Path, file_path: object, view: int, where: str) -> Path:
    """The image of camera frame ``view`` of the scene in ``scene_dir``: its ``file_path`` (None: the default
    ``images/cam_VVV.png``), which must stay inside ``scene_dir`` (module docstring). ``where``: the camera file or
    shard sample, for the error."""
    rel = f"images/cam_{view:03d}.png" if file_path is None else file_path
    return contained_path(scene_dir, rel, f"{where} frame {view}: file_path")


def _image_side(frame: dict, key: str, where: str) -> int:
    """A frame's image height or width: a positive whole number, else a ValueError naming the frame and the key."""
    value = frame[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise ValueError(f"{where}: '{key}' must be a positive whole number of pixels, got {value!r}")
    return int(value)


def read_camera_file(path: str | Path) -> CameraFile:
    """Parse and validate an ``opencv_cameras.json``; errors name the file, the frame and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: camera file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: camera file is not valid JSON ({e})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise ValueError(f"{path}: camera file has no 'frames'")
    w2cs, k, sizes, files = [], [], [], []
    for i, fr in enumerate(frames):
        where = f"{path} frame {i}"
        missing = [key for key in ("w2c", "fx", "fy", "cx", "cy", "w", "h") if key not in fr]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        try:
            w2c = torch.tensor(fr["w2c"], dtype=torch.float64)
            intr = torch.tensor([fr["fx"], fr["fy"], fr["cx"], fr["cy"]], dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: cameras are not numbers ({e})") from None
        if w2c.shape != (4, 4):
            check_c2w(w2c, where)  # raises, naming the frame and the shape
        w2cs.append(w2c)
        k.append(intr)
        sizes.append((_image_side(fr, "h", where), _image_side(fr, "w", where)))
        files.append(fr.get("file_path"))
    w2c, intr = torch.stack(w2cs), torch.stack(k)
    try:  # every frame in one check; only a failure is traced to its frame
        check_c2w(w2c, str(path))
        check_intrinsics(intr, str(path))
    except ValueError:
        for i in range(len(w2c)):
            check_c2w(w2c[i], f"{path} frame {i}")
            check_intrinsics(intr[i], f"{path} frame {i}")
        raise
    return CameraFile(str(data.get("id", path.parent.name)), invert_rigid(w2c).float(), intr.float(), sizes, files)


def write_camera_file(path: str | Path, cams: CameraFile) -> None:
    """Write ``cams`` as FaceLift's ``opencv_cameras.json`` (atomically). Matrices are stored in float64 text."""
    path = Path(path)
    w2c = invert_rigid(cams.c2w.double())
    frames = []
    for i, ((h, w), fp) in enumerate(zip(cams.sizes, cams.file_paths)):
        fx, fy, cx, cy = (float(x) for x in cams.fxfycxcy[i].double())
        frame = {"w": w, "h": h, "fx": fx, "fy": fy, "cx": cx, "cy": cy, "w2c": w2c[i].tolist()}
        if fp is not None:
            frame["file_path"] = fp
        frames.append(frame)
    text = json.dumps({"id": cams.scene_id, "frames": frames}, indent=1)
    write_atomic(path, text)  # readable by others as the umask allows
