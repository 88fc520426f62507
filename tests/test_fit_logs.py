"""What a run logs by default (issue 27): throughput (StepTimer), the hyper-parameters in TensorBoard's HPARAMS tab
(without the hp_metric placeholder), and wall time in the CSV, so that ``tools.plot --x time`` draws."""

from __future__ import annotations

import csv

import pytest

from callbacks.run_layout import RunPaths

pytest.importorskip("datamodules.datamodule")
from test_fit_cli import _config

from tools.fit import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logs")
    main(["-c", str(_config(tmp, run="logs")), "--trainer.max_steps", "13", "--run.export_every_n_steps", "null"])
    return RunPaths(tmp / "runs", "cli", "logs")


def test_throughput_is_logged_by_default(run):
    rows = list(csv.DictReader(run.metric_files()[0].open()))
    assert any(r.get("perf/samples_per_s") for r in rows), "no perf/samples_per_s column: StepTimer not on"
    assert (run.log_dir / "throughput.json").is_file()


def test_the_csv_has_wall_time_and_tools_plot_draws_against_it(run, tmp_path):
    from tools.plot import main as plot

    rows = list(csv.DictReader(run.metric_files()[0].open()))
    times = [float(r["time"]) for r in rows if r.get("time")]
    assert len(times) == len(rows) and times == sorted(times) and times[0] > 1.7e9
    out = tmp_path / "curves.png"
    assert plot([str(run.run_dir), "--x", "time", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_tensorboard_has_the_hyperparameters_without_a_placeholder_metric(run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    plugins, tags = [], set()
    for events in (run.log_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugins.append(plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content))
    assert plugins, "no hparams summary in TensorBoard"
    info = next(p.session_start_info for p in plugins if p.HasField("session_start_info"))
    assert "width" in info.hparams and "lr" in info.hparams
    experiment = next(p.experiment for p in plugins if p.HasField("experiment"))
    assert {m.name.tag for m in experiment.metric_infos} == {"train/loss", "val/loss"}
    assert "hp_metric" not in tags


def test_the_command_line_shows_mvlifts_own_info_lines_once(tmp_path):
    """``python -m tools.fit`` configured no logging, so every INFO line of mvlift's (the data sources, the epoch's
    skip counts, the pre-render cache's chunk counts, exports, ``--resume auto``) was dropped in training runs: the
    phases study's fine-tune logs had none. Lightning's own lines must not be doubled by it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = _config(tmp_path, run="cmd")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tools.fit", "-c", str(cfg), "--trainer.max_steps", "2",
                           "--resume", "auto"], check=False, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert "INFO mvlift.fit: resume auto: no checkpoint yet, starting fresh" in err, err[-3000:]
    assert "INFO mvlift.data: data source " in err
    assert "exported step 2 to " in err
    lightning = [line for line in (err + done.stdout).splitlines() if "GPU available:" in line]
    assert len(lightning) == 1, lightning
