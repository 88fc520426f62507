"""Inspect and compare camera rigs; check a data set's cameras against a rig.

    python -m tools.rig show NAME [--size S] [--json]
    python -m tools.rig compare A B [--angle-tol 1.0] [--dist-tol 0.05] [--json]     (exit 1 when they differ)
    python -m tools.rig check DATA_DIR --rig NAME [--json]                          (exit 1 on mismatch)
    python -m tools.rig derive CALIBRATION_OR_SCENES --name NAME [--out PATH] [--up z|y] [--fov DEG] [--json]

``check`` reads every ``opencv_cameras.json`` below DATA_DIR. Scenes with as many views as the rig are compared view
by view (diffusion data must be in rig order); scenes with other view counts (reconstruction data) are summarised:
camera distances (the normalization the pretrained GS-LRM needs), elevations and field of view against the rig.
Scenes written by ``tools.import_captures`` (with capture.json) also report each camera's azimuth / elevation /
distance about the animal's centre before (raw calibration) and after normalization.

``derive`` writes a rig (default ``configs/rigs/NAME.yaml``) from normalized real cameras: the scenes of
``tools.import_captures`` (per view the mean direction about the animal over all frames, the median field of view),
or a calibration file alone (centred where the optical axes meet; field of view at the calibrated image width).
It prints how far each frame's cameras lie from the rig (positions; orientations differ by each real camera's
off-axis angle).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from datamodules.captures import calibration_cameras, capture_camera_table, scene_cameras
from geometry.calibration import load_calibration
from geometry.camera_files import read_camera_file
from geometry.cameras import fov_from_focal, spherical_from_c2w
from geometry.rig import RIGS_DIR, derive_rig, load_rig, rig_yaml


def _show(args: argparse.Namespace) -> int:
    rig = load_rig(args.name)
    rows = rig.describe(args.size)
    if args.json:
        print(json.dumps({"rig": rig.to_dict(), "fingerprint": rig.fingerprint, "size": args.size or rig.image_size,
                          "views": rows}))
        return 0
    print(f"rig {rig.name}  fingerprint {rig.fingerprint}  up {rig.up_axis}  size {args.size or rig.image_size}px")
    print(f"{'view':<14}{'azimuth':>9}{'elev':>8}{'dist':>8}{'fov':>7}{'focal':>9}  position")
    for r in rows:
        print(f"{r['view']:<14}{r['azimuth_deg']:9.1f}{r['elevation_deg']:8.1f}{r['distance']:8.3f}"
              f"{r['fov_deg']:7.1f}{r['focal_px']:9.2f}  {r['position']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    diff = load_rig(args.a).compare(load_rig(args.b), angle_tol_deg=args.angle_tol, dist_tol=args.dist_tol)
    print(json.dumps(diff.to_dict()) if args.json else diff)
    return 0 if diff.ok else 1


def check_dataset(data_dir: Path, rig_name: str, angle_tol: float = 1.0, dist_tol: float = 0.05) -> dict:
    """Compare every scene's cameras under ``data_dir`` with the rig (its first rig-many views, in rig order; a scene
    with fewer views is a problem); returns a JSON-able report."""
    rig = load_rig(rig_name)
    files = sorted(data_dir.rglob("opencv_cameras.json"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no opencv_cameras.json found below it")
    per_scene, dists, elevs, fovs, short = [], [], [], [], []
    for f in files:
        cams = read_camera_file(f)
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
        "distance": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean()), "rig": rig.radius},
        "elevation_deg": {"min": float(e.min()), "max": float(e.max()), "rig": list(rig.elevations_deg)},
        "fov_deg": {"min": min(fovs), "max": max(fovs), "rig": rig.fov_deg},
        "rig_order_scenes": per_scene,
    }
    problems = []
    if (d - rig.radius).abs().max() > dist_tol:
        problems.append(f"camera distances span {report['distance']['min']:.3f}..{report['distance']['max']:.3f}, "
                        f"the rig expects {rig.radius}: enable camera normalization (normalize_cameras: true)")
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
    report["short_scenes"], report["scenes_without_cameras"] = short, uncalibrated
    report["cameras_about_animal"] = {str(f.parent): t for f in files
                                      if (t := capture_camera_table(f.parent, rig.up_axis)) is not None}
    report["problems"], report["ok"] = problems, not problems
    return report


def _check(args: argparse.Namespace) -> int:
    report = check_dataset(Path(args.data_dir), args.rig, args.angle_tol, args.dist_tol)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['scenes']} scene(s) under {args.data_dir} vs rig {report['rig']} ({report['fingerprint']})")
        for key in ("distance", "elevation_deg", "fov_deg"):
            r = report[key]
            print(f"  {key:<14} min {r['min']:8.3f}  max {r['max']:8.3f}  rig {r['rig']}")
        for s in report["rig_order_scenes"]:
            print(f"  {'ok ' if s['ok'] else 'BAD'} {s['scene']}  worst angle {s['worst_angle_deg']:.2f} deg")
        for scene, table in list(report["cameras_about_animal"].items())[:1]:
            print(f"  {scene}: azimuth / elevation / distance about the animal, before ({table[0]['units']}) -> after")
            for r in table:
                print(f"    {r['camera']:<12}" + "  ->  ".join("{:7.1f} {:6.1f} {:8.3f}".format(*x)
                                                              for x in (r["before"], r["after"])))
        print("OK" if report["ok"] else "\n".join(f"PROBLEM: {p}" for p in report["problems"]))
    return 0 if report["ok"] else 1


def _derive(args: argparse.Namespace) -> int:
    src = Path(args.source)
    if src.is_dir():
        c2w, k, size, names = scene_cameras(src)
    else:
        c2w, k, size, names = calibration_cameras(load_calibration(src, trust=args.trust_pickle))
    rig, stats = derive_rig(args.name, c2w, k, size, names, up_axis=args.up)
    if args.fov is not None:
        rig = load_rig({**rig.to_dict(), "fov_deg": args.fov})
    out = Path(args.out) if args.out else RIGS_DIR / f"{args.name}.yaml"
    out.write_text(rig_yaml(rig, f"derived by tools.rig derive from {src} ({stats['frames']} frame(s))"))
    if args.json:
        print(json.dumps({"rig": rig.to_dict(), "path": str(out), **stats}))
        return 0
    print(f"wrote {out}: rig {rig.name} ({rig.fingerprint}), {stats['frames']} frame(s), fov {rig.fov_deg:.2f} deg")
    for i, n in enumerate(rig.view_names):
        print(f"  {n:<14}azimuth {rig.azimuths_deg[i]:7.1f} (+-{stats['azimuth_spread_deg'][i]:.1f})  elevation "
              f"{rig.elevations_deg[i]:6.1f} (+-{stats['elevation_spread_deg'][i]:.1f})")
    print(f"  frames vs rig: camera positions within {stats['worst_position_angle_deg']:.2f} deg, orientations "
          f"within {stats['worst_orientation_deg']:.2f} deg")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.rig", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print a rig's cameras")
    s.add_argument("name")
    s.add_argument("--size", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_show)
    for name, func, pos in (("compare", _compare, ("a", "b")), ("check", _check, ("data_dir",))):
        c = sub.add_parser(name)
        for a in pos:
            c.add_argument(a)
        if name == "check":
            c.add_argument("--rig", required=True)
        c.add_argument("--angle-tol", type=float, default=1.0)
        c.add_argument("--dist-tol", type=float, default=0.05)
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=func)
    d = sub.add_parser("derive", help="write a rig yaml from normalized real cameras")
    d.add_argument("source", help="scenes of tools.import_captures, or a calibration file")
    d.add_argument("--name", required=True)
    d.add_argument("--out", default=None, help="rig yaml to write (default: configs/rigs/NAME.yaml)")
    d.add_argument("--up", default="z", choices=["z", "y"], help="the world's up axis")
    d.add_argument("--fov", type=float, default=None, help="field of view in degrees (default: measured)")
    d.add_argument("--trust-pickle", action="store_true", help="unpickle a .pkl calibration fully (runs its code)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_derive)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
