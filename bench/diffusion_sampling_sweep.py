"""How a diffusion model's held-out novel-view PSNR depends on how it is sampled: one JSON line per setting.

The pixel recipe's validation (25 DDIM steps, guidance 2, EMA weights, bf16 autocast under the trainer) and
``tools.evaluate`` (50 steps, guidance 2, EMA, fp32) disagreed by 2.4 dB on the same kind of held-out scenes
(docs/results.md). This loads one checkpoint or export once, draws the evaluation batches once (the same scenes for
every setting, through ``tools.evaluate``'s own loader), and scores every combination of weights (EMA or raw),
DDIM steps, guidance scale and precision with the functions ``tools.evaluate`` runs (``evaluate_diffusion``,
``summarize``): generated novel views vs copying the reference into them.

    python bench/diffusion_sampling_sweep.py --ckpt runs/recipes/diffusion_pixel_procedural64/checkpoints/last.ckpt \
        --data configs/data/procedural_heldout_64.yaml --device cuda --steps 25 50 --guidance 1 1.5 2 \
        --weights ema raw --precision fp32 bf16
    python bench/diffusion_sampling_sweep.py --ckpt EXPORT --data CFG --device cpu --batches 1 --batch-size 2 \
        --steps 2 --guidance 1 --weights raw          # smoke

Each line: weights, steps, guidance, precision, scenes, novel_psnr, copy_psnr, gain_db, novel_psnr_fg, copy_psnr_fg,
seconds, ckpt, data.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.data_config import load_data_config
from lightning_modules.evaluation.runner import EvalSettings, evaluate_diffusion, make_loader
from lightning_modules.evaluation.summary import summarize
from lightning_modules.loading import load_stage, resolve_device


def novel_scores(module: torch.nn.Module, batches: list[dict], opts: EvalSettings, precision: str) -> dict[str, float]:
    """tools.evaluate's diffusion row over ``batches`` (its ``evaluate_diffusion`` and ``summarize``): the novel
    views' PSNR (and PSNR fg) of the generated views and of copying the reference into them."""
    autocast = torch.autocast(module.device.type, dtype=torch.bfloat16) if precision == "bf16" \
        else contextlib.nullcontext()
    with autocast:
        res = evaluate_diffusion(module, [dict(b) for b in batches], module.rig, opts, None, module.device)
    names = [m for m in ("psnr", "psnr_fg") if f"novel/{m}" in res.novel[0]]
    novel = summarize(res.novel, names, prefix="novel/")["all"]
    copy = summarize(res.novel, names, prefix="copy_ref/")["all"]
    return {**{f"novel_{m}": novel[m] for m in names}, **{f"copy_{m}": copy[m] for m in names}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a diffusion .ckpt (raw and EMA weights) or export folder")
    p.add_argument("--data", required=True, help="a data config with a validation split (held-out scenes)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[25, 50])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--weights", nargs="+", choices=["ema", "raw"], default=["ema", "raw"])
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="full unpickling of a .ckpt that needs it (only files you trust; mvlift's own load without)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    opts = EvalSettings(ckpt=[a.ckpt], data=[a.data], rig=[], out=Path("."), batches=a.batches,
                        batch_size=a.batch_size, device=a.device)
    batches = None
    for weights in a.weights:
        module = load_stage(a.ckpt, "diffusion", ema=weights == "ema", device=device, trust=a.trust_checkpoint)
        if batches is None:
            loader, _ = make_loader(load_data_config(Path(a.data)), "diffusion", None, int(module.hparams.image_size), opts)
            batches = []
            for i, batch in enumerate(loader):
                if i >= a.batches:
                    break
                batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        for steps, guidance, precision in itertools.product(a.steps, a.guidance, a.precision):
            t0 = time.perf_counter()
            setting = dataclasses.replace(opts, steps=steps, guidance=guidance, scheduler=a.scheduler,
                                          seed=a.seed, grid_scenes=0)
            scores = novel_scores(module, batches, setting, precision)
            row = {"weights": weights, "steps": steps, "guidance": guidance, "precision": precision,
                   "scenes": sum(b["images"].shape[0] for b in batches), **{k: round(v, 3) for k, v in scores.items()},
                   "gain_db": round(scores["novel_psnr"] - scores["copy_psnr"], 3),
                   "seconds": round(time.perf_counter() - t0, 2), "ckpt": str(a.ckpt), "data": str(a.data)}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
