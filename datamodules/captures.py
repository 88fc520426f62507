"""Real multi-camera recordings -> FaceLift-layout scenes (one per kept frame), with a report of every frame.

Per frame (all cameras of the frame or none): read each camera's image and mask (mask folders / videos, or a
``MODULE:FUNCTION`` segmenter called as in ``datamodules.photos``), check the masks (present, not empty, not touching
the image border), undistort image and mask when the calibration has distortion (kornia), then

1. centre on the animal: ``geometry.cameras.subject_center`` — the point nearest all rays through the masks'
   centroids (rays that miss it by more than ``max_ray_miss_deg``: ``inconsistent_views``);
2. one similarity of the world (``geometry.cameras.normalize_cameras``): that centre to the origin, one scale so the
   cameras sit at ``radius`` (2.7) on average; rotations and intrinsics unchanged, so the calibration's units drop
   out and every camera keeps its own distance. ``snap_radius`` then moves each camera along its line to exactly
   ``radius`` with its focal length scaled (``normalize_about_subject``): an approximation, measured below;
3. crop each view to a square centred on the centre's pixel and resize to ``size``, the crop chosen so every view
   ends with the same focal length (``fov_deg``, or the widest that keeps every mask within ``fill`` of the frame):
   ``datamodules.io.crop_views`` with ``geometry.cameras.crop_intrinsics`` (the DataModule's own centring code), so
   the intrinsics move with the pixels;
4. check what would be written (:func:`frame_checks`): the reprojection of the animal's points (imported camera vs
   raw calibration through the crop, px at 512 px; contract ``REPROJECTION_LIMIT_PX``) and the visual hull's
   silhouette IoU per view (``geometry.visual_hull``); below ``min_hull_iou``: ``inconsistent_views``;
5. write ``OUT/frame_NNNNNN/images/cam_VVV.png`` (RGBA, mask as alpha), ``opencv_cameras.json`` and ``capture.json``
   (frame, centre, scale, units, both checks, the raw cameras in world units: ``tools.rig check`` reports before /
   after from it).

A rejected frame is counted under one reason per frame (the first found), with the camera and a detail:
``skipped`` (``skip`` ranges), ``outside_range`` (a camera has no such frame), ``unreadable_frame``, ``no_mask``,
``empty_mask``, ``mask_touches_border``, ``no_center`` (the centre lies behind a camera), ``inconsistent_views``
(masks and cameras disagree). Nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.io import crop_views
from datamodules.photos import load_callable, mask_from_result, read_image
from geometry.calibration import UNITS, Camera, infer_units
from geometry.camera_files import CameraFile, read_camera_file, write_camera_file
from geometry.cameras import (
    crop_intrinsics,
    focal_from_fov,
    normalize_about_subject,
    normalize_cameras,
    point_nearest_rays,
    project_points,
    rays_through_pixels,
    scene_center_from_rays,
    spherical_from_c2w,
)
from geometry.files import write_atomic
from geometry.images import save_png
from geometry.visual_hull import hull_at_size

REPROJECTION_LIMIT_PX = 1.5  # the contract: an animal point's pixel, imported vs raw calibration, at 512 px
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
REASONS = ("skipped", "outside_range", "unreadable_frame", "no_mask", "empty_mask", "mask_touches_border",
           "no_center", "inconsistent_views")


class FrameError(Exception):
    """A frame that cannot be used: ``reason`` (one of REASONS) and a detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class FrameStream:
    """One camera's frames: a folder of images (sorted by name; frame i = the i-th file; a mask folder's file is
    found by its image's name) or a video (imageio's
    ffmpeg plugin, the ``video`` extra). ``read(i)`` -> float [C, H, W] in [0, 1] (C = 3 or 4)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader = None
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.by_stem = {p.stem: p for p in self.files}
            self.count = len(self.files)
        elif self.path.is_file() and self.path.suffix.lower() in VIDEO_SUFFIXES:
            try:
                import imageio.v2 as iio
                import imageio_ffmpeg  # noqa: F401 - the plugin's backend
            except ImportError:
                raise ValueError(f"{self.path}: reading videos needs imageio-ffmpeg: pip install 'mvlift[video]' "
                                 "(or extract the frames to a folder)") from None
            self.files = None
            self._reader = iio.get_reader(self.path, format="FFMPEG")
            self.count = self._reader.count_frames()
        elif not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such folder or video")
        else:
            raise ValueError(f"{self.path}: expected a folder of images or a video ({', '.join(VIDEO_SUFFIXES)})")

    def stem(self, i: int) -> str | None:
        """Frame i's file name stem (folders), else None."""
        return self.files[i].stem if self.files is not None and i < self.count else None

    def read(self, i: int, stem: str | None = None) -> Tensor:
        """Frame i; in a folder with ``stem`` given: the file of that name (masks follow their images by name)."""
        if stem is not None and self.files is not None:
            if stem not in self.by_stem:
                raise FrameError("outside_range", f"{self.path} has no file named {stem}.*")
            path = self.by_stem[stem]
        elif i >= self.count:
            raise FrameError("outside_range", f"{self.path} has {self.count} frames, no frame {i}")
        else:
            path = self.files[i] if self.files is not None else None
        if path is not None:
            try:
                rgb, alpha = read_image(path)
            except ValueError as e:
                raise FrameError("unreadable_frame", str(e)) from None
            return rgb if alpha is None else torch.cat([rgb, alpha])
        try:
            arr = np.asarray(self._reader.get_data(i))
        except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable frame
            raise FrameError("unreadable_frame", f"{self.path} frame {i}: {type(e).__name__}: {e}") from None
        if arr.ndim == 2:
            arr = arr[..., None].repeat(3, -1)
        return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def mask_channel(x: Tensor) -> Tensor:
    """A mask image [C, H, W] -> [1, H, W]: its alpha when it has one and it is not all opaque, else its first
    channel."""
    if x.shape[0] == 4 and (x[3] < 1).any():
        return x[3:4]
    return x[:1]


