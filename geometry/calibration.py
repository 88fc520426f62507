"""Multi-camera calibrations of real recordings: read into one form (per-camera K, distortion, world -> camera).

Formats (``load_calibration(path, fmt="auto")``):

- ``opencv``: a JSON or YAML file holding, per camera, ``K`` (3x3; or ``fx fy cx cy``), ``R`` (3x3 or a Rodrigues
  ``rvec``), ``T`` (3, world -> camera: x_cam = R x_world + T), optional ``dist`` (OpenCV coefficients
  k1 k2 p1 p2 [k3 ...]), optional ``size`` [W, H] and ``name``. The top level is a list of cameras, or a mapping
  ``{"cameras": [...]}`` / ``{name: camera, ...}``. Key aliases: ``matrix``/``camera_matrix`` for K,
  ``distortion``/``distortions``/``dist_coeffs`` for dist, ``t``/``tvec`` for T.
- ``anipose``: anipose's ``calibration.toml`` (``[cam_0]`` tables with ``name``, ``size`` [W, H], ``matrix``,
  ``distortions``, ``rotation`` = Rodrigues vector, ``translation``).
- ``pickle`` (``.pkl``; the markerless_mouse_1 ``new_cam.pkl``: a list of per-camera dicts ``K``, ``R``, ``T`` and
  optionally ``dist``/``size``). A pickle is code: by default it is read with a restricted unpickler that builds only
  plain containers, numbers, strings and numpy arrays, and refuses anything else naming the type; ``trust=True``
  (``--trust-pickle``) unpickles it fully, only for files you trust.

World units: ``--units cm|mm|m`` or inferred from the camera distances (:func:`infer_units`); they only label
reports: the import's normalization scales the whole world (one similarity), so any unit gives the same scenes.

Example:
    >>> import torch
    >>> cam = Camera("c0", torch.eye(3) * 500 + torch.tensor([[0, 0, 100.0], [0, 0, 80], [0, 0, -499]]),
    ...              torch.eye(3), torch.tensor([0.0, 0.0, 5.0]))
    >>> c2w, k = cam.c2w(), cam.fxfycxcy()
    >>> c2w[:3, 3].tolist(), k.tolist()
    ([0.0, 0.0, -5.0], [500.0, 500.0, 100.0, 80.0])
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from torch import Tensor

log = logging.getLogger("mvlift.calibration")

UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
FORMATS = ("auto", "opencv", "anipose", "pickle")


@dataclasses.dataclass
class Camera:
    """One calibrated camera: K [3, 3], R [3, 3] and T [3] world -> camera, distortion [n] (OpenCV order, may be
    empty), image size (H, W) when known."""

    name: str
    K: Tensor
    R: Tensor
    T: Tensor
    dist: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    size: tuple[int, int] | None = None

    def c2w(self) -> Tensor:
        """OpenCV camera-to-world [4, 4] float64."""
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3], w2c[:3, 3] = self.R.double(), self.T.double().reshape(3)
        return torch.linalg.inv(w2c)

    def fxfycxcy(self) -> Tensor:
        k = self.K.double()
        return torch.stack([k[0, 0], k[1, 1], k[0, 2], k[1, 2]])

    @property
    def distorted(self) -> bool:
        return bool(len(self.dist)) and bool((self.dist.abs() > 1e-12).any())


def rodrigues(rvec: Tensor) -> Tensor:
    """Rotation matrix [3, 3] (float64) of a Rodrigues (axis * angle) vector [3]
    (``kornia.geometry.conversions.axis_angle_to_rotation_matrix``)."""
    r = torch.as_tensor(rvec, dtype=torch.float64).reshape(1, 3)
    return axis_angle_to_rotation_matrix(r)[0]


def rodrigues_vector(rot: Tensor) -> Tensor:
    """Rodrigues vector [3] (float64) of a rotation matrix [3, 3] (inverse of :func:`rodrigues`, angles below 180 deg;
    ``kornia.geometry.conversions.rotation_matrix_to_axis_angle``)."""
    r = torch.as_tensor(rot, dtype=torch.float64).reshape(1, 3, 3)
    return rotation_matrix_to_axis_angle(r)[0]


def _matrix(value: Any, shape: tuple[int, ...], where: str) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not numbers ({e})") from None
    if t.numel() != int(np.prod(shape)):
        raise ValueError(f"{where}: expected {shape[0] if len(shape) == 1 else 'x'.join(map(str, shape))} numbers, "
                         f"got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{where}: non-finite values")
    return t.reshape(shape)


def _pick(d: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def camera_from_dict(d: dict, name: str, where: str) -> Camera:
    """One camera from an OpenCV-style mapping (module docstring for the keys)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a camera must be a mapping, got {type(d).__name__}")  # noqa: TRY004
    kv = _pick(d, ("K", "k", "matrix", "camera_matrix", "intrinsics"))
    if kv is None and all(k in d for k in ("fx", "fy", "cx", "cy")):
        kv = [[d["fx"], 0, d["cx"]], [0, d["fy"], d["cy"]], [0, 0, 1]]
    if kv is None:
        raise ValueError(f"{where}: no intrinsics (K / matrix / camera_matrix, or fx fy cx cy)")
    rv = _pick(d, ("R", "rotation", "rvec"))
    tv = _pick(d, ("T", "t", "tvec", "translation"))
    if rv is None or tv is None:
        raise ValueError(f"{where}: needs a rotation (R 3x3 or rvec) and a translation (T) world -> camera")
    rarr = np.asarray(rv, dtype=np.float64)
    rot = rodrigues(_matrix(rarr, (3,), f"{where} rotation")) if rarr.size == 3 else _matrix(rarr, (3, 3), f"{where} R")
    err = (rot.T @ rot - torch.eye(3, dtype=torch.float64)).abs().max().item()
    if err > 1e-3 or torch.linalg.det(rot) < 0:
        raise ValueError(f"{where}: R is not a rotation (max |R^T R - I| = {err:.3g})")
    dv = _pick(d, ("dist", "distortion", "distortions", "dist_coeffs", "D"))
    dist = torch.zeros(0, dtype=torch.float64) if dv is None else torch.as_tensor(
        np.asarray(dv, dtype=np.float64).reshape(-1))
    if len(dist) not in (0, 4, 5, 8, 12, 14):
        raise ValueError(f"{where}: {len(dist)} distortion coefficients (OpenCV takes 4, 5, 8, 12 or 14)")
    size = _pick(d, ("size", "image_size", "resolution"))
    hw = None
    if size is not None:
        w, h = (int(x) for x in np.asarray(size).reshape(-1)[:2])
        hw = (h, w)
    k = _matrix(kv, (3, 3), f"{where} K")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"{where}: focal lengths must be positive")
    return Camera(str(d.get("name", name)), k, rot, _matrix(tv, (3,), f"{where} T"), dist, hw)


