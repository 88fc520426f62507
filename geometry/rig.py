"""Camera rigs as named data: one definition that makes every stage's cameras and travels with checkpoints.

A rig (``configs/rigs/NAME.yaml``) lists its views in order with azimuth and elevation, a radius (or ``distances``,
one per view, for a lab's rig whose cameras stand at different distances; ``radius`` is then their mean), a field of view
(``fov_deg``) or a focal length in pixels (``focal_px``) at a reference image size, the world up axis and the look-at
target. It yields cameras at any image size, a stable
fingerprint of everything that changes a camera, and comparisons with another rig or with a data set's cameras.

Example:
    >>> rig = load_rig("facelift_6view")
    >>> c2w, K = rig.cameras(512)
    >>> c2w.shape, round(K[0, 0].item(), 2)
    (torch.Size([6, 4, 4]), 548.99)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from geometry.cameras import (
    UP_AXES,
    camera_position,
    change_up,
    focal_from_fov,
    fov_from_focal,
    look_at,
    spherical_from_c2w,
)

log = logging.getLogger("mvlift.rig")
RIGS_DIR = Path(__file__).resolve().parent / "rigs"  # package data; configs/rigs links here


@dataclasses.dataclass(frozen=True)
class ViewDiff:
    """How one view of ``a`` differs from the same view of ``b``."""

    view: str
    angle_deg: float  # angle between the two camera centres' directions seen from the target
    rotation_deg: float  # geodesic angle between the two camera orientations
    distance_diff: float  # |radius_a - radius_b|
    azimuth_a: float
    elevation_a: float
    distance_a: float
    azimuth_b: float
    elevation_b: float
    distance_b: float


@dataclasses.dataclass(frozen=True)
class RigDiff:
    """Result of comparing a rig with another rig or with a data set's cameras."""

    a: str
    b: str
    per_view: list[ViewDiff]
    angle_tol_deg: float
    dist_tol: float
    problems: list[str] = dataclasses.field(default_factory=list)  # structural: view count, names, intrinsics

    @property
    def worst_angle_deg(self) -> float:
        return max((max(v.angle_deg, v.rotation_deg) for v in self.per_view), default=0.0)

    @property
    def worst_distance(self) -> float:
        return max((v.distance_diff for v in self.per_view), default=0.0)

    @property
    def ok(self) -> bool:
        return not self.problems and self.worst_angle_deg <= self.angle_tol_deg and self.worst_distance <= self.dist_tol

    def worst_view(self) -> ViewDiff | None:
        return max(self.per_view, key=lambda v: max(v.angle_deg, v.rotation_deg), default=None)

    def __str__(self) -> str:
        head = f"{self.a} vs {self.b}: " + ("match" if self.ok else "MISMATCH")
        head += f" (worst angle {self.worst_angle_deg:.2f} deg, worst distance diff {self.worst_distance:.3f}; "
        head += f"tolerance {self.angle_tol_deg} deg / {self.dist_tol})"
        lines = [head, *(f"  problem: {p}" for p in self.problems)]
        lines.append(f"  {'view':<14}{'az a':>8}{'el a':>8}{'dist a':>8}{'az b':>8}{'el b':>8}{'dist b':>8}{'angle':>8}")
        for v in self.per_view:
            lines.append(
                f"  {v.view:<14}{v.azimuth_a:8.1f}{v.elevation_a:8.1f}{v.distance_a:8.3f}"
                f"{v.azimuth_b:8.1f}{v.elevation_b:8.1f}{v.distance_b:8.3f}{max(v.angle_deg, v.rotation_deg):8.2f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "ok": self.ok, "worst_angle_deg": self.worst_angle_deg,
            "worst_distance": self.worst_distance, "problems": list(self.problems),
            "per_view": [dataclasses.asdict(v) for v in self.per_view],
        }