def parse_skip(spec: str | None) -> set[int]:
    """'10-20,35' -> {10..20, 35} (inclusive ranges)."""
    out: set[int] = set()
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            out.update(range(int(a), int(b) + 1) if sep else [int(a)])
        except ValueError:
            raise ValueError(f"--skip: {part!r} is not a frame number or a range A-B") from None
    return out


@dataclasses.dataclass
class ImportSettings:
    size: int = 512
    radius: float = 2.7
    fill: float = 0.6
    fov_deg: float | None = None
    start: int = 0
    end: int | None = None
    stride: int = 1
    skip: set[int] = dataclasses.field(default_factory=set)
    units: str | None = None
    min_mask_pixels: int = 16
    border_px: int = 1
    snap_radius: bool = False
    min_hull_iou: float = 0.8
    hull_size: int = 64
    max_ray_miss_deg: float = 10.0


@dataclasses.dataclass
class ImportReport:
    """What was kept and what was rejected, and why."""

    frames_considered: int = 0
    kept: list[dict] = dataclasses.field(default_factory=list)
    rejected: list[dict] = dataclasses.field(default_factory=list)
    units: str = ""
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(r["reason"] for r in self.rejected)
        return {r: c[r] for r in REASONS if c[r]}

    def to_dict(self) -> dict[str, Any]:
        return {"frames_considered": self.frames_considered, "kept": len(self.kept),
                "rejected": len(self.rejected), "rejected_by_reason": self.counts, "units": self.units,
                "settings": self.settings, "kept_frames": self.kept, "rejected_frames": self.rejected}

    def summary(self) -> str:
        head = f"{self.frames_considered} frame(s) considered: {len(self.kept)} kept, {len(self.rejected)} rejected"
        lines = [head + f" (world units: {self.units})"]
        for reason, n in self.counts.items():
            example = next(r for r in self.rejected if r["reason"] == reason)
            lines.append(f"  {reason:<20} {n:6d}  e.g. frame {example['frame']}: {example['detail']}")
        if self.kept:
            reproj = max(r["reprojection_px512"] for r in self.kept)
            iou = min(min(r["hull_iou"]) for r in self.kept)
            lines.append(f"  kept frames: reprojection <= {reproj:.3f} px at 512 px (limit {REPROJECTION_LIMIT_PX}), "
                         f"visual-hull silhouette IoU >= {iou:.3f}")
            if reproj > REPROJECTION_LIMIT_PX:
                lines.append(f"  WARNING: reprojection above {REPROJECTION_LIMIT_PX} px: --snap-radius moves "
                             "cameras with an approximation this large; import without it")
        return "\n".join(lines)


