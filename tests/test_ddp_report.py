"""bench.ddp_report: speed-up, duplicated samples across ranks, loss-curve agreement against a control run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.ddp_report import main


def _run(root: Path, name: str, losses: list[float], world: int, step_s: float, samples: dict[int, list[str]]) -> Path:
    run = root / name
    (run / "logs" / "csv").mkdir(parents=True)
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(losses))
    (run / "logs" / "csv" / "metrics.csv").write_text("step,train/loss\n" + rows)
    (run / "logs" / "throughput.json").write_text(json.dumps(
        {"world_size": world, "global_batch": 8, "step_s_median": step_s, "samples_per_s": 8 / step_s}))
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
    assert good["duplicated_across_ranks"] == 0 and bad["duplicated_across_ranks"] == 1
    assert good["loss_within_noise"] and abs(good["loss_diff_vs_control"] - 0.5) < 1e-6
    assert not bad["loss_within_noise"] and bad["loss_diff_vs_control"] > 9
