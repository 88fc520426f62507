"""Training-step time of the pixel-space diffusion recipe's UNet and cheaper variants: one JSON line per variant.

The recipe (configs/recipes/diffusion_pixel_procedural64.yaml) took 235 ms a step at batch 32 on an H200 and learned
too slowly to beat copying the reference in 5 minutes (docs/results.md). This measures what the candidate changes
cost per step, on random 64 px batches (no data loading): multi-view attention levels, batch size.

    python bench/pixel_diffusion_step.py                       # CUDA, bf16 autocast, the default variants
    python bench/pixel_diffusion_step.py --device cpu --steps 1 --warmup 0 --batch 1 --variants recipe   # smoke

Each line: variant, batch, attention_levels, step_ms (median), scenes_per_s, params_m, peak_mem_gb, device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.shared_settings import model_args
from lightning_modules.diffusion.module import DiffusionModule

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "diffusion_pixel_procedural64.yaml"
VARIANTS = {  # name -> (overrides of the recipe's model arguments, batch)
    "recipe": ({}, 32),
    "attn16": ({"unet_attention_levels": [False, False, True]}, 32),
    "recipe_b16": ({}, 16),
    "attn16_b16": ({"unet_attention_levels": [False, False, True]}, 16),
}


def time_variant(name: str, batch: int | None, steps: int, warmup: int, device: torch.device) -> dict:
    overrides, default_batch = VARIANTS[name]
    b = batch or default_batch
    args = {**model_args(yaml.safe_load(RECIPE.read_text())), **overrides}
    module = DiffusionModule(**args).to(device)
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    v, s = module.rig.num_views, int(args["image_size"])
    g = torch.Generator().manual_seed(0)
    data = {"images": torch.rand(b, v, 3, s, s, generator=g).to(device),
            "ref_images": torch.rand(b, 1, 3, s, s, generator=g).to(device),
            "rig": [module.rig.name] * b, "kind": ["synthetic"] * b}
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = module.diffusion_loss(data, generator=torch.Generator().manual_seed(i))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"variant": name, "batch": b, "attention_levels": args.get("unet_attention_levels"),
            "step_ms": round(step * 1000, 1), "scenes_per_s": round(b / step, 1),
            "params_m": round(sum(p.numel() for p in module.unet.parameters()) / 1e6, 2),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {sorted(VARIANTS)}")
    p.add_argument("--batch", type=int, default=None, help="override every variant's batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args(argv)
    rows = []
    for name in [n.strip() for n in a.variants.split(",") if n.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
        row = time_variant(name, a.batch, a.steps, a.warmup, torch.device(a.device))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