def _check_mask(mask: Tensor, where: str, s: ImportSettings) -> None:
    m = mask[0] > 0.5
    if int(m.sum()) < s.min_mask_pixels:
        raise FrameError("empty_mask", f"{where}: mask has {int(m.sum())} pixels (< {s.min_mask_pixels})")
    b = s.border_px
    if m[:b].any() or m[-b:].any() or m[:, :b].any() or m[:, -b:].any():
        raise FrameError("mask_touches_border", f"{where}: mask touches the image border (animal cut off)")


def undistort(x: Tensor, cam: Camera) -> Tensor:
    """Undistort [C, H, W] with the camera's OpenCV distortion (kornia); the intrinsics stay K."""
    if not cam.distorted:
        return x
    from kornia.geometry.calibration import undistort_image

    return undistort_image(x[None].float(), cam.K[None].float(), cam.dist[None].float())[0].clamp(0, 1)


def mask_centroid(mask: Tensor) -> Tensor:
    """Mask-weighted mean of pixel centres (u, v) [2] of mask [1, H, W] (pixel (i, j)'s centre: (j + .5, i + .5))."""
    m = (mask[0] > 0.5).double()
    h, w = m.shape
    ys, xs = torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5
    total = m.sum()
    return torch.stack([(m.sum(0) * xs).sum() / total, (m.sum(1) * ys).sum() / total])


@dataclasses.dataclass
class FrameGeometry:
    """One frame's normalization: the animal's ``center`` [3] (raw world units), the similarity's ``scale`` (raw
    units -> rig units: x_new = (x_raw - center) * scale), the imported cameras ``c2w`` [V, 4, 4] / ``fxfycxcy``
    [V, 4] at ``size`` px after the crop, the crop ``boxes`` (x0, y0, x1, y1) in the source pixels."""

    center: Tensor
    scale: float
    c2w: Tensor
    fxfycxcy: Tensor
    boxes: list[tuple[float, float, float, float]]


def normalize_frame(c2w: Tensor, fxfycxcy: Tensor, masks: list[Tensor], s: ImportSettings) -> FrameGeometry:
    """Steps 1-3 of the module docstring for one frame (raw cameras c2w [V, 4, 4], fxfycxcy [V, 4], masks [1, H, W]
    per view in the source pixels)."""
    uv = torch.stack([mask_centroid(m) for m in masks])
    origins, dirs = rays_through_pixels(c2w.double(), fxfycxcy.double(), uv)
    center = point_nearest_rays(origins, dirs).to(c2w.dtype)  # geometry.cameras.subject_center, rays kept
    miss = torch.rad2deg(torch.acos((torch.nn.functional.normalize(center.double() - origins, dim=-1) * dirs)
                                    .sum(-1).clamp(-1, 1)))
    if float(miss.max()) > s.max_ray_miss_deg:
        worst = int(miss.argmax())
        raise FrameError("inconsistent_views", f"the rays through the masks' centroids do not meet: camera {worst} "
                         f"misses their nearest point by {float(miss[worst]):.1f} deg (> {s.max_ray_miss_deg}; per "
                         f"camera {[round(float(x), 1) for x in miss]}): cameras in mixed units, in another order "
                         "than the videos, or a mask of another frame")
    uv0, depth = project_points(center.expand(len(c2w), 1, 3), c2w, fxfycxcy)
    if (depth <= 0).any():
        raise FrameError("no_center", f"the animal's centre {center.tolist()} lies behind camera(s) "
                         f"{torch.nonzero(depth[:, 0] <= 0).flatten().tolist()}")
    uv0 = uv0[:, 0]
    c2w_n, _, scale = normalize_cameras(c2w.double(), s.radius, center.double())  # one similarity: exact
    k_n = fxfycxcy.double()
    if s.snap_radius:  # then every camera along its line to exactly `radius`, focal scaled (an approximation)
        c2w_n, k_n, _ = normalize_about_subject(c2w_n, k_n, torch.zeros(3, dtype=torch.float64), s.radius)
    if s.fov_deg is not None:
        f_out = focal_from_fov(s.fov_deg, s.size)
    else:  # the widest crop keeping every mask within `fill` of the frame (square pixels assumed)
        ratios = []
        for m, u, k in zip(masks, uv0, k_n):
            ys, xs = torch.nonzero(m[0] > 0.5, as_tuple=True)
            half = max(float((xs + 1 - u[0]).abs().max().clamp_min((xs - u[0]).abs().max())),
                       float((ys + 1 - u[1]).abs().max().clamp_min((ys - u[1]).abs().max())))
            ratios.append(float(k[0]) / (2.0 * half))
        f_out = s.fill * s.size * min(ratios)
    boxes, ks = [], []
    for u, k in zip(uv0, k_n):
        side = s.size * float(k[0]) / f_out
        box = (float(u[0]) - side / 2, float(u[1]) - side / 2, float(u[0]) + side / 2, float(u[1]) + side / 2)
        boxes.append(box)
        ks.append(crop_intrinsics(k, box, (s.size, s.size)))
    return FrameGeometry(center, float(scale), c2w_n, torch.stack(ks), boxes)


