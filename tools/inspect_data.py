"""Show what a data config draws: per-source realized fractions over N draws (indices only, no decoding), the
shapes of one decoded batch and what a sample costs to build.

    python -m tools.inspect_data -c configs/data/demo.yaml [--stage diffusion|reconstruction] --samples N --json

Prints one JSON object: {"sources": {NAME: {"kind", "fraction"}}, "skipped": n, "batch": {KEY: SHAPE},
"sample_ms": t} (``skipped`` counts bad samples skipped while building the one batch; ``sample_ms``: wall time per
sample of that batch in this one process — reading, decoding, resizing and, with ``augment_on: loader``, the
augmentation — so a run consuming S samples/s needs about S * sample_ms / 1000 loader workers per rank, on as many
free cores; the first batch includes file-cache misses). The config is the DataModule's init
arguments, either plain, under ``init_args`` or under ``data`` (a LightningCLI config).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from datamodules.datamodule import MultiViewDataModule


def load_data_config(path: str | Path) -> dict[str, Any]:
    """DataModule init args from a YAML file (plain, ``init_args:`` or ``data:`` wrapped)."""
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    if "data" in cfg and isinstance(cfg["data"], dict):
        cfg = cfg["data"]
    return dict(cfg.get("init_args", cfg)) if "class_path" in cfg or "init_args" in cfg else dict(cfg)


def shape_of(v: Any) -> Any:
    if hasattr(v, "shape"):
        return list(v.shape)
    if isinstance(v, list):
        return [len(v)]
    return type(v).__name__


def inspect(cfg: dict[str, Any], samples: int, stage: str | None = None) -> dict[str, Any]:

    if stage:
        cfg = {**cfg, "stage": stage}
    cfg = {**cfg, "num_workers": 0}
    dm = MultiViewDataModule(**cfg)
    dm.setup("fit")
    ds = dm.train_dataset()
    ds.num_samples = samples
    draws = ds.plan.draws(0, samples)  # sources and indices only
    counts = Counter(int(k) for k in draws[:, 0])
    total = max(1, len(draws))
    sources = {s.name: {"kind": s.sample_kind, "fraction": round(counts[k] / total, 6)}
               for k, s in enumerate(dm.train_sources)}
    t0 = time.perf_counter()
    batch = next(iter(dm.train_dataloader()))
    sample_ms = (time.perf_counter() - t0) * 1000 / len(batch["images"])
    skipped = len(batch.get("skipped", []))
    batch = dm.on_after_batch_transfer(batch, 0)
    return {"sources": sources, "skipped": skipped, "batch": {k: shape_of(v) for k, v in batch.items()},
            "sample_ms": round(sample_ms, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.inspect_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--stage", choices=["diffusion", "reconstruction"])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")
    args = ap.parse_args(argv)
    try:
        out = inspect(load_data_config(args.config), args.samples, args.stage)
    except (ValueError, FileNotFoundError) as e:
        print(f"inspect_data: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
