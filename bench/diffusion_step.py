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

``--attn-backend`` is the modules' ``attention_backend`` (lightning_modules.sdpa: that SDPA kernel first) and
``--memory-format channels_last`` the UNet's and its input's layout; both apply to the baseline and to ours alike.
By default the configurations run one after another on one UNet. ``--isolate`` runs each in its own process (no
configuration inherits another's allocator state, compiled graphs or caches); ``--interleave`` builds them all in one
process, each on a copy of the UNet, and times them in turns, so slow host phases fall on all of them alike (the
way to compare configurations whose steps are host-bound).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from bench.kernels import DIFFUSION_KINDS, kernel_times_us, top_kernels
from lightning_modules.diffusion.mv_attention import install_multiview_attention
from lightning_modules.diffusion.pretrained import scratch_unet_config, sd21_unclip_unet_config
from lightning_modules.sdpa import NAMES, attention_backend, check_attention_backend

PEAK_FLOPS = 989e12
ATTENTIONS = ("sparse", "joint", "diffusers")


class Config(NamedTuple):
    scenes: int
    attention: str
    grad_ckpt: bool
    backend: str
    channels_last: bool

    @property
    def name(self) -> str:
        return (f"{self.attention}_{self.backend}_b{self.scenes}_gc{int(self.grad_ckpt)}"
                f"{'_cl' if self.channels_last else ''}")

    def argv(self) -> list[str]:
        return ["--batches", str(self.scenes), "--attention", self.attention, "--grad-checkpointing",
                "on" if self.grad_ckpt else "off", "--attn-backend", self.backend, "--memory-format",
                "channels_last" if self.channels_last else "nchw"]


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
    p.add_argument("--memory-format", default="nchw", help="comma separated, of nchw / channels_last (UNet and input)")
    p.add_argument("--isolate", action="store_true", help="each configuration in a fresh process")
    p.add_argument("--interleave", action="store_true",
                   help="all configurations in one process, each on its own UNet copy, timed in turns")
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
    cfg = scratch_unet_config(8, latent, 32, 16, 32) if tiny else sd21_unclip_unet_config(8, latent)
    with torch.device(device):
        return UNet2DConditionModel(**cfg)


def set_attention(unet: UNet2DConditionModel, mode: str, views: int) -> None:
    if mode == "diffusers":
        unet.set_attn_processor(AttnProcessor2_0())
    else:
        install_multiview_attention(unet, views, mode)


def make_inputs(unet: UNet2DConditionModel, n: int, latent: int, tokens: int, device: torch.device,
                channels_last: bool = False) -> dict[str, torch.Tensor]:
    cfg = unet.config
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    return {
        "x": rnd(n, cfg.in_channels, latent, latent).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format),
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


class Runner:
    """One configuration, ready to step: its UNet (processors, checkpointing, memory format set), inputs, optimizer."""

    def __init__(self, unet: UNet2DConditionModel, cfg: Config, args: argparse.Namespace, device: torch.device,
                 autocast_dtype: torch.dtype | None, flops_cache: dict):
        self.cfg, self.args, self.device, self.autocast_dtype = cfg, args, device, autocast_dtype
        set_attention(unet, cfg.attention, args.views)
        unet.enable_gradient_checkpointing() if cfg.grad_ckpt else unet.disable_gradient_checkpointing()
        unet.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        unet.train()
        self.unet = unet
        self.inp = make_inputs(unet, cfg.scenes * args.views, args.latent, args.tokens, device, cfg.channels_last)
        if cfg.attention not in flops_cache:  # FLOPs are linear in the number of scenes: count one scene (less memory)
            one = make_inputs(unet, args.views, args.latent, args.tokens, device, cfg.channels_last)
            flops_cache[cfg.attention] = count_flops(unet, one, autocast_dtype)
            del one
        self.flops = flops_cache[cfg.attention] * cfg.scenes
        self.model = torch.compile(unet) if args.compile else unet
        self.opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
        self.times: list[float] = []

    def step(self) -> None:
        with attention_backend(self.cfg.backend):
            forward_backward(self.model, self.inp, self.autocast_dtype)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed_step(self, keep: bool) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.device)
        if keep:
            self.times.append(time.perf_counter() - t0)

    def profile(self) -> tuple[dict | None, list | None, dict | None]:
        """Kernel time by kind, the top attention kernels and (``--trace``) the idle gaps, over 2 profiled steps."""
        args, cfg = self.args, self.cfg
        if not (args.profile or args.trace) or self.device.type != "cuda":
            return None, None, None
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.trace else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                self.step()
            _sync(self.device)
        kernel_ms = {k: round(us / 2e3, 2) for k, us in sorted(kernel_times_us(prof, DIFFUSION_KINDS).items())}
        attention = [[name, round(ms / 2, 2)] for name, ms in top_kernels(prof, "attention", DIFFUSION_KINDS)]
        idle = None
        if args.trace:
            idle = trace_idle(prof, args.trace / f"{cfg.name}_c{int(args.compile)}.json", steps=2)
        return kernel_ms, attention, idle

    def row(self, peak_gb: float | None) -> dict:
        args, cfg = self.args, self.cfg
        kernel_ms, attention_kernels, idle = self.profile()
        step_s = statistics.median(self.times)
        n = cfg.scenes * args.views
        return {
            "bench": "diffusion_step", "attention": cfg.attention, "scenes": cfg.scenes, "views": args.views,
            "latent": args.latent, "image_px": args.latent * 8, "grad_checkpointing": cfg.grad_ckpt,
            "dtype": "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32", "step_ms": round(step_s * 1e3, 2),
            "images_per_s": round(n / step_s, 2), "peak_mem_gb": peak_gb,
            "tflops_per_step": round(self.flops / 1e12, 6), "mfu": round(self.flops / step_s / PEAK_FLOPS, 6),
            "steps": len(self.times),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "params_m": round(sum(p.numel() for p in self.unet.parameters()) / 1e6, 1), "compile": args.compile,
            "attn_backend": cfg.backend, "channels_last": cfg.channels_last,
            "timing": "interleaved" if args.interleave else ("isolated" if args.child else "sequential"),
            "kernel_ms_per_step": kernel_ms, "attention_kernels": attention_kernels, "gpu_idle": idle,
        }