def frame_checks(geo: FrameGeometry, raw_c2w: Tensor, raw_k: Tensor, alphas: Tensor, s: ImportSettings
                 ) -> tuple[float, list[float]]:
    """The import's two contracts for one frame, measured on what is written.

    Returns (reprojection: the largest distance, in pixels at 512 px, between where a point of the animal (samples
    of its visual hull) projects through the imported camera and where the raw calibration puts it, mapped through
    the view's crop; silhouette IoU of the visual hull per view, ``geometry.visual_hull``, at ``s.hull_size`` px).
    alphas: [V, 1, size, size] the imported views' masks.
    """
    points, inside, iou = hull_at_size(geo.c2w, geo.fxfycxcy, list(alphas), s.hull_size)
    pts = points[inside].double()
    if len(pts) == 0:
        pts = torch.zeros(1, 3, dtype=torch.float64)
    pts = pts[torch.linspace(0, len(pts) - 1, min(len(pts), 2000)).long()]
    got, _ = project_points(pts.expand(len(geo.c2w), -1, -1), geo.c2w.double(), geo.fxfycxcy.double())
    raw_pts = pts / geo.scale + geo.center.double()
    raw, _ = project_points(raw_pts.expand(len(raw_c2w), -1, -1), raw_c2w.double(), raw_k.double())
    box = torch.tensor(geo.boxes, dtype=torch.float64)
    side = (box[:, 2:] - box[:, :2])[:, None]
    expect = (raw - box[:, None, :2]) * s.size / side
    reproj = float((got - expect).norm(dim=-1).max()) * 512.0 / s.size
    return reproj, [float(x) for x in iou]


