"""A data set's cameras against a rig: the report of ``python -m tools.rig check``.

:func:`check_dataset` reads every ``opencv_cameras.json`` below a folder: scenes with at least the rig's views are
compared view by view (the rig's views first, in rig order: diffusion data), all scenes are summarised (camera
distances, elevations, fields of view against the rig), and scenes written by ``tools.import_captures`` (with
``capture.json``) report each camera about the animal before and after normalization
(``datamodules.captures.capture_camera_table``), and the first ``hull_scenes`` scenes with masks (images with
alpha) report the visual hull's silhouette IoU per view (``geometry.visual_hull``): masks and cameras that disagree
(wrong units or order, a view cropped without its intrinsics) are a problem below ``min_hull_iou``.
:func:`check_report_lines` is its printed form. The DataModule's
own refusal of a source that cannot match the diffusion stage's rig is ``SceneBuilder.check_source_rig``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules.captures import capture_camera_table
from datamodules.photos import read_image
from geometry.camera_files import CameraFile, read_camera_file
from geometry.cameras import fov_from_focal, spherical_from_c2w
from geometry.rig import load_rig
from geometry.visual_hull import hull_at_size

HULL_SIZE, HULL_SAMPLES = 48, 64  # the masks' size and the samples per ray of the hull check


def scene_hull_iou(scene_dir: Path, cams: CameraFile) -> list[float] | None:
    """Silhouette IoU of the visual hull per view of one scene (its images' alpha at HULL_SIZE px, about the world
    origin: the animal's centre in imported and normalized data); None when a view's image is missing or has no
    alpha."""
    masks = []
    for v, fp in enumerate(cams.file_paths):
        path = scene_dir / (fp or f"images/cam_{v:03d}.png")
        if not path.is_file():  # cameras without their images: nothing to carve
            return None
        _, alpha = read_image(path)
        if alpha is None:
            return None
        masks.append(alpha)
    _, _, iou = hull_at_size(cams.c2w, cams.fxfycxcy, masks, HULL_SIZE, HULL_SAMPLES)
    return [round(float(x), 4) for x in iou]


def check_dataset(data_dir: Path, rig_name: str, angle_tol: float = 1.0, dist_tol: float = 0.05,
                  hull_scenes: int = 8, min_hull_iou: float = 0.8) -> dict:
    """Compare every scene's cameras under ``data_dir`` with the rig (its first rig-many views, in rig order; a scene
    with fewer views is a problem) and check the first ``hull_scenes`` scenes' masks against their cameras; returns a
    JSON-able report."""
    rig = load_rig(rig_name)
    files = sorted(data_dir.rglob("opencv_cameras.json"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no opencv_cameras.json found below it")
    per_scene, dists, elevs, fovs, short, hulls = [], [], [], [], [], {}
    for f in files:
        cams = read_camera_file(f)
        if len(hulls) < hull_scenes and (iou := scene_hull_iou(f.parent, cams)) is not None:
            hulls[str(f.parent)] = iou
        _, el, d = spherical_from_c2w(cams.c2w.double(), up=rig.up_axis)
        dists.append(d)
        elevs.append(el)
        fovs += [fov_from_focal(float(k[0]), w) for k, (_, w) in zip(cams.fxfycxcy, cams.sizes)]
        if len(cams.c2w) >= rig.num_views:  # the rig's views come first (FaceLift layout); extra views are free
            diff = rig.compare_cameras(cams.c2w[: rig.num_views], name=str(f.parent), angle_tol_deg=angle_tol,
                                       dist_tol=dist_tol)
            per_scene.append({"scene": str(f.parent), "ok": diff.ok, "worst_angle_deg": diff.worst_angle_deg,
                              "worst_distance": diff.worst_distance})
        else:
            short.append(f"{f.parent} ({len(cams.c2w)} views)")
    d, e = torch.cat(dists), torch.cat(elevs)
    report = {
        "rig": rig.name, "fingerprint": rig.fingerprint, "scenes": len(files),
        "distance": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean()),
                     "rig": rig.radius if rig.distances is None else list(rig.distances)},
        "elevation_deg": {"min": float(e.min()), "max": float(e.max()), "rig": list(rig.elevations_deg)},
        "fov_deg": {"min": min(fovs), "max": max(fovs), "rig": rig.fov_deg},
        "rig_order_scenes": per_scene,
    }
    problems = []
    lo, hi = min(rig.view_distances), max(rig.view_distances)
    if float(d.min()) < lo - dist_tol or float(d.max()) > hi + dist_tol:
        problems.append(f"camera distances span {report['distance']['min']:.3f}..{report['distance']['max']:.3f}, "
                        f"the rig's cameras stand at {lo:g}..{hi:g}: import recordings with tools.import_captures "
                        "or enable camera normalization (normalize_cameras: true)")
    if max(abs(x - rig.fov_deg) for x in fovs) > angle_tol:
        problems.append(f"fields of view span {min(fovs):.2f}..{max(fovs):.2f} deg, the rig has {rig.fov_deg}")
    bad = [s["scene"] for s in per_scene if not s["ok"]]
    if bad:
        problems.append(f"{len(bad)} scene(s)' first {rig.num_views} views do not match the rig, e.g. {bad[0]}")
    if short:
        problems.append(f"{len(short)} scene(s) have fewer views than the rig's {rig.num_views}, e.g. {short[0]}")
    uncalibrated = sorted(str(d.parent) for d in data_dir.rglob("images")
                          if d.is_dir() and not (d.parent / "opencv_cameras.json").is_file())
    if uncalibrated:  # a scene folder without its camera file: said, never silently left out
        problems.append(f"{len(uncalibrated)} scene folder(s) have images/ but no opencv_cameras.json, e.g. "
                        f"{uncalibrated[0]}")
    bad_hull = {k: v for k, v in hulls.items() if min(v) < min_hull_iou}
    if bad_hull:
        scene, iou = next(iter(bad_hull.items()))
        view = min(range(len(iou)), key=iou.__getitem__)
        problems.append(f"{len(bad_hull)} scene(s)' masks and cameras disagree (visual hull silhouette IoU < "
                        f"{min_hull_iou}), e.g. {scene} view {view}: {iou[view]:.2f} (an image moved without its "
                        "intrinsics, cameras in another order or unit, a bad mask)")
    report["hull_iou"], report["min_hull_iou"] = hulls, min_hull_iou
    report["short_scenes"], report["scenes_without_cameras"] = short, uncalibrated
    report["cameras_about_animal"] = {str(f.parent): t for f in files
                                      if (t := capture_camera_table(f.parent, rig.up_axis)) is not None}
    report["problems"], report["ok"] = problems, not problems
    return report


def check_report_lines(report: dict, data_dir: str) -> list[str]:
    """The text ``tools.rig check`` prints for a :func:`check_dataset` report."""
    lines = [f"{report['scenes']} scene(s) under {data_dir} vs rig {report['rig']} ({report['fingerprint']})"]
    for key in ("distance", "elevation_deg", "fov_deg"):
        r = report[key]
        lines.append(f"  {key:<14} min {r['min']:8.3f}  max {r['max']:8.3f}  rig {r['rig']}")
    for s in report["rig_order_scenes"]:
        lines.append(f"  {'ok ' if s['ok'] else 'BAD'} {s['scene']}  worst angle {s['worst_angle_deg']:.2f} deg")
    if report["hull_iou"]:
        worst = min(min(v) for v in report["hull_iou"].values())
        lines.append(f"  visual hull   silhouette IoU >= {worst:.3f} over {len(report['hull_iou'])} scene(s) "
                     f"(threshold {report['min_hull_iou']})")
    for scene, table in list(report["cameras_about_animal"].items())[:1]:
        lines.append(f"  {scene}: azimuth / elevation / distance about the animal, before ({table[0]['units']}) -> "
                     "after")
        for r in table:
            lines.append(f"    {r['camera']:<12}" + "  ->  ".join("{:7.1f} {:6.1f} {:8.3f}".format(*x)
                                                                 for x in (r["before"], r["after"])))
    lines += ["OK"] if report["ok"] else [f"PROBLEM: {p}" for p in report["problems"]]
    return lines


__all__ = ["check_dataset", "check_report_lines"]
