"""Seconds to pre-render a realistic procedural source on the GPU, alone and beside busy processes: what a
training whose data mix a realistic source (configs/studies/phases/data_mixed*.yaml) spends at start-up when other
trainings share its GPU (bench/phases.py runs six at once). One JSON line per run.

    python -m bench.realistic_render [--scenes 500] [--size 64] [--views 6] [--busy 0 4] [--clean] [--sync-uploads]
                                     [--parts] [--cache DIR]
    python -m bench.realistic_render --count-ops [--scenes 128] [--size 32]     (any machine: no GPU needed)

``--busy K``: K processes keep the GPU busy meanwhile with a training-like loop (small kernels, a host sync every
step). ``--sync-uploads``: the capture effects' draws (one copy per chunk of scenes) and blur kernels copied to the GPU
with a plain, waiting copy instead of ``datamodules.procedural._upload``: what the waits alone cost. ``--parts``:
the same pre-render again in its timed parts (``render_parts``). ``--cache DIR``: instead, the pre-render through
the on-disk cache (``datamodules.render_cache``), writing it and then reading it. Needs CUDA
and gsplat (docs/benchmarks.md). ``--count-ops``: the tensor operations (each a kernel launch on a GPU) that the capture
effects of ``--scenes`` scenes dispatch, counted on the CPU: what the GPU is asked to do, whatever the device.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from datetime import date

import numpy as np
import torch


@torch.no_grad()
def _busy(stop: mp.Event, ready: mp.Barrier) -> None:
    """A stand-in for a training sharing the GPU: small matmuls and convolutions, a host sync every step."""
    x = torch.randn(16, 64, 64, 64, device="cuda")
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda()
    ready.wait()
    while not stop.is_set():
        for _ in range(20):
            x = torch.tanh(conv(x))
        float(x.mean())


def render_seconds(scenes: int, size: int, views: int, realistic: bool) -> float:
    from datamodules import sources
    from geometry.rig import load_rig

    sources._PRERENDERED.clear()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    sources.ProceduralSource("bench", "synthetic", load_rig("mouse_oblique20_6view"), scenes, views, size,
                             realistic=realistic, device="cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def render_parts(scenes: int, size: int, views: int, realistic: bool, chunk: int = 128,
                 device: str = "cuda") -> dict[str, float]:
    """The pre-render of ``render_seconds`` in its parts, each timed alone: starting the planner processes
    (``datamodules.sources.planner_workers``), planning every scene in them, and
    rendering the plans on the GPU in chunks (rasterizer and capture effects; the copy to host memory included)."""
    from datamodules import procedural
    from datamodules.sources import planner_workers
    from geometry.rig import load_rig

    workers = planner_workers(scenes)
    args = (load_rig("mouse_oblique20_6view"), views, size, realistic, 0, 0.0)
    t0 = time.perf_counter()
    with procedural.ScenePlanner(*args, workers=workers) as planner:
        planner.plans([0] * max(1, workers))  # every process has imported its modules
        t1 = time.perf_counter()
        plans = planner.plans(list(range(scenes)))
        t2 = time.perf_counter()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t3 = time.perf_counter()
    for start in range(0, scenes, chunk):
        for sc in procedural.render_plans(plans[start: start + chunk], size, device):
            sc["images"].cpu()
    sync()
    return {"planners": workers, "planner_start_s": round(t1 - t0, 2), "plan_s": round(t2 - t1, 2),
            "render_s": round(time.perf_counter() - t3, 2)}


def count_capture_ops(scenes: int, size: int, views: int) -> int:
    """Tensor operations dispatched inside ``datamodules.procedural._capture`` while ``scenes`` realistic scenes are
    rendered (render_plans on the CPU; the rasterizer's own operations are not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from datamodules import procedural

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    counter, capture = Count(), procedural._capture

    def counted(*args: object, **kwargs: object) -> object:
        with counter:
            return capture(*args, **kwargs)

    plans = procedural.ScenePlanner("mouse_oblique20_6view", views, size, True, 1).plans(list(range(scenes)))
    procedural._capture = counted
    try:
        procedural.render_plans(plans, size)
    finally:
        procedural._capture = capture
    return counter.n


def _print_run(bench: str, args: argparse.Namespace, seconds: float, **fields: object) -> None:
    """One pre-render's JSON line: its settings, ``fields``, its seconds and scenes a second."""
    print(json.dumps({"bench": bench, "date": date.today().isoformat(), "device": torch.cuda.get_device_name(0),
                      "scenes": args.scenes, "size": args.size, "views": args.views,
                      "source": "clean" if args.clean else "realistic", **fields, "seconds": round(seconds, 2),
                      "scenes_per_s": round(args.scenes / seconds, 1)}), flush=True)


def _cache_runs(args: argparse.Namespace) -> int:
    """The pre-render with ``MVLIFT_PRERENDER_CACHE=args.cache``: cold (renders and writes every chunk), then warm
    (reads them): one JSON line each."""
    import os
    import shutil

    from datamodules import render_cache

    shutil.rmtree(args.cache, ignore_errors=True)
    os.environ[render_cache.ENV] = args.cache
    for mode in ("write", "read"):
        _print_run("prerender_cache", args, render_seconds(args.scenes, args.size, args.views, not args.clean),
                   cache=mode)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.realistic_render", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 4], help="busy processes beside the render")
    p.add_argument("--clean", action="store_true", help="the clean source (no capture effects) instead")
    p.add_argument("--sync-uploads", action="store_true", help="plain, waiting copies of the draws (as before)")
    p.add_argument("--count-ops", action="store_true", help="count the capture effects' tensor operations (CPU)")
    p.add_argument("--parts", action="store_true", help="also time the pre-render's parts (planner start, plan, render)")
    p.add_argument("--cache", metavar="DIR", help="through the on-disk cache in DIR (emptied first): the pre-render "
                   "that writes it, then the one that reads it (datamodules.render_cache)")
    args = p.parse_args(argv)
    if args.count_ops:
        ops = count_capture_ops(args.scenes, args.size, args.views)
        print(json.dumps({"bench": "realistic_capture_ops", "date": date.today().isoformat(), "scenes": args.scenes,
                          "size": args.size, "views": args.views, "ops": ops,
                          "ops_per_scene": round(ops / args.scenes, 1)}), flush=True)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("bench.realistic_render: needs CUDA (and gsplat)")
    from datamodules import procedural

    if args.sync_uploads:
        procedural._upload = lambda x, device, dtype=torch.float32: torch.from_numpy(np.asarray(x)).to(dtype).to(
            device)
    render_seconds(8, args.size, args.views, not args.clean)  # warm-up: kernels, caches
    if args.cache:
        return _cache_runs(args)
    ctx = mp.get_context("spawn")
    for busy in args.busy:
        stop, ready = ctx.Event(), ctx.Barrier(busy + 1)
        procs = [ctx.Process(target=_busy, args=(stop, ready), daemon=True) for _ in range(busy)]
        for proc in procs:
            proc.start()
        if busy:
            ready.wait()
        seconds = render_seconds(args.scenes, args.size, args.views, not args.clean)
        parts = render_parts(args.scenes, args.size, args.views, not args.clean) if args.parts else {}
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
        _print_run("realistic_render", args, seconds, busy=busy,
                   uploads="sync" if args.sync_uploads else "non-blocking", **parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
