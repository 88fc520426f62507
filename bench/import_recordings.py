"""Imported recordings of procedural mice for the learning check of docs/results.md ("Geometry from real inputs").

    python -m bench.import_recordings --out DIR [--train 600] [--heldout 40] [--units mm] [--size 128]
        [--device cuda] [--workers 12]

Writes two recordings (``datamodules.procedural_recording``: the six lab cameras, calibrated in ``--units``):
DIR/train_rec (procedural scenes 0..train-1 of seed 0) and DIR/heldout_rec (scenes of seed 7: mice no training run
sees), renders them on ``--device``, imports each with ``tools.import_captures``' library call at ``--size`` px on
the mouse rig's field of view in ``--workers`` processes (frame ranges into DIR/*_parts/pK, then moved to
DIR/train and DIR/heldout), and prints one JSON line: frames kept / rejected, the worst reprojection and hull IoU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from datamodules.captures import ImportSettings, import_recording
from datamodules.procedural_recording import write_procedural_recording
from geometry.calibration import load_calibration


def _import_part(args: tuple) -> dict:
    rec, out, start, end, size = args
    import torch

    torch.set_num_threads(1)
    cams = load_calibration(rec / "calibration.json")
    n = len(cams)
    report = import_recording(cams, [rec / "images" / f"cam{v}" for v in range(n)], out,
                              [rec / "masks" / f"cam{v}" for v in range(n)],
                              settings=ImportSettings(size=size, fov_deg=50.0, start=start, end=end), progress=False)
    return report.to_dict()


def import_parallel(rec: Path, dest: Path, frames: int, size: int, workers: int) -> dict:
    parts = dest.parent / f"{dest.name}_parts"
    chunk = -(-frames // workers)
    jobs = [(rec, parts / f"p{k}", k * chunk, min(frames, (k + 1) * chunk), size) for k in range(workers)
            if k * chunk < frames]
    with ProcessPoolExecutor(len(jobs)) as pool:
        reports = list(pool.map(_import_part, jobs))
    dest.mkdir(parents=True, exist_ok=True)
    for _, part, *_ in jobs:
        for scene in sorted(part.glob("frame_*")):
            shutil.move(str(scene), dest / scene.name)
    kept = [f for r in reports for f in r["kept_frames"]]
    summary = {"kept": len(kept), "rejected": sum(r["rejected"] for r in reports),
               "rejected_by_reason": {k: sum(r["rejected_by_reason"].get(k, 0) for r in reports)
                                      for k in {k for r in reports for k in r["rejected_by_reason"]}},
               "worst_reprojection_px512": max((f["reprojection_px512"] for f in kept), default=None),
               "min_hull_iou": min((min(f["hull_iou"]) for f in kept), default=None)}
    (dest / "import_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.import_recordings", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--units", default="mm", choices=["mm", "cm", "m"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    result = {"units": args.units, "size": args.size}
    for name, n, seed in (("train", args.train, 0), ("heldout", args.heldout, 7)):
        t = time.time()
        rec = args.out / f"{name}_rec"
        write_procedural_recording(rec, list(range(n)), units=args.units, seed=seed, device=args.device)
        t_rec = time.time() - t
        summary = import_parallel(rec, args.out / name, n, args.size, args.workers)
        result[name] = {**summary, "record_s": round(t_rec, 1), "import_s": round(time.time() - t - t_rec, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
