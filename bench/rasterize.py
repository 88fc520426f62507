"""Rasterizer throughput: one JSON line with views rendered per second (forward, and forward + backward) for the torch
backend on CPU and, when CUDA and gsplat are present, for both backends on the GPU.

    python bench/rasterize.py [--gaussians 16384] [--views 4] [--size 64] [--iters 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geometry.render import Gaussians, gsplat_available, rasterize
from geometry.rig import load_rig


def scene(n: int, device: str, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.35, quats=torch.randn(1, n, 4, generator=g),
        scales=torch.rand(1, n, 3, generator=g) * 0.03 + 0.005, opacities=torch.rand(1, n, generator=g),
        colors=torch.rand(1, n, 3, generator=g),
    ).to(device)


def views_per_second(backend: str, device: str, n: int, views: int, size: int, iters: int, backward: bool) -> float:
    c2w, k = load_rig("facelift_6view").cameras(size, device=device)
    idx = torch.arange(views, device=device) % c2w.shape[0]
    c2w, k = c2w[idx][None], k[idx][None]
    g = scene(n, device)
    if backward:
        g = Gaussians(*(t.requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)))

    def step() -> None:
        with torch.set_grad_enabled(backward):
            out = rasterize(g, c2w, k, size, size, torch.ones(3, device=device), backend=backend)
            if backward:
                (out["rgb"].mean() + out["alpha"].mean()).backward()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return round(iters * views / (time.perf_counter() - t0), 2)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaussians", type=int, default=16384)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--backends", default="torch_cpu,torch_cuda,gsplat",
                   help="comma-separated subset of torch_cpu,torch_cuda,gsplat (torch_cpu is slow at FaceLift size)")
    args = p.parse_args(argv)
    backends = set(args.backends.split(","))
    result = {"bench": "rasterize", "gaussians": args.gaussians, "views": args.views, "size": args.size,
              "torch_threads": torch.get_num_threads(), "host": platform.node()}
    common = (args.gaussians, args.views, args.size, args.iters)
    if "torch_cpu" in backends:
        result["torch_cpu_fwd_views_per_s"] = views_per_second("torch", "cpu", *common, backward=False)
        result["torch_cpu_fwd_bwd_views_per_s"] = views_per_second("torch", "cpu", *common, backward=True)
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
        gpu_common = (args.gaussians, args.views, args.size, max(args.iters, 20))
        if "torch_cuda" in backends:
            result["torch_cuda_fwd_views_per_s"] = views_per_second("torch", "cuda", *gpu_common, backward=False)
        if "gsplat" not in backends:
            pass
        elif gsplat_available():
            result["gsplat_fwd_views_per_s"] = views_per_second("gsplat", "cuda", *gpu_common, backward=False)
            result["gsplat_fwd_bwd_views_per_s"] = views_per_second("gsplat", "cuda", *gpu_common, backward=True)
        else:
            result["gsplat"] = "not installed"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