def import_recording(cameras: Sequence[Camera], images: Sequence[str | Path], out: str | Path,
                     masks: Sequence[str | Path] | None = None, segmenter: str | Callable | None = None,
                     settings: ImportSettings | None = None, progress: bool | None = None) -> ImportReport:
    """The whole import (module docstring). ``images`` / ``masks``: one folder or video per camera, in the
    calibration's order. Writes ``out/frame_NNNNNN/`` scenes and ``out/import_report.json``; returns the report."""

    s = settings or ImportSettings()
    out = Path(out)
    if len(images) != len(cameras):
        raise ValueError(f"{len(images)} image folders/videos for {len(cameras)} calibrated cameras; give one per "
                         "camera, in the calibration's order")
    if masks is not None and len(masks) != len(cameras):
        raise ValueError(f"{len(masks)} mask folders/videos for {len(cameras)} calibrated cameras")
    if masks is None and segmenter is None:
        raise ValueError("no masks: give mask folders/videos (--masks) or a segmenter (--segmenter MODULE:FUNCTION)")
    seg = load_callable(segmenter) if isinstance(segmenter, str) else segmenter
    streams = [FrameStream(p) for p in images]
    mask_streams = [FrameStream(p) for p in masks] if masks is not None else None
    c2w = torch.stack([c.c2w() for c in cameras])
    k = torch.stack([c.fxfycxcy() for c in cameras])
    units = s.units
    if units is not None and units not in UNITS:
        raise ValueError(f"--units must be one of {sorted(UNITS)}, got {units!r}")
    end = max(st.count for st in streams) if s.end is None else s.end
    frames = list(range(s.start, end, s.stride))
    report = ImportReport(settings={k_: (sorted(v) if isinstance(v, set) else v)
                                    for k_, v in dataclasses.asdict(s).items()})
    show = sys.stderr.isatty() if progress is None else progress
    try:
        for f in tqdm(frames, desc="import", unit="frame", disable=not show):
            report.frames_considered += 1
            try:
                if f in s.skip:
                    raise FrameError("skipped", "in --skip")
                rgbs, alphas = _read_frame(f, cameras, streams, mask_streams, seg, s)
                geo = normalize_frame(c2w, k, alphas, s)
                crops = torch.stack([crop_views(torch.cat([rgb, a])[None].float(), box, s.size)[0].clamp(0, 1)
                                     for rgb, a, box in zip(rgbs, alphas, geo.boxes)])
                reproj, iou = frame_checks(geo, c2w, k, crops[:, 3:4], s)
                bad = [(cameras[v].name, x) for v, x in enumerate(iou) if x < s.min_hull_iou]
                if bad:
                    raise FrameError("inconsistent_views", "the masks and cameras disagree (silhouette IoU of the "
                                     "visual hull " + ", ".join(f"{n} {x:.2f}" for n, x in bad) +
                                     f" < {s.min_hull_iou}): cameras in another unit or order than the videos, a "
                                     "mask of another frame, or a bad mask")
            except FrameError as e:
                report.rejected.append({"frame": f, "reason": e.reason, "detail": e.detail})
                continue
            dist = (c2w[:, :3, 3] - geo.center).norm(dim=-1)
            if units is None:
                units = infer_units(dist)
            scene = out / f"frame_{f:06d}"
            files = []
            for v, crop in enumerate(crops):
                files.append(f"images/cam_{v:03d}.png")
                save_png(scene / files[-1], crop[:3], crop[3:4])
            write_camera_file(scene / "opencv_cameras.json",
                              CameraFile(scene.name, geo.c2w, geo.fxfycxcy, [(s.size, s.size)] * len(c2w), files))
            checks = {"reprojection_px512": round(reproj, 4), "hull_iou": [round(x, 4) for x in iou]}
            meta = {"frame": f, "center": geo.center.tolist(), "scale": geo.scale, "units": units,
                    "radius": s.radius, "snap_radius": s.snap_radius, "camera_names": [c.name for c in cameras],
                    "raw_c2w": c2w.tolist(), "raw_fxfycxcy": k.tolist(), "raw_distance": dist.tolist(), **checks}
            write_atomic(scene / "capture.json", json.dumps(meta, indent=1) + "\n")
            report.kept.append({"frame": f, "scene": scene.name, "distance": [round(float(d), 4) for d in dist],
                                **checks})
    finally:
        for st in streams + (mask_streams or []):
            st.close()
    report.units = units or s.units or "unknown"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "import_report.json", json.dumps(report.to_dict(), indent=1) + "\n")
    return report


