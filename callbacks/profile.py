"""Where the GPU waits: idle gaps between kernels in a torch profiler trace, what the host did meanwhile, and a
callback (:class:`ProfileSteps`) that records such a trace of a few training steps of a real run.

A step whose kernel time is well under its wall time leaves the GPU idle; this finds each idle stretch (the time
between one GPU activity — kernel, memcpy, memset — ending and the next starting) and names the host side of it:

- ``launched_by``: the innermost CPU op around the launch of the kernel that ended the gap (what the host was
  getting to when the GPU ran dry);
- ``host_calls``: CUDA runtime calls overlapping the gap (a ``cudaStreamSynchronize`` / ``cudaFree`` /
  ``cudaMalloc`` there is the usual suspect);
- ``launch_lag_us``: how long after the gap began the host issued that launch (≈ the gap: host-bound; ≈ 0: the
  GPU waited on something else, e.g. a dependency or an event).

- ``python``: with a trace recorded ``with_stack``, the Python frames around that launch (outermost first, the
  last few), which say which of our functions (or Lightning's) held the host.

``idle_by_launcher`` sums the gaps by ``launched_by``; ``idle_by_python`` by the innermost frame of this code base
or Lightning (``PYTHON_KEYS``) in ``python``.

    python -m callbacks.profile TRACE.json.gz [--min-gap-us 50]   # one JSON line

    >>> ev = [{"ph": "X", "cat": "kernel", "name": "k1", "ts": 0, "dur": 10, "args": {"correlation": 1}},
    ...       {"ph": "X", "cat": "kernel", "name": "k2", "ts": 510, "dur": 10, "args": {"correlation": 2}},
    ...       {"ph": "X", "cat": "cpu_op", "name": "aten::mul", "ts": 490, "dur": 30, "tid": 1},
    ...       {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 500, "dur": 5, "tid": 1,
    ...        "args": {"correlation": 2}}]
    >>> r = gpu_gaps({"traceEvents": ev}, min_gap_us=100)
    >>> r["idle_us"], r["gaps"][0]["launched_by"], r["gaps"][0]["launch_lag_us"]
    (500.0, 'aten::mul', 490.0)
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cpu_op", "user_annotation", "python_function")
PYTHON_KEYS = ("lightning_modules/", "datamodules/", "callbacks/", "geometry/", "bench/", "tools/", "lightning/")


def load_trace(path: str | Path) -> dict[str, Any]:
    """A chrome trace written by ``torch.profiler.profile.export_chrome_trace`` (``.json`` or ``.json.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def _complete(events: list[dict], cats: tuple[str, ...]) -> list[dict]:
    return [e for e in events if e.get("ph") == "X" and e.get("cat") in cats and "dur" in e]


def gpu_gaps(trace: dict[str, Any], min_gap_us: float = 50.0, top: int = 15) -> dict[str, Any]:
    """Idle gaps ≥ ``min_gap_us`` between GPU activities of ``trace`` (all streams merged), the ``top`` longest with
    their host side (module docstring), the GPU busy and idle time between the first and the last activity, and the
    idle time summed by the op that launched the kernel ending each gap."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu = sorted(_complete(events, GPU_CATS), key=lambda e: float(e["ts"]))
    if not gpu:
        return {"gpu_events": 0, "span_us": 0.0, "busy_us": 0.0, "idle_us": 0.0, "gaps_counted": 0,
                "min_gap_us": min_gap_us, "gaps": [], "idle_by_launcher": {}, "idle_by_python": {}}
    runtime = _complete(events, ("cuda_runtime", "cuda_driver"))
    launches = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    host: dict[Any, list[dict]] = defaultdict(list)
    for e in sorted(_complete(events, HOST_CATS), key=lambda e: float(e["ts"])):
        host[e.get("tid")].append(e)
    starts = {tid: [float(e["ts"]) for e in evs] for tid, evs in host.items()}

    def around(tid: Any, t: float, look_back: int = 5000) -> list[dict]:
        """Host events on thread ``tid`` that contain time ``t``, outermost first (they nest)."""
        evs = host.get(tid, [])
        i = bisect.bisect_right(starts.get(tid, []), t)
        return [e for e in evs[max(0, i - look_back): i] if float(e["ts"]) + float(e["dur"]) >= t]

    gaps, busy, end = [], 0.0, float(gpu[0]["ts"])
    for e in gpu:
        start, dur = float(e["ts"]), float(e["dur"])
        if start - end >= min_gap_us:
            gaps.append((start - end, end, e))
        busy += max(0.0, start + dur - max(start, end))  # overlapping activities (several streams) count once
        end = max(end, start + dur)
    span = end - float(gpu[0]["ts"])
    by_launcher: dict[str, float] = defaultdict(float)
    by_python: dict[str, float] = defaultdict(float)
    rows = []
    for length, begin, kernel in sorted(gaps, key=lambda g: -g[0]):
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        nest = around(launch.get("tid"), float(launch["ts"])) if launch else []
        ops = [e["name"] for e in nest if e["cat"] != "python_function"]
        frames = [e["name"] for e in nest if e["cat"] == "python_function"]
        who = ops[-1] if ops else None
        by_launcher[who or "?"] += length
        ours = [f for f in frames if any(k in f for k in PYTHON_KEYS)]
        if frames:
            by_python[ours[-1] if ours else frames[-1]] += length
        if len(rows) < top:
            calls = sorted({r["name"] for r in runtime
                            if float(r["ts"]) < begin + length and float(r["ts"]) + float(r["dur"]) > begin
                            and "Launch" not in r["name"]})
            rows.append({"gap_us": round(length, 1), "at_us": round(begin - float(gpu[0]["ts"]), 1),
                         "next_kernel": kernel["name"][:120], "launched_by": who,
                         "launch_lag_us": round(float(launch["ts"]) - begin, 1) if launch else None,
                         "host_calls": calls, **({"python": frames[-8:]} if frames else {})})

    def ranked(d: dict[str, float]) -> dict[str, float]:
        return dict(sorted(((k, round(v, 1)) for k, v in d.items()), key=lambda kv: -kv[1])[:top])

    return {"gpu_events": len(gpu), "span_us": round(span, 1), "busy_us": round(busy, 1),
            "idle_us": round(sum(g[0] for g in gaps), 1), "gaps_counted": len(gaps), "min_gap_us": min_gap_us,
            "gaps": rows, "idle_by_launcher": ranked(by_launcher), "idle_by_python": ranked(by_python)}


class ScalarReads(TorchDispatchMode):
    """Record every op that reads tensor values back to the host — ``.item()``, ``int(t)`` / ``bool(t)``,
    ``nonzero``, boolean-mask indexing — with the innermost Python frame outside torch that issued it
    (``"datamodules/augment.py:180"``, ``"kornia/enhance/jpeg.py:648"``). On a GPU each such read of a device tensor
    makes the host wait for all queued work, which leaves the GPU idle while the host then catches up; on CPU the
    same code path shows the same reads, so a test can assert that a step has none of its own.

        with ScalarReads() as reads:
            loss = module.training_step(batch, 0)
        reads.ours()   # {(op, "file.py:line"): count} issued by this code base
    """

    OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal",
                     "aten::masked_select", "aten::_unique2"})
    INDEX_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_"})
    OUR_CODE = ("lightning_modules/", "datamodules/", "callbacks/", "geometry/", "bench/", "tools/")

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import traceback

        name = func._schema.name
        indices = args[1] if name in self.INDEX_OPS and len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        if name in self.OPS or any(getattr(i, "dtype", None) == torch.bool for i in indices):
            frames = [f for f in traceback.extract_stack() if f.filename != __file__
                      and "/torch/" not in f.filename.replace("\\", "/")]
            where = "?"
            if frames:
                parts = frames[-1].filename.replace("\\", "/").rsplit("/", 2)
                where = f"{'/'.join(parts[-2:])}:{frames[-1].lineno}"
            self.reads[(name, where)] += 1
        return func(*args, **(kwargs or {}))

    def ours(self, exclude: tuple[str, ...] = (), roots: tuple[str, ...] = OUR_CODE) -> dict[tuple[str, str], int]:
        """The reads issued from ``roots`` (this code base by default), less those whose frame contains an
        ``exclude`` string."""
        return {k: n for k, n in self.reads.items()
                if k[1].startswith(roots) and not any(e in k[1] for e in exclude)}


class ProfileSteps(Callback):
    """Record host and GPU activity over ``num_steps`` training steps from the end of step ``start_step`` (so the
    loader's fetch and the batch transfer before the next step are in it), then write, per rank,
    ``<run>/logs/trace_rank<R>.json.gz`` (chrome trace: chrome://tracing, Perfetto) and
    ``<run>/logs/gpu_gaps_rank<R>.json`` (:func:`gpu_gaps` of the trace, plus per-step figures).

    ``with_stack`` adds Python frames (slower while recording; names the Python code that held the host).
    A diagnostic for a separate run: the recorded steps are slower than the others.

        python -m tools.fit -c CONFIG --trainer.callbacks+=callbacks.profile.ProfileSteps \\
            --trainer.callbacks.start_step=60
    """

    def __init__(self, start_step: int = 50, num_steps: int = 3, with_stack: bool = True,
                 min_gap_us: float = 20.0) -> None:
        if start_step < 0 or num_steps < 1:
            raise ValueError(f"need start_step >= 0 and num_steps >= 1, got {start_step}, {num_steps}")
        self.start_step, self.num_steps = int(start_step), int(num_steps)
        self.with_stack, self.min_gap_us = bool(with_stack), float(min_gap_us)
        self._prof = None
        self._from = 0
        self.summary: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._prof is None and self.summary is None and step >= self.start_step:
            from torch.profiler import ProfilerActivity, profile

            cuda = pl_module.device.type == "cuda"
            self._prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                                 with_stack=self.with_stack)
            self._prof.__enter__()
            self._from = step
        elif self._prof is not None and step >= self._from + self.num_steps:
            self._finish(trainer, pl_module, step - self._from)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prof is not None:  # training stopped inside the window
            self._finish(trainer, pl_module, max(1, trainer.global_step - self._from))

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> None:
        from callbacks.paths import run_log_file

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        rank = trainer.global_rank
        trace = run_log_file(trainer, f"trace_rank{rank}.json")
        gaps = save_trace(prof, trace, self.min_gap_us)
        self.summary = {"rank": rank, "from_step": self._from, "steps": steps,
                        "idle_ms_per_step": round(gaps["idle_us"] / steps / 1e3, 3),
                        "busy_ms_per_step": round(gaps["busy_us"] / steps / 1e3, 3),
                        "span_ms_per_step": round(gaps["span_us"] / steps / 1e3, 3),
                        "trace": f"{trace.name}.gz", **gaps}
        out = run_log_file(trainer, f"gpu_gaps_rank{rank}.json")
        out.write_text(json.dumps(self.summary) + "\n")


def save_trace(prof, path: str | Path, min_gap_us: float = 20.0, top: int = 15) -> dict[str, Any]:
    """Write a finished torch profiler's chrome trace as ``<path>.gz`` and return :func:`gpu_gaps` of it."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    gaps = gpu_gaps(load_trace(path), min_gap_us, top)
    with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return gaps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trace", type=Path, help="chrome trace (.json / .json.gz) from torch.profiler")
    p.add_argument("--min-gap-us", type=float, default=50.0)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    out = {"bench": "gpu_gaps", "trace": str(args.trace), **gpu_gaps(load_trace(args.trace), args.min_gap_us,
                                                                         args.top)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
