"""python -m tools.plot: a run's CSV parts merged by step (a resume replaces the history from its first step), the
PNG, the default panels, and errors that name the column, the file or the path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from callbacks.run_curves import default_panels, load_curves, select_panels
from tools.plot import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = "epoch,step,train/loss,train/psnr,val/loss,val/psnr/all,val/psnr/real,val/psnr_fg/all,val/psnr_fg_empty/all"


def _part(run: Path, k: int, rows: list[str], header: str = HEADER) -> Path:
    path = run / "logs" / "csv" / f"version_{k}" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _resumed_run(root: Path, name: str = "r1", offset: float = 0.0) -> Path:
    """version_0 logs steps 9..49 (train every 10 steps, validation at 29 and 49) and is interrupted after step 49;
    version_1 resumes from the checkpoint at step 29 and logs 29..69 (so 39 and 49 are logged twice, 45 only by the
    interrupted part)."""
    run = root / "exp" / name
    o = offset
    _part(run, 0, [
        f"0,9,{1.0 + o},10.0,,,,,",
        f"0,19,{0.8 + o},11.0,,,,,",
        f"0,29,{0.6 + o},12.0,,,,,",
        f"0,29,,,{0.9 + o},13.0,12.5,9.0,0",
        f"0,39,{0.5 + o},13.0,,,,,",
        f"0,45,{0.45 + o},13.2,,,,,",
        f"0,49,{0.4 + o},13.5,,,,,",
        f"0,49,,,{0.7 + o},14.0,13.5,10.0,1",
    ])
    _part(run, 1, [
        f"0,29,,,{0.91 + o},13.1,12.6,9.1,0",
        f"1,39,{0.55 + o},13.1,,,,,",
        f"1,49,{0.42 + o},13.4,,,,,",
        f"1,59,{0.3 + o},14.5,,,,,",
        f"1,69,{0.25 + o},15.0,,,,,",
        f"1,69,,,{0.6 + o},15.0,14.0,inf,2",
    ])
    return run


def test_parts_merge_by_step_and_a_resume_replaces_the_history_from_its_first_step(tmp_path):
    run = load_curves(_resumed_run(tmp_path))
    assert run.label == "r1" and [f.parent.name for f in run.files] == ["version_0", "version_1"]
    assert run.series["train/loss"] == {9: 1.0, 19: 0.8, 39: 0.55, 49: 0.42, 59: 0.3, 69: 0.25}  # 29, 45: gone
    assert run.series["val/loss"] == {29: 0.91, 69: 0.6}
    assert list(run.series["val/psnr/all"]) == [29, 69] and run.series["val/psnr/real"][69] == 14.0
    assert math.isinf(run.series["val/psnr_fg/all"][69])  # a value, drawn as a gap
    assert "epoch" not in run.series and "step" not in run.series and run.time is None
    # one part alone (a CSV path): its own rows, labelled <run>/version_<k>
    part = load_curves(tmp_path / "exp" / "r1" / "logs" / "csv" / "version_0" / "metrics.csv")
    assert part.label == "r1/version_0" and part.series["train/loss"][45] == 0.45 and part.series["val/loss"][49] == 0.7


def test_the_cli_writes_a_png_with_the_default_panels_for_two_runs(tmp_path, capsys):
    a, b = _resumed_run(tmp_path, "base"), _resumed_run(tmp_path, "finetune", offset=-0.1)
    out = tmp_path / "plots" / "curves.png"
    assert main([str(a), str(b), "--out", str(out), "--title", "two runs"]) == 0, capsys.readouterr().err
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] >= 1200 and im.size[1] >= 300  # three panels side by side
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # lines, text, not a blank canvas
    printed = capsys.readouterr().out
    assert "3 panels" in printed and "base, finetune" in printed
    runs = [load_curves(a), load_curves(b)]
    panels = default_panels(runs)
    assert [p.title for p in panels] == ["train/loss", "val/loss", "PSNR (dB)"]
    assert panels[2].columns == ["train/psnr", "val/psnr/all", "val/psnr/real", "val/psnr_fg/all"]  # no counts


def test_metrics_choose_the_panels_and_labels_and_csv_paths_work(tmp_path, capsys):
    run = _resumed_run(tmp_path)
    csv_part = run / "logs" / "csv" / "version_1" / "metrics.csv"
    out = tmp_path / "chosen.png"
    assert main([f"whole={run}", str(csv_part), "--metrics", "val/loss, val/psnr/*", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "2 panels: val/loss; val/psnr/*" in capsys.readouterr().out
    (panel,) = select_panels([load_curves(run)], ["val/psnr*"])
    assert panel.columns == ["val/psnr/all", "val/psnr/real", "val/psnr_fg/all", "val/psnr_fg_empty/all"]


def test_a_missing_column_names_the_column_and_the_files(tmp_path, capsys):
    run = _resumed_run(tmp_path)
    assert main([str(run), "--metrics", "train/loss,val/lpips", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "'val/lpips'" in err and "version_0/metrics.csv" in err and "version_1/metrics.csv" in err
    assert "train/loss" in err  # the columns it does have
    assert main([str(run), "--metrics", "val/nothing*", "--out", str(tmp_path / "x.png")]) == 2
    assert "'val/nothing*' matches no column" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_empty_or_absent_csvs_name_the_path(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    absent = tmp_path / "nowhere" / "metrics.csv"
    assert main([str(absent), "--out", out]) == 2
    assert f"{absent}: no such run folder or CSV file" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main([str(empty), "--out", out]) == 2
    assert f"{empty}: empty metrics file" in capsys.readouterr().err
    header_only = tmp_path / "header.csv"
    header_only.write_text(HEADER + "\n")
    assert main([str(header_only), "--out", out]) == 2
    assert f"{header_only}: empty metrics file (a header but no rows)" in capsys.readouterr().err
    no_logs = tmp_path / "exp" / "fresh"
    no_logs.mkdir(parents=True)
    assert main([str(no_logs), "--out", out]) == 2
    assert f"no metrics.csv under {no_logs / 'logs' / 'csv'}" in capsys.readouterr().err
    # in a run folder an empty part (an invocation that logged nothing) is skipped; all empty is an error
    run = _resumed_run(tmp_path)
    _part(run, 2, [], header="")
    assert list(load_curves(run).series["train/loss"])[-1] == 69
    for k in (0, 1):
        (run / "logs" / "csv" / f"version_{k}" / "metrics.csv").write_text("")
    assert main([str(run), "--out", out]) == 2
    assert "every metrics file is empty" in capsys.readouterr().err
    assert not Path(out).exists()


def test_x_time_needs_a_wall_time_column(tmp_path, capsys):
    run = tmp_path / "exp" / "timed"
    _part(run, 0, ["0,9,1000.0,1.0", "0,19,1060.0,0.5", "0,29,1200.0,0.4"], header="epoch,step,time,train/loss")
    curves = load_curves(run)
    assert curves.time_column == "time" and "time" not in curves.series
    assert curves.xy("train/loss", "time") == ([0.0, 60.0, 200.0], [1.0, 0.5, 0.4])
    out = tmp_path / "time.png"
    assert main([str(run), "--x", "time", "--out", str(out)]) == 0 and out.read_bytes()[:8] == PNG_SIGNATURE
    untimed = _resumed_run(tmp_path)
    assert main([str(untimed), "--x", "time", "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "no wall-time column" in err and "version_0/metrics.csv" in err


def test_real_lightning_csv_logs_of_a_resumed_run(tmp_path):
    """The CSVLogger's own files (the layout tools.fit writes: logs/csv/version_<k>/metrics.csv)."""
    from lightning.pytorch.loggers import CSVLogger

    from callbacks.run_layout import RunPaths

    paths = RunPaths(tmp_path / "runs", "exp", "real")
    for version, steps in enumerate((range(0, 30, 10), range(20, 50, 10))):
        logger = CSVLogger(save_dir=str(paths.log_dir), name="csv")
        for s in steps:
            logger.log_metrics({"train/loss": 1.0 / (s + 1), "train/psnr": 10.0 + s / 10}, step=s)
            logger.log_metrics({"val/loss": 2.0 / (s + 1), "val/psnr/all": 9.0 + s / 10, "epoch": version}, step=s)
        logger.save()
        assert Path(logger.log_dir).name == f"version_{version}"
    run = load_curves(paths.run_dir)
    assert run.series["train/loss"] == pytest.approx({s: 1.0 / (s + 1) for s in (0, 10, 20, 30, 40)})
    assert run.series["val/psnr/all"][40] == pytest.approx(13.0)
    assert main([str(paths.run_dir), "--out", str(tmp_path / "real.png")]) == 0


