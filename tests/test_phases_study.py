"""The user's experiment plan (issue 29) at toy size on a CPU: bench/phases.py's every job (the diffusion start and
its three rows, the Phase-2 GS-LRM, the Phase-3 data and GS-LRMs, every chained and baseline evaluation at the
held-out cameras with realistic and clean photos) through the same commands the GPU runs, with tiny models at 16 px
for two steps, and the report with its domain-gap column. It checks the plumbing, not the numbers (docs/results.md,
"The user's experiment plan (Phases 1-3)")."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from bench import phases
from bench.phases_report import DATAS, METRICS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("phases")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and spins on no core another process holds
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(ROOT)  # the study's configs are paths from the checkout root, as on the device
            mp.delenv("MVLIFT_RUN", raising=False)  # tools.fit exports the run's name: restored afterwards
            rc = phases.main(["all", "--profile", "toy", "--inprocess", "--root", str(out / "runs"), "--out",
                              str(out / "out")])
    finally:
        torch.set_num_threads(threads)
    return out, rc


def test_every_job_of_the_plan_runs_and_every_row_is_evaluated(toy):
    out, rc = toy
    status = [json.loads(line) for line in (out / "out" / "phases_status.jsonl").read_text().splitlines()]
    assert rc == 0, [s for s in status if s["status"] != "ok"]
    study = phases.Study(phases.toy_profile(), out / "runs", out / "out")
    assert [s["job"] for s in status] == [job.name for job in study.plan()]
    # each job ran once; the Phase-3 data, planned again in step phase3 for a finetune cut short, were there
    assert {s["status"] for s in status if not s["job"].startswith("phase3_data")} == {"ok"}
    assert [s["status"] for s in status if s["job"].startswith("phase3_data")] == ["ok"] * 3 + ["done before"] * 3
    evals = sorted(p.parent.name for p in (out / "runs" / "phases" / "eval").glob("*/results.json"))
    assert evals == sorted([f"{r}_s0_{g}" for r in phases.ROWS for g in ("phase2", "phase3")] + ["views_phase2"])
    for name in evals:
        rows = json.loads((out / "runs" / "phases" / "eval" / name / "results.json").read_text())["rows"]
        assert sorted(r["data"] for r in rows) == ["clean", "realistic"] and not any(r.get("error") for r in rows)
        for r in rows:  # scored at the two held-out cameras against the clean truth
            assert set(r["heldout_metrics"]["view"]) == {"view_006", "view_007"}
            assert all(m in r["heldout_metrics"]["all"] for m in METRICS)
            if name != "views_phase2":
                assert r["mode"] == "chained" and "generated_novel_metrics" in r and "heldout_copy_ref_metrics" in r
    # Phase 3's data: the generated views and the scene's true views, a source the Phase-3 fit mixed in
    data = json.loads((out / "runs" / "phases" / "phase3_data" / "ii_s0" / "dataset.json").read_text())
    assert data["truth_views"] == [10] and data["settings"]["with_truth"]
    cfg = (out / "runs" / "phases" / "gslrm_phase3_ii_s0" / "config.yaml").read_text()
    assert "phase3_data/ii_s0/data_train.txt" in cfg and "input_views: first" in cfg


def test_a_repeated_step_skips_evaluations_that_have_results_and_step_eval_redoes_them(toy):
    out, _ = toy
    study = phases.Study(phases.toy_profile(), out / "runs", out / "out")
    evals = [job for group in study.steps("phase3") for job in group() if job.tool == "tools.evaluate"]
    assert len(evals) == 7 and all(job.done is not None and job.done.name == "results.json" for job in evals)
    study.redo_evaluations = True
    assert all(job.done is None for group in study.steps("eval") for job in group() if job.tool == "tools.evaluate")


def test_phase3_data_cut_short_is_continued_by_the_step_repeated(toy, tmp_path):
    """A Phase-3 data set the deadline stopped (samples written, no dataset.json) is not refused as a non-empty
    folder when the step is repeated: the finished samples are kept and the rest written."""
    import shutil

    out, _ = toy
    runs = tmp_path / "runs"
    export = Path("phases") / "diffusion_i_s0" / "export"
    shutil.copytree(out / "runs" / export, runs / export)
    data = runs / "phases" / "phase3_data" / "i_s0"
    shutil.copytree(out / "runs" / "phases" / "phase3_data" / "i_s0", data)
    (data / "dataset.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in data.glob("sample_*/opencv_cameras.json")}
    assert before
    study = phases.Study(phases.toy_profile(), runs, tmp_path / "out")
    job = study.synthesize("i", 0)
    assert job.done is None
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        [rec] = phases.run_group([job], tmp_path / "out", inprocess=True, timeout_s=60)
    assert rec["status"] == "ok", rec
    assert json.loads((data / "dataset.json").read_text())["settings"]["with_truth"]
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("sample_*/opencv_cameras.json")} == before


def test_the_report_has_every_row_the_gap_column_and_its_figures(toy):
    out, _ = toy
    report = out / "out" / "report"
    text = (report / "phases.md").read_text()
    assert "gap (PSNR fg)" in text and "not run" not in text.lower()  # no row, and no "Not run" list of commands
    for d in DATAS:
        assert f"{d}: PSNR fg" in text and f"{d}: IoU" in text
    numbers = json.loads((report / "phases.json").read_text())
    keys = [t["key"] for t in numbers["rows"]]
    assert keys == [f"{r}_{g}" for r in phases.ROWS for g in ("phase2", "phase3")] + [
        "views_phase2", "copy"] + [f"{r}_generated" for r in phases.ROWS]
    assert all(not t["not_run"] and t["gap_mean"] is not None for t in numbers["rows"])
    for png in ("chain.png", "curves_diffusion.png", "curves_gslrm.png", "grid_realistic.png"):
        assert (report / png).stat().st_size > 1000, png


def test_the_gpu_plan_is_the_toy_plan_at_full_size():
    """The device's commands: the same jobs, each training bounded by max_time, the rows' trainings (fine-tunes,
    Phase-3 GS-LRMs) also by a number of steps (rows sharing the GPU unevenly compared at equal training), two seeds
    of the Phase-1 rows, the configs they name present."""
    study = phases.Study(phases.gpu_profile())
    plan = study.plan()
    toy = phases.Study(phases.toy_profile()).plan()
    assert {j.name for j in toy} <= {j.name for j in plan}
    fits = [j for j in plan if j.tool == "tools.fit"]
    assert len(fits) == 2 + 3 * 2 + 3 and all("--trainer.max_time" in j.argv for j in fits)
    for j in fits:
        shared = j.name in ("diffusion_base", "gslrm_phase2")
        assert ("--trainer.max_steps" in j.argv) != shared, j.name
        if not shared:  # one step count for every row of a phase
            steps = j.argv[j.argv.index("--trainer.max_steps") + 1]
            assert steps == str(study.p.steps["finetune" if j.name.startswith("diffusion") else "phase3"])
    total = sum(phases._seconds(j.max_time) for j in fits if j.name in ("diffusion_base", "diffusion_i_s0",
                                                                         "gslrm_phase3_i_s0"))
    assert 10 * 60 <= total <= 15 * 60  # the study's training time on the GPU (groups run at once)
    for job in plan:
        for arg in job.argv:
            if arg.startswith("configs/") or arg.split("=")[-1].startswith("configs/"):
                assert (ROOT / arg.split("=")[-1]).is_file(), arg
        assert shlex.split(job.command())[:3] == ["python", "-m", job.tool]
    evals = [j for j in plan if j.tool == "tools.evaluate"]
    assert all("--precision" in j.argv and "cuda" in j.argv for j in evals)


def test_the_status_of_a_training_job_has_its_start_up_from_its_log(tmp_path):
    """run_group's records carry each job's seconds to its first training batch, read from the StepTimer line of
    its log (the last one: a job resumed in the same log prints another)."""
    from callbacks.throughput import STARTUP_LINE

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "diffusion_ii_s0.log").write_text(
        "Seed set to 0\n" + STARTUP_LINE.format(step=0, seconds=171.04) + "\n...\n"
        + STARTUP_LINE.format(step=88, seconds=64.5) + "\nstopped\n")
    records = [{"job": "diffusion_ii_s0", "start": 0.0}, {"job": "report", "start": 0.0}, {"job": "done_one"}]
    phases._note_startups(records, tmp_path)
    assert records[0]["startup_s"] == 64.5 and "startup_s" not in records[1] and "startup_s" not in records[2]


def test_the_jobs_share_one_prerender_cache_under_the_study(tmp_path, monkeypatch):
    """Every job of a group runs with MVLIFT_PRERENDER_CACHE set to the study's folder (datamodules.render_cache),
    so one job's GPU pre-render is the next one's read; a folder the user set is kept."""
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "print_cache_env.py").write_text(
        "import os, sys\nopen(sys.argv[1], 'w').write(os.environ.get('MVLIFT_PRERENDER_CACHE', 'unset'))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mod"))
    monkeypatch.delenv("MVLIFT_PRERENDER_CACHE", raising=False)
    study = phases.Study(phases.PROFILES["toy"](), tmp_path / "runs", tmp_path / "out")
    jobs = [phases.Job(f"job{i}", "print_cache_env", [str(tmp_path / f"seen{i}")]) for i in range(2)]
    records = phases.run_group(jobs, study.out, False, 60, study.env())
    assert [r["status"] for r in records] == ["ok", "ok"]
    expected = str(tmp_path / "runs" / "phases" / "prerender_cache")
    assert [(tmp_path / f"seen{i}").read_text() for i in range(2)] == [expected, expected]
    monkeypatch.setenv("MVLIFT_PRERENDER_CACHE", "/data/cache")
    assert study.env() == {"MVLIFT_PRERENDER_CACHE": "/data/cache"}


def test_a_job_is_killed_at_its_own_limit_and_phase3_data_jobs_get_the_synthesis_limit(tmp_path, monkeypatch):
    """A job without max_time is bounded by the profile's timeout_s, unless it has its own limit: the Phase-3 data
    jobs, which six at once need far longer than a training's margin (run E: killed at 240 s, a third written)."""
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "sleep_then_write.py").write_text(
        "import sys, time\ntime.sleep(float(sys.argv[1]))\nopen(sys.argv[2], 'w').write('done')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mod"))
    jobs = [phases.Job("bounded", "sleep_then_write", ["30", str(tmp_path / "bounded")], limit_s=1.0),
            phases.Job("margin", "sleep_then_write", ["0", str(tmp_path / "margin")])]
    records = phases.run_group(jobs, tmp_path / "out", False, 60)
    assert [r["status"] for r in records] == ["failed", "ok"] and records[0]["reason"] == "killed after 1 s"
    assert not (tmp_path / "bounded").exists() and (tmp_path / "margin").read_text() == "done"
    study = phases.Study(phases.gpu_profile())
    synth = [j for j in study.plan() if j.tool == "tools.synthesize"]
    assert synth and all(j.limit(study.p.timeout_s) == study.p.synthesize_timeout_s >= 900 for j in synth)
    assert all("--skip-existing" in j.argv for j in synth)


