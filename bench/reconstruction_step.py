"""Benchmark: FaceLift-size GS-LRM training steps (forward, rendering, loss, backward, AdamW) -> ONE JSON line.

Defaults: 512 px, 8 views (the facelift_6view rig + 2 random views) of which the first 4 are inputs, batch 2,
bf16 autocast, gsplat, all 8 views supervised (FaceLift's target_has_input), random weights and images.

Reports: step_ms (median after warmup), images_per_s (supervised images), peak_mem_gb, render_ms/render_share
(rasterize + loss, forward and backward, timed on its own with CUDA events, over step_ms), mfu (transformer matmul
FLOPs incl. attention, x3 for backward, / step time / 989e12), gpu_busy (profiled kernel time / wall time of a few
steps), kernel_ms_per_step (that kernel time by kind: attention, gemm, rasterize, optimizer, other) and the flags.

    python bench/reconstruction_step.py                       # FaceLift size on the GPU
    python bench/reconstruction_step.py --compile --attn-backend flash
    python bench/reconstruction_step.py --device cpu --tiny --size 32 --steps 2 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels import kernel_times_us
from geometry.cameras import camera_position, look_at
from geometry.rig import load_rig
from lightning_modules.sdpa import NAMES

PEAK_FLOPS = 989e12  # H100 SXM dense bf16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--inputs", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--attn-backend", default="auto", choices=NAMES,
                   help="the module's attention_backend: that SDPA kernel first (lightning_modules.sdpa)")
    p.add_argument("--supervise", default="all", choices=["all", "rest"], help="render all views or non-inputs")
    p.add_argument("--rasterizer", default="auto", choices=["auto", "torch", "gsplat"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny network (width 64, depth 2) for a CPU smoke run")
    p.add_argument("--scale-bias", type=float, default=None,
                   help="override the Gaussian scale bias (log). Random weights give FaceLift's init scales "
                        "(~0.1, tens of pixels: slow, memory-hungry splats); -5.3 gives ~1-pixel Gaussians at 512 px, "
                        "the size a trained model predicts")
    p.add_argument("--no-profile", action="store_true", help="skip the gpu_busy profile")
    return p.parse_args(argv)


def make_batch(args: argparse.Namespace, device: torch.device, seed: int = 0) -> dict:
    """Random images with valid cameras: the facelift_6view rig views + random extra views on the same sphere."""
    g = torch.Generator().manual_seed(seed)
    rig = load_rig("facelift_6view")
    c2w_rig, k_rig = rig.cameras(args.size)
    extra = args.views - rig.num_views
    cams, ks = [], []
    for _ in range(args.batch):
        c2w = c2w_rig[: args.views]
        k = k_rig[: args.views]
        if extra > 0:
            az = torch.rand(extra, generator=g) * 360.0
            el = torch.rand(extra, generator=g) * 60.0 - 30.0
            eyes = torch.tensor([camera_position(float(a), float(e), rig.radius) for a, e in zip(az, el)])
            up = torch.tensor([0.0, 0.0, 1.0]).expand_as(eyes)
            c2w = torch.cat([c2w, look_at(eyes, torch.zeros_like(eyes), up).float()])
            k = torch.cat([k, k_rig[:1].expand(extra, 4)])
        cams.append(c2w)
        ks.append(k)
    b, v, s = args.batch, args.views, args.size
    images = torch.rand(b, v, 3, s, s, generator=g)
    alpha = (torch.rand(b, v, 1, s, s, generator=g) > 0.5).float()
    index = torch.stack([torch.arange(v).expand(b, v), torch.arange(b)[:, None].expand(b, v)], dim=-1)
    batch = {"images": images, "alpha": alpha, "c2w": torch.stack(cams), "fxfycxcy": torch.stack(ks),
             "index": index, "background": torch.ones(b, 3), "kind": ["synthetic"] * b,
             "supervise_all_views": args.supervise == "all"}
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def time_ms(fn, steps: int, warmup: int, cuda: bool) -> float:
    """Median wall time of ``fn`` in ms over ``steps`` calls after ``warmup`` (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from lightning_modules.reconstruction.module import ReconstructionModule

    size_kw = {"width": 64, "depth": 2, "head_dim": 16} if args.tiny else {}
    module = ReconstructionModule(
        rig="facelift_6view", image_size=args.size, num_input_views=args.inputs, rasterizer=args.rasterizer,
        grad_checkpointing=args.grad_ckpt, compile=args.compile, max_steps=10_000, attention_backend=args.attn_backend,
        **size_kw,
    ).to(device)
    if args.scale_bias is not None:
        module.net.config.scale_bias = args.scale_bias
    module.train()
    opt = module.configure_optimizers()["optimizer"]
    batch = make_batch(args, device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> torch.Tensor:
        with amp:
            out = module.predict_views(batch, training=True)
            loss = module.compute_loss(out)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_ms = time_ms(step, args.steps, 0, cuda)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    # rendering + loss alone (forward + backward) on fixed Gaussians of this batch
    with torch.no_grad(), amp:
        inp, sup = module.split_views(batch, training=True)
        gs = module.reconstruct(inp["images"], inp["c2w"], inp["fxfycxcy"])
    leaves = {k: v.detach().float().requires_grad_() for k, v in vars(gs).items()}
    gs_leaf = type(gs)(**leaves)
    h, w = sup["images"].shape[-2:]

    def render_and_loss() -> None:
        out = module.render(gs_leaf, sup["c2w"], sup["fxfycxcy"], h, w, batch["background"])
        terms = module.compute_loss({"pred": out["rgb"], "pred_alpha": out["alpha"], "target": sup["images"],
                                     "target_alpha": sup["alpha"]})
        terms["loss"].backward()

    render_ms = time_ms(render_and_loss, max(3, args.steps // 2), 1, cuda)

    gpu_busy, kernel_ms = None, None
    if cuda and not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        n_prof = 3
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(n_prof):
                step()
            sync()
            wall_us = (time.perf_counter() - t0) * 1e6
        kernels = kernel_times_us(prof)
        gpu_busy = round(min(1.0, sum(kernels.values()) / wall_us), 3)
        kernel_ms = {kind: round(us / n_prof / 1e3, 2) for kind, us in sorted(kernels.items())}

    sup_views = args.views if args.supervise == "all" else args.views - args.inputs
    flops = module.net.matmul_flops(args.batch, args.inputs, args.size, args.size, backward=True)
    result = {
        "bench": "reconstruction_step",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_ms": round(step_ms, 2),
        "images_per_s": round(args.batch * sup_views / (step_ms / 1e3), 2),
        "peak_mem_gb": round(peak_gb, 2),
        "render_ms": round(render_ms, 2),
        "render_share": round(render_ms / step_ms, 3),
        "mfu": round(flops / (step_ms / 1e3) / PEAK_FLOPS, 4),
        "tflops_per_step": round(flops / 1e12, 2),
        "gpu_busy": gpu_busy,
        "kernel_ms_per_step": kernel_ms,
        "params_m": round(sum(p.numel() for p in module.net.parameters()) / 1e6, 1),
        "flags": {"size": args.size, "views": args.views, "inputs": args.inputs, "batch": args.batch,
                  "supervised_views": sup_views, "bf16": cuda, "compile": args.compile, "grad_ckpt": args.grad_ckpt,
                  "attn_backend": args.attn_backend, "rasterizer": module._backend(), "tiny": args.tiny,
                  "scale_bias": module.net.config.scale_bias,
                  "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