def _cameras_from(data: Any, where: str) -> list[Camera]:
    if isinstance(data, dict) and "cameras" in data:
        data = data["cameras"]
    if isinstance(data, dict):
        items = [(str(k), v) for k, v in data.items() if isinstance(v, dict)]
    elif isinstance(data, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(data)]
    else:
        raise ValueError(f"{where}: expected a list of cameras or a mapping of them, got {type(data).__name__}")  # noqa: TRY004
    if not items:
        raise ValueError(f"{where}: no cameras found")
    return [camera_from_dict(v, name, f"{where} camera {name}") for name, v in items]


_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds plain containers, numbers, strings and numpy arrays; any other type is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_pickle(path: str | Path, trust: bool = False) -> Any:
    """A pickle's content: restricted (module docstring) unless ``trust``; a refused type is a ValueError naming the
    file, the type and ``--trust-pickle``."""
    data = Path(path).read_bytes()
    if trust:  # said, as --trust-checkpoint's full unpickling is
        log.warning("%s: unpickling fully (--trust-pickle): code in the file can run", path)
        return pickle.loads(data)
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: the pickle asks to build {e}, which a calibration does not need and unpickling could "
                         "run code; re-save it as JSON/YAML, or pass --trust-pickle if you trust the file") from None


def read_anipose(path: str | Path) -> list[Camera]:
    """anipose's ``calibration.toml``: ``[cam_N]`` tables (Rodrigues ``rotation``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError("reading calibration.toml on Python 3.10 needs tomli: pip install 'mvlift[captures]'") from None
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict) and "matrix" in v]
    if not tables:
        raise ValueError(f"{path}: no camera tables (with 'matrix') found")
    tables.sort(key=lambda kv: (len(kv[0]), kv[0]))  # cam_2 before cam_10
    return [camera_from_dict(v, str(v.get("name", k)), f"{path} [{k}]") for k, v in tables]


def detect_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        return "anipose"
    if suffix in (".pkl", ".pickle"):
        return "pickle"
    if suffix in (".json", ".yaml", ".yml"):
        return "opencv"
    raise ValueError(f"{path}: cannot tell the calibration format from the suffix {suffix!r}; use --calibration-format")


def load_calibration(path: str | Path, fmt: str = "auto", trust: bool = False) -> list[Camera]:
    """The cameras of a calibration file, in the file's order (module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    if fmt not in FORMATS:
        raise ValueError(f"calibration format must be one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "anipose":
        return read_anipose(path)
    if fmt == "pickle":
        return _cameras_from(read_pickle(path, trust), str(path))
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot parse ({e})") from None
    return _cameras_from(data, str(path))


def infer_units(distances: Tensor) -> str:
    """The likely units of camera-to-subject distances, for the report only (lab rigs sit 0.1-1.5 m away):
    median < 10 -> m, < 150 -> cm, else mm. The import is the same whatever they are: it scales the world."""
    med = float(distances.median())
    return "m" if med < 10 else "cm" if med < 150 else "mm"


__all__ = ["FORMATS", "UNITS", "Camera", "camera_from_dict", "detect_format", "infer_units", "load_calibration",
           "read_anipose", "read_pickle", "rodrigues", "rodrigues_vector"]