def _read_frame(f: int, cameras: Sequence[Camera], streams: list[FrameStream], mask_streams: list[FrameStream] | None,
                seg: Callable | None, s: ImportSettings) -> tuple[list[Tensor], list[Tensor]]:
    rgbs, alphas = [], []
    for v, (cam, st) in enumerate(zip(cameras, streams)):
        where = f"frame {f} camera {cam.name}"
        x = st.read(f)
        rgb = x[:3]
        if cam.size is not None and tuple(rgb.shape[-2:]) != tuple(cam.size):
            raise FrameError("unreadable_frame", f"{where}: image is {rgb.shape[-1]}x{rgb.shape[-2]}, the "
                             f"calibration says {cam.size[1]}x{cam.size[0]}")
        if mask_streams is not None:
            try:
                m = mask_channel(mask_streams[v].read(f, st.stem(f)))
            except FrameError as e:
                raise FrameError("no_mask", f"{where}: {e.detail}") from None
        else:
            try:
                pil = Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
                m = mask_from_result(seg(pil), tuple(rgb.shape[-2:]), f"{where} (segmenter)")
            except Exception as e:  # noqa: BLE001 - the user's segmenter: recorded per frame
                raise FrameError("no_mask", f"{where}: segmenter failed ({type(e).__name__}: {e})") from None
        if m.shape[-2:] != rgb.shape[-2:]:
            raise FrameError("no_mask", f"{where}: mask is {m.shape[-1]}x{m.shape[-2]}, image "
                             f"{rgb.shape[-1]}x{rgb.shape[-2]}")
        _check_mask(m, where, s)
        rgbs.append(undistort(rgb, cam))
        alphas.append(undistort(m, cam))
    return rgbs, alphas


def scene_cameras(root: str | Path) -> tuple[Tensor, Tensor, int, list[str]]:
    """The cameras of every scene below ``root`` with the same view count as the first: (c2w [F, V, 4, 4],
    fxfycxcy [F, V, 4], image size of the first view, camera names from capture.json or cam_VVV)."""

    files = sorted(Path(root).rglob("opencv_cameras.json"))
    if not files:
        raise FileNotFoundError(f"{root}: no opencv_cameras.json found below it")
    cams = [read_camera_file(f) for f in files]
    nv = len(cams[0].c2w)
    odd = [str(f.parent) for f, c in zip(files, cams) if len(c.c2w) != nv]
    if odd:
        raise ValueError(f"{len(odd)} scene(s) have another view count than {files[0].parent}'s {nv}, e.g. {odd[0]}")
    meta = files[0].parent / "capture.json"
    names = json.loads(meta.read_text())["camera_names"] if meta.is_file() else [f"cam_{v:03d}" for v in range(nv)]
    return (torch.stack([c.c2w for c in cams]), torch.stack([c.fxfycxcy for c in cams]), cams[0].sizes[0][1],
            [str(n) for n in names])


def calibration_cameras(cameras: Sequence[Camera], radius: float = 2.7) -> tuple[Tensor, Tensor, int, list[str]]:
    """A calibration alone (no masks): centred where the optical axes meet and scaled as one similarity so the mean
    camera distance is ``radius`` (intrinsics unchanged); [1, V, ...] like :func:`scene_cameras`, size = the first
    image width (or 2 cx)."""

    c2w = torch.stack([c.c2w() for c in cameras])
    k = torch.stack([c.fxfycxcy() for c in cameras])
    c2w_n, _, _ = normalize_cameras(c2w, radius, scene_center_from_rays(c2w))
    size = cameras[0].size[1] if cameras[0].size else round(2 * float(k[0, 2]))
    return c2w_n[None], k[None], size, [c.name for c in cameras]


def capture_camera_table(scene_dir: str | Path, up: str = "z") -> list[dict] | None:
    """Per camera of an imported scene: azimuth, elevation, distance about the animal's centre before (raw
    calibration, world units) and after normalization; None for scenes without capture.json."""

    meta_path = Path(scene_dir) / "capture.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    raw = torch.tensor(meta["raw_c2w"], dtype=torch.float64)
    before = spherical_from_c2w(raw, up=up, target=torch.tensor(meta["center"], dtype=torch.float64))
    after = spherical_from_c2w(read_camera_file(Path(scene_dir) / "opencv_cameras.json").c2w.double(), up=up)
    return [{"camera": meta["camera_names"][v], "before": [round(float(x[v]), 3) for x in before],
             "after": [round(float(x[v]), 3) for x in after], "units": meta["units"]} for v in range(len(raw))]


__all__ = [
    "REASONS",
    "FrameError",
    "FrameGeometry",
    "FrameStream",
    "ImportReport",
    "ImportSettings",
    "calibration_cameras",
    "capture_camera_table",
    "frame_checks",
    "import_recording",
    "mask_centroid",
    "normalize_frame",
    "parse_skip",
    "scene_cameras",
    "undistort",
]
