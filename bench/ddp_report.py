"""Compare DDP runs of ``tools.fit`` (same global batch, different GPU counts) -> ONE JSON line.

    python -m bench.ddp_report runs/bench_ddp/gpu1 runs/bench_ddp/gpu2 [--control runs/bench_ddp/gpu1_seed1]

Per run: world size, median step time and samples/s (``logs/throughput.json`` from callbacks.throughput.StepTimer),
the training-loss curve (the run's CSV logs, ``RunPaths.metric_rows``). Across runs: speed-up of each run over the first, and the loss
curves' agreement (mean of |smoothed difference| over the common steps, next to the curves' own step-to-step noise).
Per run with several ranks: samples trained on by more than one rank within an epoch (``logs/samples_rank*.jsonl``
from callbacks.throughput.SampleLedger) — must be 0.

"Within noise" needs a yardstick: ``--control RUN`` (repeatable) is the first run's configuration again with another
data seed (``--data.init_args.seed 1``, 2, ...). The mean smoothed distance between the single-configuration runs
(the first and the controls, every pair) is how far two equally valid runs drift apart. Each other run gets
``loss_diff_to_reference_runs`` (its mean distance to the first run and the controls), ``loss_diff_vs_control``
(that / the yardstick) and ``loss_within_noise`` (ratio ≤ 1.5).

Speed-up: ``speedup_vs_first`` from the median step time, ``window_speedup_vs_first`` from the whole timed window
(every step, checkpoint and stall included; StepTimer ``window_samples_per_s``) — the figure to quote when the
runs do not synchronise the GPU at every step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from callbacks.run_layout import RunPaths


def loss_curve(run: Path) -> dict[int, float]:
    """step -> train/loss from the run's CSV logs, all parts in write order (the last value logged for a step wins)."""
    curve = {int(row["step"]): float(row["train/loss"]) for row in RunPaths.from_run_dir(run).metric_rows()
             if row.get("train/loss") not in (None, "")}
    if not curve:
        raise SystemExit(f"{run}: no train/loss in logs/csv/version_*/metrics.csv")
    return curve


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def curve_distance(a: dict[int, float], b: dict[int, float], window: int) -> tuple[float, list[int]]:
    """Mean |difference| of the two loss curves smoothed over ``window`` training steps (as many logged points as
    cover that many steps: a run logging every 10 steps is smoothed over window / 10 points, each of which already
    averages its 10 steps), over their common steps."""
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit("the loss curves share no step")
    spacing = statistics.median(y - x for x, y in itertools.pairwise(common)) if len(common) > 1 else 1
    points = max(1, round(window / spacing))
    sa, sb = smooth([a[s] for s in common], points), smooth([b[s] for s in common], points)
    return statistics.fmean(abs(x - y) for x, y in zip(sa, sb)), common


def duplicates_across_ranks(run: Path) -> dict[str, int]:
    """Samples (source, scene) trained on by two or more ranks in the same epoch, and the rows read."""
    seen: dict[tuple, set[int]] = defaultdict(set)
    files = sorted(run.glob("logs/samples_rank*.jsonl"))
    rows = 0
    for path in files:
        rank = int(path.stem.removeprefix("samples_rank"))
        for line in path.read_text().splitlines():
            r = json.loads(line)
            seen[(r["epoch"], r["source"], r["scene_id"])].add(rank)
            rows += 1
    return {"ranks": len(files), "samples": rows, "duplicated_across_ranks": sum(len(v) > 1 for v in seen.values())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--window", type=int, default=10,
                   help="moving-average window (training steps) for the loss comparison")
    p.add_argument("--control", type=Path, action="append", default=[],
                   help="the first run's configuration with another data seed (repeatable): the yardstick for "
                        "'within noise'")
    args = p.parse_args(argv)
    out: dict = {"bench": "ddp_report", "runs": {}}
    curves = {}
    for run in args.runs:
        info = json.loads((run / "logs" / "throughput.json").read_text())
        info.update(duplicates_across_ranks(run))
        curves[run] = loss_curve(run)
        steps = sorted(curves[run])
        info["loss_first"] = curves[run][steps[0]]
        info["loss_last10_mean"] = statistics.fmean(curves[run][s] for s in steps[-10:])
        out["runs"][str(run)] = info
    base = args.runs[0]
    first = out["runs"][str(base)]
    reference = [curves[base]] + [loss_curve(c) for c in args.control]
    control = None
    if args.control:
        pairs = [curve_distance(a, b, args.window)[0] for i, a in enumerate(reference) for b in reference[i + 1:]]
        control = statistics.fmean(pairs)
        out["control"] = {"runs": [str(c) for c in args.control], "pairwise_loss_diffs": pairs,
                          "loss_mean_abs_diff_smoothed": control}
    for run in args.runs[1:]:
        info = out["runs"][str(run)]
        diff, common = curve_distance(curves[base], curves[run], args.window)
        raw = [curves[base][s] for s in common]
        info["speedup_vs_first"] = info["samples_per_s"] / first["samples_per_s"]
        if info.get("window_samples_per_s") and first.get("window_samples_per_s"):
            info["window_speedup_vs_first"] = info["window_samples_per_s"] / first["window_samples_per_s"]
        info["loss_mean_abs_diff_smoothed"] = diff
        info["loss_step_noise_first_run"] = statistics.fmean(abs(x - y) for x, y in zip(raw[1:], raw[:-1]))
        info["common_steps"] = len(common)
        if control is not None:
            to_ref = statistics.fmean(curve_distance(r, curves[run], args.window)[0] for r in reference)
            info["loss_diff_to_reference_runs"] = to_ref
            info["loss_diff_vs_control"] = to_ref / control if control > 0 else float("inf")
            info["loss_within_noise"] = info["loss_diff_vs_control"] <= 1.5
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