def test_a_row_not_run_names_the_step_that_makes_it_and_the_missing_jobs_in_order(tmp_path, monkeypatch):
    """The report's "Not run": a Phase-3 row needs its diffusion fine-tune, the Phase-2 GS-LRM, its data and its
    GS-LRM; what is missing is named in the order it must run, with the study's step (and settings) that runs it."""
    from bench.phases_report import _reproduce

    monkeypatch.setenv("PHASES_PHASE3_SEEDS", "0 1")
    monkeypatch.delenv("PHASES_SEEDS", raising=False)
    study = phases.Study(phases.gpu_profile(), tmp_path / "runs")
    evaluation = next(j for j in study.plan() if j.name == "eval_ii_s1_phase3")
    assert [j.name for j in study.missing_inputs(evaluation)] == [
        "diffusion_base", "diffusion_ii_s1", "gslrm_phase2", "phase3_data_ii_s1", "gslrm_phase3_ii_s1"]
    command = "`PHASES_PHASE3_SEEDS='0 1' python -m bench.phases {} --profile gpu`"
    assert _reproduce(study, evaluation).startswith(command.format("all"))
    for run in ("diffusion_base", "diffusion_ii_s1", "gslrm_phase2"):  # trained: only Phase 3 is left
        (tmp_path / "runs" / "phases" / run / "export" / "step_250").mkdir(parents=True)
    study = phases.Study(phases.gpu_profile(), tmp_path / "runs")
    evaluation = next(j for j in study.plan() if j.name == "eval_ii_s1_phase3")
    assert _reproduce(study, evaluation) == (command.format("phase3")
                                             + " runs phase3_data_ii_s1 -> gslrm_phase3_ii_s1 -> eval_ii_s1_phase3")


