"""Where the GPU waits: idle gaps between kernels in a torch profiler trace, and what the host did meanwhile.

A step whose kernel time is well under its wall time leaves the GPU idle; this finds each idle stretch (the time
between one GPU activity — kernel, memcpy, memset — ending and the next starting) and names the host side of it:

- ``launched_by``: the innermost CPU op around the launch of the kernel that ended the gap (what the host was
  getting to when the GPU ran dry);
- ``host_calls``: CUDA runtime calls overlapping the gap (a ``cudaStreamSynchronize`` / ``cudaFree`` /
  ``cudaMalloc`` there is the usual suspect);
- ``launch_lag_us``: how long after the gap began the host issued that launch (≈ the gap: host-bound; ≈ 0: the
  GPU waited on something else, e.g. a dependency or an event).

``idle_by_launcher`` sums the gaps by ``launched_by``.

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
from collections import defaultdict
from pathlib import Path
from typing import Any

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cpu_op", "user_annotation")


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
        return {"gpu_events": 0, "busy_us": 0.0, "idle_us": 0.0, "gaps": [], "idle_by_launcher": {}}
    runtime = _complete(events, ("cuda_runtime", "cuda_driver"))
    launches = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    host: dict[Any, list[dict]] = defaultdict(list)
    for e in sorted(_complete(events, HOST_CATS), key=lambda e: float(e["ts"])):
        host[e.get("tid")].append(e)
    starts = {tid: [float(e["ts"]) for e in evs] for tid, evs in host.items()}

    def innermost(tid: Any, t: float, look_back: int = 5000) -> str | None:
        """The host op on thread ``tid`` that contains time ``t`` and started last (ops nest: the innermost)."""
        evs = host.get(tid, [])
        i = bisect.bisect_right(starts.get(tid, []), t)
        for e in reversed(evs[max(0, i - look_back): i]):
            if float(e["ts"]) + float(e["dur"]) >= t:
                return e["name"]
        return None

    gaps, busy, end = [], 0.0, float(gpu[0]["ts"])
    for e in gpu:
        start, dur = float(e["ts"]), float(e["dur"])
        if start - end >= min_gap_us:
            gaps.append((start - end, end, e))
        busy += max(0.0, start + dur - max(start, end))  # overlapping activities (several streams) count once
        end = max(end, start + dur)
    span = end - float(gpu[0]["ts"])
    by_launcher: dict[str, float] = defaultdict(float)
    rows = []
    for length, begin, kernel in sorted(gaps, key=lambda g: -g[0]):
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        who = innermost(launch.get("tid"), float(launch["ts"])) if launch else None
        by_launcher[who or "?"] += length
        if len(rows) < top:
            calls = sorted({r["name"] for r in runtime
                            if float(r["ts"]) < begin + length and float(r["ts"]) + float(r["dur"]) > begin
                            and "Launch" not in r["name"]})
            rows.append({"gap_us": round(length, 1), "at_us": round(begin - float(gpu[0]["ts"]), 1),
                         "next_kernel": kernel["name"][:120], "launched_by": who,
                         "launch_lag_us": round(float(launch["ts"]) - begin, 1) if launch else None,
                         "host_calls": calls})
    return {"gpu_events": len(gpu), "span_us": round(span, 1), "busy_us": round(busy, 1),
            "idle_us": round(sum(g[0] for g in gaps), 1), "gaps_counted": len(gaps), "min_gap_us": min_gap_us,
            "gaps": rows,
            "idle_by_launcher": dict(sorted(((k, round(v, 1)) for k, v in by_launcher.items()),
                                            key=lambda kv: -kv[1])[:top])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trace", type=Path, help="chrome trace (.json / .json.gz) from torch.profiler")
    p.add_argument("--min-gap-us", type=float, default=50.0)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    out = {"bench": "timeline", "trace": str(args.trace), **gpu_gaps(load_trace(args.trace), args.min_gap_us,
                                                                         args.top)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
