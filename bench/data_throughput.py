"""Loader throughput (samples/s) of MultiViewDataModule from FaceLift folders and from webdataset shards.

    python -m bench.data_throughput [--scenes 4] [--samples 48] [--views 8] [--size 512] [--workers 2] [--batch 2]
                                    [--augment default|none]

Generates its own data (procedural mouse-like scenes, 8-bit RGBA PNGs, written with tools.synthesize's writer) in a
temporary directory, converts it with tools.make_shards, then times full passes of the reconstruction-stage loader
(decode, composite, resize, the domain-gap augmentation of the input views in the workers as in training —
``--augment default``: the default ops for synthetic data, every sample here being synthetic — and collate).
``--augment none`` times the loader without it (as with ``augment_on: device``). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def make_data(root: Path, scenes: int, views: int, size: int) -> tuple[Path, Path]:
    from datamodules.procedural import make_scene
    from tools.make_shards import make_shards
    from tools.synthesize import write_facelift_scene

    folder = root / "folders"
    for i in range(scenes):
        write_facelift_scene(folder / f"sample_{i:06d}", make_scene(i, "facelift_6view", views, size))
    make_shards(folder, root / "shards", shard_size=max(1, scenes // 2))
    return folder, root / "shards"


def measure(source: dict, args: argparse.Namespace) -> float:
    from datamodules.datamodule import MultiViewDataModule

    dm = MultiViewDataModule(stage="reconstruction", sources=[source], image_size=args.size, num_views=args.views,
                             num_input_views=args.views // 2, batch_size=args.batch, num_workers=args.workers,
                             samples_per_epoch=args.samples, val_fraction=0,
                             augment=None if args.augment == "default" else {"enabled": False})
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up pass: worker start-up, file cache
        pass
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["images"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--augment", choices=("default", "none"), default="default")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder, shards = make_data(Path(tmp), args.scenes, args.views, args.size)
        gen_s = time.perf_counter() - t0
        folders_sps = measure({"name": "folders", "format": "facelift", "path": str(folder)}, args)
        shards_sps = measure({"name": "shards", "format": "shards", "urls": str(shards)}, args)
    print(json.dumps({
        "bench": "data_throughput", "views": args.views, "size": args.size, "workers": args.workers,
        "batch": args.batch, "augment": args.augment, "samples": args.samples, "scenes": args.scenes,
        "folders_samples_per_s": round(folders_sps, 2), "shards_samples_per_s": round(shards_sps, 2),
        "data_generation_s": round(gen_s, 1), "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