def test_phases_rows_limits_the_steps_to_those_rows_and_a_row_left_out_is_reproduced_with_every_row(
        tmp_path, monkeypatch):
    """PHASES_ROWS="i" trains and scores row (i) alone; the plan (and so the report's "Not run") keeps every row, and
    the command that reproduces a row left out does not carry the setting that left it out."""
    from bench.phases_report import _reproduce

    monkeypatch.setenv("PHASES_ROWS", "i")
    monkeypatch.setenv("PHASES_PHASE3_SEEDS", "0 1")
    study = phases.Study(phases.gpu_profile(), tmp_path / "runs")
    names = [j.name for group in study.steps("all") for j in group()]
    assert "diffusion_i_s1" in names and "gslrm_phase3_i_s1" in names and "eval_i_s1_phase3" in names
    assert not [n for n in names if "_ii_" in n or "_iii_" in n]
    assert "eval_iii_s1_phase3" in {j.name for j in study.plan()}
    evaluation = next(j for j in study.plan() if j.name == "eval_iii_s0_phase2")
    assert _reproduce(study, evaluation).startswith("`PHASES_PHASE3_SEEDS='0 1' python -m bench.phases all")
    monkeypatch.setenv("PHASES_ROWS", "i iv")
    with pytest.raises(SystemExit, match="PHASES_ROWS"):
        phases.gpu_profile()


