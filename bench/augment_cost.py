"""Domain-gap augmentation cost per op and per sample, on one CPU thread (as in a DataLoader worker) or on a GPU: how
many loader workers a training run needs (``augment_on: loader``) or what the batched path costs (``device``).

    python -m bench.augment_cost [--size 256] [--views 4] [--iters 10] [--device cpu|cuda]

Per op: ms for ``--views`` images with the op applied to every one (p = 1). Per sample: ms for one sample's
``--views`` input views with the default synthetic ops at their probabilities (the mean over ``--iters`` draws).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from datamodules.augment import DEFAULTS, IMAGE_OPS, DomainGapAugment, _make_op, shift_background


def _ms(fn, iters: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1000


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a loader worker's setting
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.views, 3, args.size, args.size, generator=g).to(device)
    alpha = torch.rand(args.views, 1, args.size, args.size, generator=g).to(device)
    per_op = {}
    for name, cfg in DEFAULTS["synthetic"].items():
        if name not in IMAGE_OPS:
            continue
        cfg = {**cfg, "p": 1.0}
        op = _make_op(name, cfg)
        run = (lambda cfg=cfg: shift_background(x, alpha, cfg)) if op is None else (lambda op=op: op(x))
        per_op[name] = round(_ms(run, args.iters, device), 2)
    aug = DomainGapAugment(None, seed=0)
    sample = {"images": x, "alpha": alpha, "c2w": torch.eye(4, device=device)
              .expand(args.views, 4, 4).clone(), "num_input_views": torch.tensor(args.views), "kind": "synthetic",
              "source": None}
    keys = iter(range(10**9))
    per_sample = _ms(lambda: aug.augment_sample(dict(sample), next(keys), "reconstruction"), args.iters, device)
    row = {"bench": "augment_cost", "device": str(device), "size": args.size, "views": args.views,
           "iters": args.iters, "op_ms_p1": per_op, "sample_ms_defaults": round(per_sample, 2),
           "cpu": platform.processor() or platform.machine(),
           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
