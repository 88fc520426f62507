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
import re
import sys
from pathlib import Path

from datamodules.captures import calibration_cameras, scene_cameras
from datamodules.rig_check import check_dataset, check_report_lines
from geometry.calibration import load_calibration
from geometry.camera_files import contained_path
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


def _check(args: argparse.Namespace) -> int:
    report = check_dataset(Path(args.data_dir), args.rig, args.angle_tol, args.dist_tol)
    print(json.dumps(report) if args.json else "\n".join(check_report_lines(report, args.data_dir)))
    return 0 if report["ok"] else 1


def _derive(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out)
    else:  # the name becomes a file of the shipped rig folder: one plain name, never a path out of it
        if not re.fullmatch(r"[A-Za-z0-9_.+=@-]+", args.name) or args.name.strip(".") == "":
            raise ValueError(f"--name {args.name!r} must be a plain rig name (letters, digits, _ . + = @ -): it is "
                             f"written to {RIGS_DIR}/NAME.yaml; use --out for another place")
        out = contained_path(RIGS_DIR, f"{args.name}.yaml", "--name")  # and no symlink there leads out of it
    src = Path(args.source)
    if src.is_dir():
        c2w, k, size, names = scene_cameras(src)
    else:
        c2w, k, size, names = calibration_cameras(load_calibration(src, trust=args.trust_pickle))
    rig, stats = derive_rig(args.name, c2w, k, size, names, up_axis=args.up)
    if args.fov is not None:
        rig = load_rig({**rig.to_dict(), "fov_deg": args.fov})
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