def _row(key: str, group: str, per_seed_fg: dict[int, float]) -> dict:
    return {"key": key, "row": key, "group": group, "not_run": not per_seed_fg,
            "seeds": {s: {"realistic": {"psnr_fg": v}, "clean": {"psnr_fg": v + 0.3}} for s, v in per_seed_fg.items()},
            "mean": {"realistic": {"psnr_fg": sum(per_seed_fg.values()) / max(len(per_seed_fg), 1)}},
            "gap_mean": 0.3}


def test_findings_say_whether_a_difference_exceeds_the_seed_spread_and_which_rows_tie_with_the_best():
    """Run D's question (does a remedy help?) answered by the report itself: a difference no larger than the seeds'
    own disagreement is 'no measured effect', a larger one is 'a measured effect', one seed cannot be judged, and the
    Targets name the rows the best chain does not measurably beat."""
    from bench.phases_report import findings, tied_with, verdict

    assert verdict(0.1, 0.3) == "so no measured effect"
    assert verdict(-0.5, 0.3) == "so a measured effect"
    assert verdict(2.0, float("nan")).startswith("one seed")
    table = [_row("i_phase2", "chain", {0: 12.90, 1: 12.84}),
             _row("ii_phase2", "chain", {0: 13.00, 1: 12.74}),     # +0.00: within 0.26
             _row("iii_phase2", "chain", {0: 11.90, 1: 11.80}),    # -1.02: beyond 0.10
             _row("i_phase3", "chain", {0: 15.19}),                # one seed of Phase 3
             _row("ii_phase3", "chain", {})]
    lines = findings(table)
    assert any(line.startswith("- (ii) vs (i), Phase 2: +0.00 dB") and "0.26 dB, so no measured effect" in line
               for line in lines), lines
    assert any(line.startswith("- (iii) vs (i), Phase 2: -1.02 dB") and "so a measured effect" in line
               for line in lines), lines
    assert any(line.startswith("- (i) Phase 3 vs Phase 2: +2.32 dB") and "one seed, so no spread" in line
               for line in lines), lines
    best = table[0]  # (i) Phase 2 against its peers: (ii) ties, (iii) is measurably below, Phase 3 has one seed
    assert [t["key"] for t in tied_with(table[:3], best)] == ["ii_phase2"]


def _metrics(run_dir: Path, rows: list[dict[str, str]]) -> None:
    import csv

    path = run_dir / "logs" / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)


