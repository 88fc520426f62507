"""Write a FaceLift-layout data set of procedural mouse-like scenes.

    python -m tools.synthesize --out DIR --scenes N --views V --size S --rig NAME [--realistic] [--seed K]
        [--val-fraction 0.1] [--camera-jitter-deg J]

Layout (what FaceLift's loaders and ours read):
    DIR/sample_000000/images/cam_000.png   RGBA 8-bit: straight RGB + alpha (``--realistic``: RGB with the
                                           background baked in, alpha = object mask)
    DIR/sample_000000/opencv_cameras.json  {"id", "frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c", "file_path"}]}
    DIR/data_train.txt, DIR/data_val.txt   one absolute sample directory per line
    DIR/dataset.json                       generator, rig (name, fingerprint, definition), seed, counts, settings

Scenes come from :func:`datamodules.procedural.make_scene`; :func:`write_facelift_scene` writes any scene dict of
that shape, so other sources (e.g. a diffusion model's views) can reuse it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geometry.camera_files import CameraFile, write_camera_file
from geometry.rig import Rig, available_rigs, load_rig

log = logging.getLogger("mvlift.synthesize")

DATASET_VERSION = 1


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def write_facelift_scene(sample_dir: str | Path, scene: dict[str, Any]) -> Path:
    """Write one scene in FaceLift's layout.

    Args:
        sample_dir: the sample directory to create (``.../sample_000000``).
        scene: {"images" [V, 3, H, W] in [0, 1], "alpha" [V, 1, H, W], "c2w" [V, 4, 4], "fxfycxcy" [V, 4],
            "scene_id" str} as :func:`datamodules.procedural.make_scene` returns.
    Returns:
        the sample directory. Images are ``images/cam_XXX.png`` (RGBA), cameras ``opencv_cameras.json`` (w2c).
    """
    sample_dir = Path(sample_dir)
    images, alpha, c2w, k = scene["images"], scene["alpha"], scene["c2w"], scene["fxfycxcy"]
    v, _, h, w = images.shape
    if alpha.shape != (v, 1, h, w) or c2w.shape != (v, 4, 4) or k.shape != (v, 4):
        raise ValueError(f"write_facelift_scene({sample_dir}): inconsistent shapes images {list(images.shape)}, "
                         f"alpha {list(alpha.shape)}, c2w {list(c2w.shape)}, fxfycxcy {list(k.shape)}")
    (sample_dir / "images").mkdir(parents=True, exist_ok=True)
    rgba = _to_uint8(torch.cat([images, alpha], 1).permute(0, 2, 3, 1))  # [V, H, W, 4]
    names = [f"images/cam_{i:03d}.png" for i in range(v)]
    for name, pixels in zip(names, rgba):
        Image.fromarray(pixels, mode="RGBA").save(sample_dir / name)
    cams = CameraFile(scene_id=str(scene.get("scene_id", sample_dir.name)), c2w=c2w.detach().cpu(),
                      fxfycxcy=k.detach().cpu(), sizes=[(h, w)] * v, file_paths=names)
    write_camera_file(sample_dir / "opencv_cameras.json", cams)
    return sample_dir


def split_scenes(num_scenes: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) scene indices: the last round(N * val_fraction) scenes are validation (>= 1 when the fraction
    is positive and N >= 2), so growing --scenes keeps earlier scenes in the same split only up to that tail."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = round(num_scenes * val_fraction)
    if val_fraction > 0 and num_scenes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, num_scenes - 1) if num_scenes > 1 else 0
    return list(range(num_scenes - n_val)), list(range(num_scenes - n_val, num_scenes))


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_list_files(out: Path, sample_dirs: Sequence[Path], train: Sequence[int], val: Sequence[int]) -> None:
    """``data_train.txt`` / ``data_val.txt``: one absolute sample directory per line (FaceLift's list files)."""
    for name, idx in (("data_train.txt", train), ("data_val.txt", val)):
        lines = [str(Path(sample_dirs[i]).resolve()) for i in idx]
        _write_text_atomic(out / name, "".join(line + "\n" for line in lines))


def dataset_record(rig: Rig, args: argparse.Namespace, train: Sequence[int], val: Sequence[int]) -> dict[str, Any]:
    return {
        "version": DATASET_VERSION, "generator": "procedural", "rig": rig.name, "rig_fingerprint": rig.fingerprint,
        "rig_definition": rig.to_dict(), "seed": args.seed, "realistic": bool(args.realistic),
        "has_background": bool(args.realistic), "scenes": args.scenes, "views": args.views, "size": args.size,
        "camera_jitter_deg": args.camera_jitter_deg, "val_fraction": args.val_fraction,
        "train": len(train), "val": len(val),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.synthesize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--scenes", type=int, default=64, help="number of scenes")
    p.add_argument("--views", type=int, default=8,
                   help="views per scene: the rig's views in order, then random views on its sphere")
    p.add_argument("--size", type=int, default=128, help="square image size in px")
    p.add_argument("--rig", default="facelift_6view",
                   help=f"rig name or file (shipped: {', '.join(available_rigs())})")
    p.add_argument("--realistic", action="store_true",
                   help="bake background, lighting change, pose error, blur and noise into the images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--camera-jitter-deg", type=float, default=0.0,
                   help="rotate each rig camera about the target by up to this angle (saved cameras include it)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.scenes < 1 or args.views < 1:
        raise ValueError(f"--scenes and --views must be >= 1, got {args.scenes} and {args.views}")
    if args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    if args.camera_jitter_deg < 0 or not math.isfinite(args.camera_jitter_deg):
        raise ValueError(f"--camera-jitter-deg must be a finite angle >= 0, got {args.camera_jitter_deg}")


def synthesize(args: argparse.Namespace) -> Path:
    """Write the data set described by parsed ``args``; returns the dataset.json path."""
    from datamodules.procedural import make_scene  # heavy import only when running

    _check_args(args)
    rig = load_rig(args.rig)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = split_scenes(args.scenes, args.val_fraction)
    sample_dirs, t0 = [], time.time()
    for i in range(args.scenes):
        scene = make_scene(i, rig, args.views, args.size, realistic=args.realistic, seed=args.seed,
                           camera_jitter_deg=args.camera_jitter_deg)
        sample_dirs.append(write_facelift_scene(out / f"sample_{i:06d}", scene))
        if (i + 1) % max(1, args.scenes // 10) == 0 or i + 1 == args.scenes:
            log.info("%d/%d scenes (%.1f s)", i + 1, args.scenes, time.time() - t0)
    write_list_files(out, sample_dirs, train, val)
    record = dataset_record(rig, args, train, val)
    _write_text_atomic(out / "dataset.json", json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %d train / %d val scenes, %d views at %d px, rig %s (%s)%s", out, len(train), len(val),
             args.views, args.size, rig.name, rig.fingerprint, ", realistic" if args.realistic else "")
    return out / "dataset.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        synthesize(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"synthesize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