def test_learning_rates_and_the_gradient_norm_get_default_panels(tmp_path):
    run = tmp_path / "exp" / "lr"
    path = run / "logs" / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss,lr-AdamW/base,lr-AdamW/base/no_decay,train/grad_norm\n"
                    "0,9,1.0,1e-4,1e-4,3.0\n0,19,0.8,2e-4,2e-4,2.5\n")
    panels = default_panels([load_curves(run)])
    assert [p.title for p in panels] == ["train/loss", "learning rate", "train/grad_norm"]
    assert panels[1].columns == ["lr-AdamW/base", "lr-AdamW/base/no_decay"]  # one line per parameter group


def test_several_runs_are_named_once_below_the_panels_and_a_panel_names_only_its_columns(tmp_path):
    """Seven runs on one figure (the phases study's diffusion curves): a per-panel legend of run x column entries
    (28 in the PSNR panel) covered the panels. Now the runs are one figure legend outside every panel, and a panel's
    legend lists its columns once each, as line styles."""
    from callbacks.run_curves import curves_figure

    runs = [load_curves(_resumed_run(tmp_path, f"run{k}", offset=0.01 * k)) for k in range(7)]
    fig = curves_figure(runs, title="seven runs")
    axes = fig.get_axes()
    titles = [ax.get_title() for ax in axes]
    assert titles == ["train/loss", "val/loss", "PSNR (dB)"]
    psnr = axes[2]
    entries = [t.get_text() for t in psnr.get_legend().get_texts()]
    assert entries == ["train/psnr", "val/psnr/all", "val/psnr/real", "val/psnr_fg/all"]
    styles = {line.get_linestyle() for line in psnr.get_legend().get_lines()}
    assert len(styles) == 4, "each column its own line style"
    assert axes[0].get_legend() is None and axes[1].get_legend() is None  # one column: the colours say it all
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"run{k}" for k in range(7)]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in axes)
    # a single run keeps its panel legends of columns and no figure legend
    single = curves_figure(runs[:1])
    assert not single.legends
    assert [t.get_text() for t in single.get_axes()[2].get_legend().get_texts()] == entries
