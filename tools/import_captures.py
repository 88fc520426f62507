"""A calibrated multi-camera recording -> FaceLift-layout scenes (one per kept frame), normalized for the rig.

    python -m tools.import_captures --calibration CAL --images CAM0 CAM1 ... (--masks M0 M1 ... | --segmenter MOD:FN)
        --out DIR [--size 512] [--rig NAME | --radius 2.7 --fill 0.6 | --fov 50] [--start 0] [--end N] [--stride 1]
        [--skip 100-120,300] [--units cm|mm|m] [--calibration-format auto|opencv|anipose|pickle] [--trust-pickle]
        [--min-hull-iou 0.8] [--snap-radius]
    python -m tools.import_captures --markerless DIR --out OUT ...   (markerless_mouse_1: videos_undist/{0..5}.mp4,
                                                                      simpleclick_undist/{0..5}.mp4, new_cam.pkl)

CAM / M: a folder of images (frame i = the i-th file by name) or a video (needs the `video` extra), one per camera in
the calibration's order. Calibrations: OpenCV K/R/T/dist per camera in JSON or YAML, anipose's calibration.toml, or
a pickle (.pkl). A pickle is read with a restricted unpickler (plain containers and numpy arrays only, nothing that
runs code); --trust-pickle unpickles it fully, only for files you trust.

Each frame: masks checked, images undistorted when the calibration has distortion, the world moved and scaled as
one similarity (the animal's centre - the point nearest the rays through the mask centroids - to the origin, the
mean camera distance to --radius; the calibration's units drop out, --units only labels the report), every view
cropped square around the animal with its intrinsics at one field of view (--fov, the rig's with --rig, else the
widest that keeps every animal within --fill of the frame). Two checks per frame, written in the report: the
reprojection (a point of the animal through the imported camera vs the raw calibration through the crop, px at
512 px; 0 up to rounding unless --snap-radius) and the visual hull's silhouette IoU per view (masks and cameras
agree). A frame whose hull IoU is below --min-hull-iou is rejected as inconsistent_views. --snap-radius then moves
every camera along its line to exactly --radius with its focal length scaled: an approximation whose error the
reprojection column shows (18 px at 512 px for cameras at 2.0-3.4). Writes DIR/frame_NNNNNN/ and
DIR/import_report.json (kept frames with both checks, rejected frames with their reason); exit 1 when nothing was
kept.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from datamodules.captures import ImportSettings, import_recording, parse_skip
from geometry.calibration import FORMATS, UNITS, load_calibration
from geometry.rig import load_rig

MARKERLESS_CAMERAS = 6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.import_captures", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--calibration", type=Path, help="calibration file (JSON / YAML / calibration.toml / .pkl)")
    p.add_argument("--calibration-format", default="auto", choices=FORMATS)
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a .pkl calibration fully (can run code from the file: only for files you trust)")
    p.add_argument("--images", nargs="+", type=Path, help="one image folder or video per camera")
    p.add_argument("--masks", nargs="+", type=Path, help="one mask folder or video per camera")
    p.add_argument("--segmenter", help="MODULE:FUNCTION making masks when there are none (called with a PIL image, "
                                       "returns a mask or RGBA; as tools.infer's --background-removal)")
    p.add_argument("--markerless", type=Path, help="a markerless_mouse_1-layout folder (sets the three above)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--size", type=int, default=512, help="output view size in px")
    p.add_argument("--rig", default=None, help="a rig (name or yaml): its field of view and radius (instead of "
                                               "--fov / --radius)")
    p.add_argument("--radius", type=float, default=None, help="mean camera distance after normalization (2.7)")
    p.add_argument("--fill", type=float, default=0.6, help="the animal's largest extent as a fraction of the frame")
    p.add_argument("--fov", type=float, default=None, help="fixed output field of view in degrees (instead of --fill)")
    p.add_argument("--min-hull-iou", type=float, default=0.8,
                   help="reject a frame whose visual hull's silhouette IoU is below this in any view")
    p.add_argument("--snap-radius", action="store_true",
                   help="then move every camera to exactly --radius, focal scaled (approximate; error reported)")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--end", type=int, default=None, help="first frame not imported (default: the longest camera's)")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--skip", default=None, help="frames to leave out, e.g. where the recording jumps: 100-120,300")
    p.add_argument("--units", choices=sorted(UNITS), default=None, help="world units (default: inferred)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    return p


def run(args: argparse.Namespace):
    cal, images, masks = args.calibration, args.images, args.masks
    if args.markerless is not None:
        d = args.markerless
        cal = cal or d / "new_cam.pkl"
        images = images or [d / "videos_undist" / f"{i}.mp4" for i in range(MARKERLESS_CAMERAS)]
        if masks is None and args.segmenter is None:
            masks = [d / "simpleclick_undist" / f"{i}.mp4" for i in range(MARKERLESS_CAMERAS)]
    if cal is None or not images:
        raise ValueError("give --calibration and --images (or --markerless DIR)")
    if args.stride < 1 or args.size < 16 or not 0 < args.fill <= 1:
        raise ValueError("need --stride >= 1, --size >= 16 and 0 < --fill <= 1")
    if not 0 <= args.min_hull_iou <= 1:
        raise ValueError(f"--min-hull-iou must be in [0, 1], got {args.min_hull_iou}")
    fov, radius = args.fov, args.radius
    if args.rig is not None:
        rig = load_rig(args.rig)
        fov = rig.fov_deg if fov is None else fov
        radius = rig.radius if radius is None else radius
    radius = 2.7 if radius is None else radius
    if not radius > 0 or (fov is not None and not 0 < fov < 180):
        raise ValueError(f"need --radius > 0 and 0 < --fov < 180, got {radius} and {fov}")
    cameras = load_calibration(cal, args.calibration_format, trust=args.trust_pickle)
    settings = ImportSettings(size=args.size, radius=radius, fill=args.fill, fov_deg=fov, start=args.start,
                              end=args.end, stride=args.stride, skip=parse_skip(args.skip), units=args.units,
                              snap_radius=args.snap_radius, min_hull_iou=args.min_hull_iou)
    return import_recording(cameras, images, args.out, masks, args.segmenter, settings, args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"import_captures: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"scenes in {args.out}, report {args.out / 'import_report.json'}")
    return 0 if report.kept else 1


if __name__ == "__main__":
    sys.exit(main())