@dataclasses.dataclass(frozen=True)
class Rig:
    """A fixed multi-view camera rig (see module docstring). Angles in degrees, OpenCV cameras."""

    name: str
    view_names: tuple[str, ...]
    azimuths_deg: tuple[float, ...]
    elevations_deg: tuple[float, ...]
    radius: float = 2.7
    fov_deg: float = 50.0
    image_size: int = 512
    up_axis: str = "z"
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distances: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.view_names)
        elev = self.elevations_deg
        if isinstance(elev, (int, float)):
            elev = (float(elev),) * n
        elif len(elev) == 1:
            elev = (float(elev[0]),) * n
        object.__setattr__(self, "view_names", tuple(str(v) for v in self.view_names))
        object.__setattr__(self, "azimuths_deg", tuple(float(a) for a in self.azimuths_deg))
        object.__setattr__(self, "elevations_deg", tuple(float(e) for e in elev))
        object.__setattr__(self, "target", tuple(float(t) for t in self.target))
        if n == 0 or len(self.azimuths_deg) != n or len(self.elevations_deg) != n:
            raise ValueError(
                f"rig {self.name!r}: {n} view names, {len(self.azimuths_deg)} azimuths, "
                f"{len(self.elevations_deg)} elevations — they must match"
            )
        if len(set(self.view_names)) != n:
            raise ValueError(f"rig {self.name!r}: view names must be unique, got {self.view_names}")
        if self.up_axis not in UP_AXES:
            raise ValueError(f"rig {self.name!r}: up_axis must be one of {sorted(UP_AXES)}, got {self.up_axis!r}")
        if not (0 < self.fov_deg < 180) or self.radius <= 0 or self.image_size <= 0:
            raise ValueError(f"rig {self.name!r}: need 0 < fov_deg < 180, radius > 0, image_size > 0")
        if self.distances is not None:
            d = tuple(float(x) for x in self.distances)
            if len(d) != n or min(d) <= 0:
                raise ValueError(f"rig {self.name!r}: distances must be {n} positive numbers, got {list(d)}")
            object.__setattr__(self, "distances", d)

    @property
    def view_distances(self) -> tuple[float, ...]:
        """Each view's distance from the target: ``distances``, or ``radius`` for every view."""
        return self.distances if self.distances is not None else (self.radius,) * self.num_views

    @property
    def num_views(self) -> int:
        return len(self.view_names)

    def focal(self, size: int | None = None) -> float:
        """Focal length in pixels at square image ``size`` (default: the rig's reference size)."""
        return focal_from_fov(self.fov_deg, size or self.image_size)

    def cameras(
        self, size: int | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """The rig's cameras for square images of ``size`` px: (c2w [V, 4, 4], fxfycxcy [V, 4]), in view order."""
        size = size or self.image_size
        target = torch.tensor(self.target, dtype=torch.float64)
        eyes = torch.tensor(
            [camera_position(a, e, d) for a, e, d in zip(self.azimuths_deg, self.elevations_deg, self.view_distances)],
            dtype=torch.float64,
        )
        z_up = torch.tensor(UP_AXES["z"], dtype=torch.float64)
        if self.up_axis == "y":  # build in Z-up then express in the rig's world
            target_z = change_up(torch.eye(4, dtype=torch.float64), "y", "z")[:3, :3] @ target
            c2w = change_up(look_at(eyes + target_z, target_z.expand_as(eyes), z_up.expand_as(eyes)), "z", "y")
        else:
            c2w = look_at(eyes + target, target.expand_as(eyes), z_up.expand_as(eyes))
        f = self.focal(size)
        k = torch.tensor([f, f, size / 2.0, size / 2.0], dtype=torch.float64).expand(self.num_views, 4)
        return c2w.to(dtype=dtype, device=device), k.to(dtype=dtype, device=device).clone()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["distances"] is None:  # rigs of one radius keep their keys
            del d["distances"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rig:
        """Build a rig from its YAML/JSON keys (the fields, plus optional ``fingerprint`` to check and ``description``).

        The intrinsics are ``fov_deg`` or ``focal_px`` (focal length in pixels at ``image_size``), not both; ``focal_px``
        is stored as the equivalent ``fov_deg``, so ``to_dict()`` and the fingerprint see a field of view either way.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"fingerprint", "description", "elevation_deg", "focal_px"}
        if unknown:
            raise ValueError(f"rig {d.get('name', '?')!r}: unknown keys {sorted(unknown)}")
        d = dict(d)
        if "focal_px" in d:
            if "fov_deg" in d:
                raise ValueError(f"rig {d.get('name', '?')!r}: give fov_deg or focal_px, not both")
            focal = float(d.pop("focal_px"))
            if not focal > 0:
                raise ValueError(f"rig {d.get('name', '?')!r}: focal_px must be > 0, got {focal}")
            d["fov_deg"] = fov_from_focal(focal, d.get("image_size", cls.__dataclass_fields__["image_size"].default))
        if "elevation_deg" in d:
            d.setdefault("elevations_deg", d.pop("elevation_deg"))
        fp = d.pop("fingerprint", None)
        d.pop("description", None)
        rig = cls(**d)
        if fp is not None and fp != rig.fingerprint:
            raise ValueError(f"rig {rig.name!r}: stored fingerprint {fp} does not match its cameras ({rig.fingerprint})")
        return rig

    @property
    def fingerprint(self) -> str:
        """Stable hash of everything that changes a camera (not the name); 16 hex digits."""
        payload = {
            "view_names": list(self.view_names),
            "azimuths_deg": [round(a, 4) for a in self.azimuths_deg],
            "elevations_deg": [round(e, 4) for e in self.elevations_deg],
            "radius": round(self.radius, 5),
            "fov_deg": round(self.fov_deg, 5),
            "up_axis": self.up_axis,
            "target": [round(t, 5) for t in self.target],
        }
        if self.distances is not None:
            payload["distances"] = [round(x, 5) for x in self.distances]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, size: int | None = None) -> list[dict[str, float | str]]:
        """Per view: name, azimuth, elevation, distance, fov, focal at ``size``, as measured from the cameras."""
        size = size or self.image_size
        c2w, k = self.cameras(size, dtype=torch.float64)
        az, el, dist = spherical_from_c2w(c2w, up=self.up_axis, target=torch.tensor(self.target, dtype=torch.float64))
        return [
            {
                "view": n, "azimuth_deg": round(float(a), 3), "elevation_deg": round(float(e), 3),
                "distance": round(float(d), 4), "fov_deg": self.fov_deg, "focal_px": round(float(k[i, 0]), 3),
                "position": [round(float(x), 4) for x in c2w[i, :3, 3]],
            }
            for i, (n, a, e, d) in enumerate(zip(self.view_names, az, el, dist))
        ]

    def compare(self, other: Rig, angle_tol_deg: float = 1.0, dist_tol: float = 0.05) -> RigDiff:
        """Per-view differences with ``other`` (matched by position in view order)."""
        problems = []
        if self.num_views != other.num_views:
            problems.append(f"{self.name} has {self.num_views} views, {other.name} has {other.num_views}")
        if abs(self.fov_deg - other.fov_deg) > angle_tol_deg:
            problems.append(f"field of view {self.fov_deg} vs {other.fov_deg} deg")
        if self.up_axis != other.up_axis:
            problems.append(f"up axis {self.up_axis} vs {other.up_axis}")
        c2w_b, _ = other.cameras(dtype=torch.float64)
        diff = self.compare_cameras(c2w_b, name=other.name, up=other.up_axis, angle_tol_deg=angle_tol_deg,
                                    dist_tol=dist_tol)
        return dataclasses.replace(diff, problems=problems + diff.problems)

    def compare_cameras(
        self, c2w: Tensor, name: str = "data", angle_tol_deg: float = 1.0, dist_tol: float = 0.05, up: str | None = None
    ) -> RigDiff:
        """Compare the rig's views with cameras c2w [V, 4, 4] given in the same view order."""
        c2w = torch.as_tensor(c2w).to(torch.float64)
        mine, _ = self.cameras(dtype=torch.float64)
        n = min(len(c2w), self.num_views)
        problems = [] if len(c2w) == self.num_views else [f"{self.name} has {self.num_views} views, {name} has {len(c2w)}"]
        target = torch.tensor(self.target, dtype=torch.float64)
        az_a, el_a, d_a = spherical_from_c2w(mine[:n], up=self.up_axis, target=target)
        az_b, el_b, d_b = spherical_from_c2w(c2w[:n], up=up or self.up_axis, target=target)
        dir_a = torch.nn.functional.normalize(mine[:n, :3, 3] - target, dim=-1)
        dir_b = torch.nn.functional.normalize(c2w[:n, :3, 3] - target, dim=-1)
        angle = torch.rad2deg(torch.acos((dir_a * dir_b).sum(-1).clamp(-1, 1)))
        rel = mine[:n, :3, :3].transpose(-1, -2) @ c2w[:n, :3, :3]
        cos_rot = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
        rot = torch.rad2deg(torch.acos(cos_rot))
        per_view = [
            ViewDiff(self.view_names[i], float(angle[i]), float(rot[i]), float((d_a[i] - d_b[i]).abs()),
                     float(az_a[i]), float(el_a[i]), float(d_a[i]), float(az_b[i]), float(el_b[i]), float(d_b[i]))
            for i in range(n)
        ]
        return RigDiff(self.name, name, per_view, angle_tol_deg, dist_tol, problems)


class RigMismatchError(ValueError):
    """Two chained stages use different camera rigs. ``diff`` holds the per-view comparison."""

    def __init__(self, message: str, diff: RigDiff | None = None):
        super().__init__(message)
        self.diff = diff


def _as_rig(rig: dict | Rig | str, role: str) -> Rig:
    try:
        return load_rig(rig)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise ValueError(f"{role} rig: {e}") from e


def check_rigs(
    diffusion_rig: dict | Rig | str,
    reconstruction_rig: dict | Rig | str,
    allow_mismatch: bool = False,
    angle_tol_deg: float = 1.0,
    dist_tol: float = 0.05,
) -> RigDiff:
    """Compare the diffusion model's rig with the reconstruction model's; returns the RigDiff.

    Raises RigMismatchError (naming both rigs, with the per-view table) when they differ beyond the tolerances,
    unless ``allow_mismatch``, which logs the same text as a warning instead.
    """
    a = _as_rig(diffusion_rig, "diffusion")
    b = _as_rig(reconstruction_rig, "reconstruction")
    diff = a.compare(b, angle_tol_deg=angle_tol_deg, dist_tol=dist_tol)
    if diff.ok:
        return diff
    message = (
        f"rig mismatch: the diffusion model generates views with rig {a.name!r} ({a.fingerprint}) but the "
        f"reconstruction model was trained on rig {b.name!r} ({b.fingerprint}); its Gaussians would be lifted with "
        f"the wrong cameras.\n{diff}\n"
        "Use a reconstruction checkpoint trained on the diffusion rig (or the reverse); pass --allow-rig-mismatch "
        "to go on anyway."
    )
    if allow_mismatch:
        log.warning("%s", message.replace("pass --allow-rig-mismatch to go on anyway.", "continuing (allowed)."))
        return diff
    raise RigMismatchError(message, diff)


def available_rigs() -> list[str]:
    """Names of the rigs shipped in configs/rigs/."""
    return sorted(p.stem for p in RIGS_DIR.glob("*.yaml"))


def load_rig(spec: str | Path | dict | Rig) -> Rig:
    """A rig from its name (configs/rigs/NAME.yaml), a YAML/JSON path, a dict (``Rig.to_dict()``) or a Rig."""
    if isinstance(spec, Rig):
        return spec
    if isinstance(spec, dict):
        return Rig.from_dict(spec)
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml", ".json"):
        path = RIGS_DIR / f"{spec}.yaml"
        if not path.exists():
            raise ValueError(f"unknown rig {str(spec)!r}; shipped rigs: {', '.join(available_rigs())}")
    if not path.exists():
        raise FileNotFoundError(f"rig file not found: {path}")
    data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a rig file must hold a mapping")  # noqa: TRY004 (bad file content, not a bad argument type)
    return Rig.from_dict(data)


def rig_from_views(name: str, azimuths_deg: Sequence[float], elevation_deg: float, **kw: Any) -> Rig:
    """Convenience: a rig with views named ``view_<azimuth>``."""
    names = tuple(f"view_{round(a) % 360:03d}" for a in azimuths_deg)
    return Rig(name=name, view_names=names, azimuths_deg=tuple(azimuths_deg),
               elevations_deg=(float(elevation_deg),) * len(names), **kw)


def derive_rig(name: str, c2w: Tensor, fxfycxcy: Tensor, size: int, view_names: Sequence[str] | None = None,
               up_axis: str = "z", description: str = "") -> tuple[Rig, dict[str, Any]]:
    """A rig from normalized real cameras c2w [F, V, 4, 4] / fxfycxcy [F, V, 4] at square ``size`` (F frames, each
    centred on the subject at the origin): per view the circular mean azimuth and the mean elevation about the origin,
    radius = mean distance, per-view ``distances`` = each view's mean distance (when they differ by more than 1e-3),
    fov = median over all views and frames. Returns (rig, stats): ``stats`` has per-view
    spreads and, per frame, the worst camera-position angle and orientation angle against the rig (a real camera
    need not look exactly at the subject, so its orientation differs by its off-axis angle)."""
    c2w, fxfycxcy = torch.as_tensor(c2w).double(), torch.as_tensor(fxfycxcy).double()
    if c2w.ndim != 4 or c2w.shape[-2:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"derive_rig: cameras must be [frames, views, 4, 4], got {list(c2w.shape)}")
    nf, nv = c2w.shape[:2]
    names = tuple(view_names) if view_names else tuple(f"cam_{v:03d}" for v in range(nv))
    az, el, dist = spherical_from_c2w(c2w, up=up_axis)
    rad = torch.deg2rad(az)
    mean_az = torch.rad2deg(torch.atan2(rad.sin().mean(0), rad.cos().mean(0))) % 360.0
    fovs = torch.tensor([fov_from_focal(float(f), size) for f in fxfycxcy[..., 0].flatten()])
    per_view = dist.mean(0)
    distances = tuple(round(float(x), 5) for x in per_view) if float((per_view - dist.mean()).abs().max()) > 1e-3 \
        else None
    rig = Rig(name=name, view_names=names, azimuths_deg=tuple(round(float(a), 3) for a in mean_az),
              elevations_deg=tuple(round(float(e), 3) for e in el.mean(0)), radius=round(float(dist.mean()), 5),
              fov_deg=round(float(fovs.median()), 4), image_size=int(size), up_axis=up_axis, distances=distances)
    per_frame = [rig.compare_cameras(c2w[i], name=f"frame {i}") for i in range(nf)]
    az_spread = ((az - mean_az + 180.0) % 360.0 - 180.0).abs().amax(0)
    stats = {
        "frames": nf, "views": list(names),
        "azimuth_spread_deg": [round(float(x), 3) for x in az_spread],
        "elevation_spread_deg": [round(float(x), 3) for x in (el - el.mean(0)).abs().amax(0)],
        "distance": {"min": float(dist.min()), "max": float(dist.max())},
        "fov_deg": {"min": float(fovs.min()), "max": float(fovs.max()), "median": float(fovs.median())},
        "worst_position_angle_deg": max(max(v.angle_deg for v in d.per_view) for d in per_frame),
        "worst_orientation_deg": max(max(v.rotation_deg for v in d.per_view) for d in per_frame),
    }
    return rig, stats


def rig_yaml(rig: Rig, description: str = "") -> str:
    """The YAML text of ``rig`` in the format of geometry/rigs/*.yaml (``load_rig`` reads it back)."""
    d = {"name": rig.name, "description": description or f"rig {rig.name}", **{
        k: v for k, v in rig.to_dict().items() if k != "name"}}
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None)


__all__ = ["Rig", "RigDiff", "RigMismatchError", "ViewDiff", "available_rigs", "check_rigs", "derive_rig", "load_rig",
           "rig_from_views", "rig_yaml"]
