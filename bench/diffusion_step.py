"""Training-step benchmark of the multi-view diffusion UNet: one JSON line per configuration.

Full size: SD 2.1 unCLIP UNet (random weights, 8 input channels), 6 views at 512 px (latent 64), 1 and 2 scenes per
step, bf16 autocast, fused AdamW, gradient checkpointing off/on, multi-view attention ``sparse`` / ``joint``, and
plain diffusers (its default SDPA processor, views independent) as the throughput reference.

Each line: step_ms (median of timed steps), images_per_s (scenes x views / s), peak_mem_gb (max allocated),
tflops_per_step (model FLOPs of forward + backward counted by torch.utils.flop_counter.FlopCounterMode on one
scene, times the scenes, without checkpoint recomputation), mfu (model FLOPs / step time / peak; peak = 989e12, H100 SXM dense bf16).

    python bench/diffusion_step.py                  # on CUDA, the full grid
    python bench/diffusion_step.py --batches 2 --grad-checkpointing off --compile --profile
    python bench/diffusion_step.py --batches 2 --grad-checkpointing off --compile --trace runs/traces  # idle gaps
    python bench/diffusion_step.py --batches 2 --attention sparse,diffusers --attn-backend auto,cudnn --compile \
        --isolate                                   # each configuration in a fresh process, in the order given
    python bench/diffusion_step.py --tiny           # tiny UNet on CPU (a smoke test of this script)

``--attn-backend`` is the modules' ``attention_backend`` (lightning_modules.sdpa: that SDPA kernel first), applied
to the baseline and to ours alike. ``--isolate`` runs every configuration in its own process, so no configuration
inherits another's allocator state, compiled graphs or warm caches (configurations share one UNet otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from bench.kernels import DIFFUSION_KINDS, kernel_times_us
from lightning_modules.mv_attention import install_multiview_attention
from lightning_modules.pretrained import sd21_unclip_unet_config, tiny_unet_config
from lightning_modules.sdpa import NAMES, attention_backend, check_attention_backend

PEAK_FLOPS = 989e12
ATTENTIONS = ("sparse", "joint", "diffusers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny UNet on CPU, fp32, 1 step (smoke test)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--latent", type=int, default=64, help="latent size (512 px / 8)")
    p.add_argument("--batches", default="1,2", help="scenes per step, comma separated")
    p.add_argument("--attention", default=",".join(ATTENTIONS))
    p.add_argument("--grad-checkpointing", default="off,on")
    p.add_argument("--attn-backend", default="auto", help=f"comma separated, of {NAMES}")
    p.add_argument("--isolate", action="store_true", help="each configuration in a fresh process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # set by --isolate for its processes
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tokens", type=int, default=77, help="cross-attention tokens per view")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (baseline and ours alike)")
    p.add_argument("--profile", action="store_true",
                   help="add kernel_ms_per_step: profiled CUDA kernel time by kind (attention, conv, gemm, norm, ...)")
    p.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="also profile the host: write a chrome trace per configuration to DIR and add gpu_idle "
                        "(callbacks.profile: the GPU's idle gaps per step and what the host did meanwhile)")
    return p.parse_args(argv)


def make_unet(tiny: bool, latent: int, device: torch.device) -> UNet2DConditionModel:
    cfg = tiny_unet_config(8, latent, 32, 16, 32) if tiny else sd21_unclip_unet_config(8, latent)
    with torch.device(device):
        return UNet2DConditionModel(**cfg)


def set_attention(unet: UNet2DConditionModel, mode: str, views: int) -> None:
    if mode == "diffusers":
        unet.set_attn_processor(AttnProcessor2_0())
    else:
        install_multiview_attention(unet, views, mode)


def make_inputs(unet: UNet2DConditionModel, n: int, latent: int, tokens: int, device: torch.device
                ) -> dict[str, torch.Tensor]:
    cfg = unet.config
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    return {
        "x": rnd(n, cfg.in_channels, latent, latent),
        "t": torch.randint(0, 1000, (n,), generator=g).to(device),
        "ctx": rnd(n, tokens, cfg.cross_attention_dim),
        "cls": rnd(n, cfg.projection_class_embeddings_input_dim),
        "target": rnd(n, cfg.out_channels, latent, latent),
    }


def forward_backward(unet: UNet2DConditionModel, inp: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None
                     ) -> None:
    device_type = inp["x"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = unet(inp["x"], inp["t"], encoder_hidden_states=inp["ctx"], class_labels=inp["cls"]).sample
    loss = F.mse_loss(pred.float(), inp["target"])
    loss.backward()


def count_flops(unet: UNet2DConditionModel, inp: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> float:
    """Model FLOPs of one forward + backward (checkpointing off, so recomputation is not counted)."""
    was_gc = unet.is_gradient_checkpointing
    if was_gc:
        unet.disable_gradient_checkpointing()
    with FlopCounterMode(display=False) as fc:
        forward_backward(unet, inp, autocast_dtype)
    unet.zero_grad(set_to_none=True)
    if was_gc:
        unet.enable_gradient_checkpointing()
    return float(fc.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trace_idle(prof, path: Path, steps: int) -> dict:
    """Write the profiler's chrome trace to ``path`` (gzipped) and summarise the GPU's idle gaps per step."""
    from callbacks.profile import save_trace

    gaps = save_trace(prof, path, min_gap_us=20, top=8)
    return {"idle_ms_per_step": round(gaps["idle_us"] / steps / 1e3, 2),
            "busy_ms_per_step": round(gaps["busy_us"] / steps / 1e3, 2), "gaps_per_step": gaps["gaps_counted"] / steps,
            "longest_gaps": gaps["gaps"], "idle_ms_by_launcher": {k: round(v / steps / 1e3, 2)
                                                              for k, v in gaps["idle_by_launcher"].items()},
            "trace": f"{path}.gz"}


def run_config(unet: UNet2DConditionModel, attention: str, scenes: int, grad_ckpt: bool, backend: str,
               args: argparse.Namespace, device: torch.device, autocast_dtype: torch.dtype | None, flops_cache: dict
               ) -> dict:
    set_attention(unet, attention, args.views)
    if grad_ckpt:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    n = scenes * args.views
    inp = make_inputs(unet, n, args.latent, args.tokens, device)
    if attention not in flops_cache:  # FLOPs are linear in the number of scenes: count one scene (less memory)
        one = make_inputs(unet, args.views, args.latent, args.tokens, device)
        flops_cache[attention] = count_flops(unet, one, autocast_dtype)
        del one
    model = torch.compile(unet) if args.compile else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []

    def step() -> None:
        with attention_backend(backend):
            forward_backward(model, inp, autocast_dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    kernel_ms = idle = None
    if (args.profile or args.trace) and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.trace else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                step()
            _sync(device)
        kernel_ms = {k: round(us / 2e3, 2) for k, us in sorted(kernel_times_us(prof, DIFFUSION_KINDS).items())}
        if args.trace:
            idle = trace_idle(prof, args.trace / f"{attention}_{backend}_b{scenes}_gc{int(grad_ckpt)}_c{int(args.compile)}.json",
                              steps=2)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    flops = flops_cache[attention] * scenes
    return {
        "bench": "diffusion_step", "attention": attention, "scenes": scenes, "views": args.views,
        "latent": args.latent, "image_px": args.latent * 8, "grad_checkpointing": grad_ckpt,
        "dtype": "bf16" if autocast_dtype == torch.bfloat16 else "fp32", "step_ms": round(step_s * 1e3, 2),
        "images_per_s": round(n / step_s, 2), "peak_mem_gb": peak,
        "tflops_per_step": round(flops / 1e12, 6), "mfu": round(flops / step_s / PEAK_FLOPS, 6),
        "steps": args.steps, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "compile": args.compile, "attn_backend": backend, "isolated": args.child, "kernel_ms_per_step": kernel_ms,
        "gpu_idle": idle,
    }


def configurations(args: argparse.Namespace) -> list[tuple[int, str, bool, str]]:
    """(scenes, attention, gradient checkpointing, attention backend) in the order the arguments give."""
    return [(int(b), a.strip(), g.strip() == "on", check_attention_backend(k.strip()))
            for b in args.batches.split(",") for a in args.attention.split(",")
            for g in args.grad_checkpointing.split(",") for k in args.attn_backend.split(",")]


def run_isolated(args: argparse.Namespace) -> list[dict]:
    """Each configuration in a fresh ``python bench/diffusion_step.py`` process; its JSON line is passed on."""
    import subprocess

    common = ["--views", str(args.views), "--latent", str(args.latent), "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--tokens", str(args.tokens), "--child"]
    common += ["--compile"] * args.compile + ["--profile"] * args.profile + ["--tiny"] * args.tiny
    common += ["--trace", str(args.trace)] if args.trace else []
    common += ["--device", args.device] if args.device else []
    rows = []
    for scenes, attention, grad_ckpt, backend in configurations(args):
        cmd = [sys.executable, __file__, *common, "--batches", str(scenes), "--attention", attention,
               "--grad-checkpointing", "on" if grad_ckpt else "off", "--attn-backend", backend]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            row = {"bench": "diffusion_step", "attention": attention, "scenes": scenes, "attn_backend": backend,
                   "grad_checkpointing": grad_ckpt, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
        else:
            row = json.loads(lines[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.tiny:
        args.views = min(args.views, 2)
        args.latent = 8 if args.latent == 64 else args.latent
        args.batches = "1"
        args.steps, args.warmup, args.tokens = 1, 0, 4
    if args.isolate and not args.child:
        return run_isolated(args)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; run with --tiny for the CPU smoke test")
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unet = make_unet(args.tiny, args.latent, device)
    flops_cache: dict = {}
    results = []
    for scenes, attention, grad_ckpt, backend in configurations(args):
        try:
            row = run_config(unet, attention, scenes, grad_ckpt, backend, args, device, autocast_dtype, flops_cache)
        except torch.cuda.OutOfMemoryError as e:  # report and continue with the next configuration
            row = {"bench": "diffusion_step", "attention": attention, "scenes": scenes, "attn_backend": backend,
                   "grad_checkpointing": grad_ckpt, "error": f"out of memory: {str(e).splitlines()[0]}"}
            unet.zero_grad(set_to_none=True)
        print(json.dumps(row), flush=True)
        results.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