def run_config(unet: UNet2DConditionModel, cfg: Config, args: argparse.Namespace, device: torch.device,
               autocast_dtype: torch.dtype | None, flops_cache: dict) -> dict:
    """Warm up, time ``args.steps`` steps, profile: one configuration on the shared UNet."""
    runner = Runner(unet, cfg, args, device, autocast_dtype, flops_cache)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        runner.timed_step(keep=i >= args.warmup)
    return runner.row(_peak_gb(device))


def run_interleaved(base: UNet2DConditionModel, configs: list[Config], args: argparse.Namespace,
                    device: torch.device, autocast_dtype: torch.dtype | None) -> list[dict]:
    """Every configuration on its own copy of the UNet (same weights), warmed up, then timed in turns (step i of
    each before step i + 1 of any), so host and clock drift fall on all of them alike. Peak memory is the process's
    (all copies), so it is left out."""
    flops_cache: dict = {}
    runners = [Runner(copy.deepcopy(base), cfg, args, device, autocast_dtype, flops_cache) for cfg in configs]
    for r in runners:
        for _ in range(args.warmup):
            r.timed_step(keep=False)
    for _ in range(args.steps):
        for r in runners:
            r.timed_step(keep=True)
    return [r.row(None) for r in runners]


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def configurations(args: argparse.Namespace) -> list[Config]:
    """The grid of the arguments, in the order they give."""
    formats = {"nchw": False, "channels_last": True}
    return [Config(int(b), a.strip(), g.strip() == "on", check_attention_backend(k.strip()), formats[f.strip()])
            for b in args.batches.split(",") for a in args.attention.split(",")
            for g in args.grad_checkpointing.split(",") for k in args.attn_backend.split(",")
            for f in args.memory_format.split(",")]


def run_isolated(args: argparse.Namespace) -> list[dict]:
    """Each configuration in a fresh ``python bench/diffusion_step.py`` process; its JSON line is passed on."""
    import subprocess

    common = ["--views", str(args.views), "--latent", str(args.latent), "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--tokens", str(args.tokens), "--child"]
    common += ["--compile"] * args.compile + ["--profile"] * args.profile + ["--tiny"] * args.tiny
    common += ["--trace", str(args.trace)] if args.trace else []
    common += ["--device", args.device] if args.device else []
    rows = []
    for cfg in configurations(args):
        cmd = [sys.executable, __file__, *common, *cfg.argv()]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # a failure becomes its row
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            row = {"bench": "diffusion_step", "config": cfg.name, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
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
    if args.interleave:
        results = run_interleaved(unet, configurations(args), args, device, autocast_dtype)
        for row in results:
            print(json.dumps(row), flush=True)
        return results
    for cfg in configurations(args):
        try:
            row = run_config(unet, cfg, args, device, autocast_dtype, flops_cache)
        except torch.cuda.OutOfMemoryError as e:  # report and continue with the next configuration
            row = {"bench": "diffusion_step", "config": cfg.name, "error": f"out of memory: {str(e).splitlines()[0]}"}
            unet.zero_grad(set_to_none=True)
        print(json.dumps(row), flush=True)
        results.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
