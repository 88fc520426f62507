"""bench.ddp_report: speed-up, duplicated samples across ranks, loss-curve agreement against a control run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.ddp_report import main


def _run(root: Path, name: str, losses: list[float], world: int, step_s: float, samples: dict[int, list[str]]) -> Path:
    run = root / name
    (run / "logs" / "csv" / "version_0").mkdir(parents=True)
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(losses))
    (run / "logs" / "csv" / "version_0" / "metrics.csv").write_text("step,train/loss\n" + rows)
    (run / "logs" / "throughput.json").write_text(json.dumps(
        {"world_size": world, "global_batch": 8, "step_s_median": step_s, "samples_per_s": 8 / step_s,
         "window_samples_per_s": 8 / (step_s * 1.1)}))
    for rank, scenes in samples.items():
        lines = [json.dumps({"epoch": 0, "step": 0, "source": "s", "scene_id": sc}) for sc in scenes]
        (run / "logs" / f"samples_rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_report_speedup_duplicates_and_loss_agreement_against_a_control(tmp_path, capsys):
    steps = range(60)
    base = [1.0 / (1 + 0.1 * s) + 0.01 * math.sin(s) for s in steps]
    control = [v + 0.02 for v in base]  # another seed: 0.02 apart
    close = [v - 0.01 for v in base]  # the 2-GPU run: closer than the control
    far = [v + 0.2 for v in base]  # a broken 2-GPU run
    r1 = _run(tmp_path, "gpu1", base, 1, 0.30, {0: ["a", "b", "c", "d"]})
    rc = _run(tmp_path, "gpu1_seed1", control, 1, 0.30, {0: ["a", "b"]})
    r2 = _run(tmp_path, "gpu2", close, 2, 0.16, {0: ["a", "b"], 1: ["c", "d"]})
    rbad = _run(tmp_path, "bad", far, 2, 0.16, {0: ["a", "b"], 1: ["b", "c"]})
    out = main([str(r1), str(r2), str(rbad), "--control", str(rc)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    good, bad = out["runs"][str(r2)], out["runs"][str(rbad)]
    assert abs(out["control"]["loss_mean_abs_diff_smoothed"] - 0.02) < 1e-9
    assert abs(good["speedup_vs_first"] - 0.30 / 0.16) < 1e-9
    assert abs(good["window_speedup_vs_first"] - 0.30 / 0.16) < 1e-9
    assert good["duplicated_across_ranks"] == 0 and bad["duplicated_across_ranks"] == 1
    # mean distance to the two 1-GPU runs (0.01 and 0.03) over their own distance (0.02)
    assert good["loss_within_noise"] and abs(good["loss_diff_vs_control"] - 1.0) < 1e-6
    assert not bad["loss_within_noise"] and bad["loss_diff_vs_control"] > 9


def test_several_controls_make_the_yardstick_their_mean_pairwise_distance(tmp_path):
    base = [1.0 / (1 + 0.1 * s) for s in range(40)]
    runs = [_run(tmp_path, f"gpu1_seed{k}", [v + d for v in base], 1, 0.3, {0: ["a"]})
            for k, d in enumerate((0.0, 0.02, 0.04))]
    two = _run(tmp_path, "gpu2", [v + 0.1 for v in base], 2, 0.16, {0: ["a"], 1: ["b"]})
    out = main([str(runs[0]), str(two), "--control", str(runs[1]), "--control", str(runs[2])])
    assert out["control"]["pairwise_loss_diffs"] == pytest.approx([0.02, 0.04, 0.02])
    info = out["runs"][str(two)]
    assert info["loss_diff_to_reference_runs"] == pytest.approx((0.1 + 0.08 + 0.06) / 3)
    assert info["loss_diff_vs_control"] == pytest.approx(0.08 / (0.08 / 3)) and not info["loss_within_noise"]


def test_loss_curve_joins_the_csv_parts_of_a_resumed_run_in_write_order(tmp_path):
    from bench.ddp_report import loss_curve

    run = tmp_path / "exp" / "r"
    parts = {"version_0/metrics.csv": range(10), "version_1/metrics.csv": range(10, 40),
             "version_2/metrics.csv": range(30, 50), "version_10/metrics.csv": range(45, 60)}
    for k, (name, steps) in enumerate(parts.items()):
        path = run / "logs" / "csv" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{k}\n" for s in steps))
    curve = loss_curve(run)
    assert sorted(curve) == list(range(60))
    assert [curve[s] for s in (5, 20, 35, 47, 59)] == [0.0, 1.0, 2.0, 3.0, 3.0]  # a later part wins its steps


def test_the_smoothing_window_counts_training_steps_not_logged_points():
    from bench.ddp_report import curve_distance

    every = {s: float(s % 2) for s in range(200)}  # alternating 0, 1 every step: smoothed over 10 steps ~ 0.5
    flat = {s: 0.5 for s in range(200)}
    assert curve_distance(every, flat, 10)[0] < 0.03
    sparse_a = {s: 0.2 * (s // 10 % 2) for s in range(0, 200, 10)}  # logged every 10 steps
    sparse_b = {s: 0.1 for s in range(0, 200, 10)}
    # window 10 steps = 1 logged point: no extra smoothing of points that each stand for 10 steps
    assert curve_distance(sparse_a, sparse_b, 10)[0] == pytest.approx(0.1)
    assert curve_distance(sparse_a, sparse_b, 20)[0] < 0.01  # 2 points: 0, 0.2 average to 0.1
