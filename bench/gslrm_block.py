"""Where a GS-LRM training step's time goes: attention kernels and one transformer block, at FaceLift's shape.

For each SDPA backend (one JSON line each) at [batch, heads, tokens, head_dim] = [2, 16, 16386, 64] (4 input views
at 512 px in 8 px patches + 2 global tokens): attention forward and forward+backward time and their TFLOP/s, then
one bias-free pre-LN block (``lightning_modules.reconstruction.gslrm.TransformerBlock``) forward+backward, eager and compiled.
``depth x block`` is the transformer's share of a step, so it bounds how fast ``bench/reconstruction_step.py`` can be
with that kernel, whatever else is optimised:

    python bench/gslrm_block.py                                  # on CUDA: all backends
    python bench/gslrm_block.py --device cpu --tokens 130 --width 64 --heads 4 --steps 1 --warmup 0  # smoke test

Fields: attn_fwd_ms / attn_fwdbwd_ms and *_tflops (4 B H L^2 d FLOPs forward, 2x that backward), block_ms /
block_compiled_ms (forward+backward of one block, bf16 autocast), attn_share_of_block, depth_x_block_ms,
mfu_bound (the step's transformer FLOPs / depth_x_block_ms / 989e12: the MFU of a step with free rendering).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reconstruction_step import PEAK_FLOPS, time_ms
from lightning_modules.reconstruction.gslrm import TransformerBlock
from lightning_modules.sdpa import BACKENDS


def only_kernel(name: str):
    """SDPA restricted to one kernel (``default``: torch's choice), so each row measures exactly that kernel."""
    return contextlib.nullcontext() if name == "default" else sdpa_kernel([BACKENDS[name]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16386)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--depth", type=int, default=24, help="blocks per network (for depth_x_block_ms)")
    p.add_argument("--backends", default="default,cudnn,flash,efficient")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled block")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def block_flops(batch: int, tokens: int, width: int) -> float:
    """Forward matmul FLOPs of one block (qkv, out, MLP x4, attention scores and values)."""
    return batch * (2 * tokens * width * 12 * width + 4 * tokens * tokens * width)


def attention_times(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """SDPA forward and forward+backward time (ms) and TFLOP/s with backend ``name`` at the benchmark's shape."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    b, h, n, d = args.batch, args.heads, args.tokens, args.width // args.heads
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(b, h, n, d, generator=g).to(device, dtype)

    def fwd() -> None:
        with torch.no_grad(), only_kernel(name):
            F.scaled_dot_product_attention(q, k, v)

    def fwdbwd() -> None:
        with only_kernel(name):
            out = F.scaled_dot_product_attention(q, k, v)
        out.backward(grad)

    row = {"shape": [b, h, n, d], "dtype": str(dtype),
           "attn_fwd_ms": round(time_ms(fwd, args.steps, args.warmup, cuda), 3),
           "attn_fwdbwd_ms": round(time_ms(fwdbwd, args.steps, args.warmup, cuda), 3)}
    attn_flops = 4.0 * b * h * n * n * d
    row["attn_fwd_tflops"] = round(attn_flops / row["attn_fwd_ms"] / 1e9, 1)
    row["attn_fwdbwd_tflops"] = round(3 * attn_flops / row["attn_fwdbwd_ms"] / 1e9, 1)
    return row


def run_backend(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    row: dict = {"bench": "gslrm_block", "backend": name}
    try:
        row.update(attention_times(name, args, device))
    except RuntimeError as e:  # backend not available for this shape/device
        row["error"] = str(e).splitlines()[0]
        return row
    b, n, d = args.batch, args.tokens, args.width // args.heads
    g = torch.Generator(device="cpu").manual_seed(1)
    block = TransformerBlock(args.width, d, 4).to(device)
    x = torch.randn(b, n, args.width, generator=g).to(device).requires_grad_()
    dy = torch.randn(b, n, args.width, generator=g).to(device)

    def block_step(module) -> None:
        with only_kernel(name), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            y = module(x)
        y.backward(dy)

    row["block_ms"] = round(time_ms(lambda: block_step(block), args.steps, args.warmup, cuda), 3)
    best = row["block_ms"]
    if not args.no_compile:
        compiled = torch.compile(block)
        row["block_compiled_ms"] = round(time_ms(lambda: block_step(compiled), args.steps, args.warmup, cuda), 3)
        best = min(best, row["block_compiled_ms"])
    row["attn_share_of_block"] = round(row["attn_fwdbwd_ms"] / best, 3)
    row["depth_x_block_ms"] = round(args.depth * best, 1)
    row["mfu_bound"] = round(3 * args.depth * block_flops(b, n, args.width) / (row["depth_x_block_ms"] / 1e3)
                             / PEAK_FLOPS, 4)
    row["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    row["torch"] = torch.__version__
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name in args.backends.split(","):
        if device.type != "cuda" and name not in ("default", "math"):
            continue
        row = run_backend(name.strip(), args, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