def test_a_gslrm_that_paints_the_whole_view_is_judged_not_learned_from_its_last_validation(tmp_path):
    """Run F's Phase-2 GS-LRM (2026-12-07) collapsed to opaque white Gaussians over every pixel: 14.2 dB, silhouette
    IoU 0.11. gslrm_learned reads the run's last val/iou/all and names it with its step; a run that logged none is
    not judged."""
    dead, alive, silent = (tmp_path / "runs" / "phases" / n for n in ("dead", "alive", "silent"))
    _metrics(dead, [{"step": "499", "val/iou/all": "0.62"}, {"step": "999", "train/loss": "0.13"},
                    {"step": "1288", "val/iou/all": "0.109"}])
    _metrics(alive, [{"step": "499", "val/iou/all": "0.2"}, {"step": "999", "val/iou/all": "0.91"}])
    _metrics(silent, [{"step": "499", "val/psnr/all": "14.2"}])
    why = phases.gslrm_learned(dead, 0.5)
    assert why is not None and "0.109" in why and "step 1288" in why and "(< 0.5)" in why
    assert phases.gslrm_learned(alive, 0.5) is None and phases.gslrm_learned(silent, 0.5) is None


def test_a_phase2_gslrm_below_the_iou_floor_stops_the_study_and_is_refused_by_the_later_steps(toy, tmp_path):
    """With a floor the toy's Phase-2 GS-LRM cannot reach (IoU <= 1), the train step records it as 'did not learn'
    (exit 1) and the phase3 and eval steps start nothing; with a floor of 0 it passes."""
    from callbacks.run_layout import RunPaths

    out, _ = toy
    assert any(r.get("val/iou/all") for r in RunPaths(out / "runs", "phases", "gslrm_phase2").metric_rows())
    profile = phases.PROFILES["toy"]()
    for step in ("train", "phase3", "eval"):
        study = phases.Study(phases.dataclasses.replace(profile, min_iou=1.01), out / "runs", tmp_path / step)
        assert phases.run_step(study, step, inprocess=True) == 1
        status = [json.loads(line) for line in (tmp_path / step / "phases_status.jsonl").read_text().splitlines()]
        before = [("diffusion_base", "done before")] if step == "train" else []
        assert [(r["job"], r["status"]) for r in status] == [*before, ("gslrm_phase2", "did not learn")], step
        assert "val/iou/all" in status[-1]["reason"]
    study = phases.Study(phases.dataclasses.replace(profile, min_iou=0.0), out / "runs", tmp_path / "pass")
    assert phases.run_step(study, "train", inprocess=True) == 0


def test_phases_gslrm_background_random_trains_the_phase2_gslrm_over_random_colours(monkeypatch):
    """By default (PHASES_GSLRM_BACKGROUND=random) gslrm_phase2_random_bg.yaml is added to the Phase-2 GS-LRM's fit;
    its data module then composites each scene over its own colour and the batch carries it (the render's background).
    PHASES_GSLRM_BACKGROUND=white leaves it out."""
    import yaml

    from datamodules import MultiViewDataModule

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PHASES_GSLRM_BACKGROUND", raising=False)
    job = phases.Study(phases.gpu_profile()).phase2_gslrm()
    configs = [job.argv[i + 1] for i, a in enumerate(job.argv) if a == "-c"]
    assert configs[-1] == str(phases.CONFIGS / "gslrm_phase2_random_bg.yaml")
    init: dict = {}
    for c in configs:  # later files replace the keys they name, as tools.fit's -c
        init.update((yaml.safe_load(Path(c).read_text()).get("data") or {}).get("init_args") or {})
    init.update(num_workers=0, image_size=16, batch_size=4, persistent_workers=False, pin_memory=False)
    dm = MultiViewDataModule(**init)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    bg = batch["background"]
    assert bg.shape == (4, 3) and len({tuple(c.tolist()) for c in bg}) == 4
    corner = batch["images"][:, :, :, 0, 0]  # [B, V, 3]: an image corner is background
    assert torch.allclose(corner, bg[:, None, :].expand_as(corner), atol=1e-3)
    monkeypatch.setenv("PHASES_GSLRM_BACKGROUND", "white")
    white = phases.Study(phases.gpu_profile()).phase2_gslrm()
    assert str(phases.CONFIGS / "gslrm_phase2_random_bg.yaml") not in white.argv
    monkeypatch.setenv("PHASES_GSLRM_BACKGROUND", "green")
    with pytest.raises(SystemExit, match="random or white"):
        phases.gpu_profile()
