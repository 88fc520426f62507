"""Procedural scene generation throughput: scenes per second of ``datamodules.procedural.make_scenes`` (plans drawn
on the CPU, pixels rendered in batches on the device), and of a ProceduralSource pre-rendering into 8-bit host
memory (what a training run waits for at start-up). One JSON line per (size, realistic) setting.

    python bench/procedural_throughput.py [--device cuda] [--sizes 128,256] [--views 8] [--scenes 512] [--batch 64]
        [--workers 8]   (plan processes, datamodules.procedural.ScenePlanner; 0: plan in this process)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.procedural import ScenePlanner, make_scenes
from datamodules.sources import ProceduralSource
from geometry.rig import load_rig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--scenes", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rig", default="mouse_oblique20_6view")
    p.add_argument("--workers", type=int, default=8)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rig = load_rig(args.rig)
    make_scenes([0], rig, args.views, 64, device=device)  # warm-up: kernels compiled / loaded
    for size in (int(s) for s in args.sizes.split(",")):
        for realistic in (False, True):
            with ScenePlanner(rig, args.views, size, realistic, workers=args.workers) as planner:
                planner.plans(list(range(args.workers * 2)))  # the processes are up
                sync(device)
                t0 = time.perf_counter()
                for start in range(0, args.scenes, args.batch):
                    make_scenes(list(range(start, min(start + args.batch, args.scenes))), rig, args.views, size,
                                realistic, device=device, planner=planner)
                sync(device)
                gen = time.perf_counter() - t0
            t0 = time.perf_counter()
            src = ProceduralSource("bench", "synthetic", rig, args.scenes, args.views, size, realistic,
                                   device="cuda" if device.type == "cuda" else "cpu")
            pre = time.perf_counter() - t0
            print(json.dumps({
                "bench": "procedural_throughput", "device": torch.cuda.get_device_name(device)
                if device.type == "cuda" else platform.processor() or "cpu", "size": size, "views": args.views,
                "realistic": realistic, "scenes": args.scenes, "batch": args.batch, "workers": args.workers,
                "scenes_per_s": round(args.scenes / gen, 1),
                "source_prerender_scenes_per_s": round(args.scenes / pre, 1) if src._rendered is not None else None,
            }), flush=True)
    return 0


if __name__ == "__main__":  # the guard matters: plan processes are spawned and import this file
    raise SystemExit(main())
