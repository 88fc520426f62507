"""Training curves from a run's CSV logs: read every ``metrics.csv`` part, merge them by step, plot panels to a PNG.

The library behind ``python -m tools.plot`` (the CLI is only its argument parsing). It lives in ``tools/`` beside the
other glue of the tools (checkpoints.py, images.py) because it reads what ``tools.fit`` wrote after the fact and is
needed by no training code: ``lightning_modules/`` and ``callbacks/`` stay free of matplotlib, which is imported only
when a figure is drawn (reading and merging need only the standard library and the path resolver).

Where the files are: a run folder's parts are ``callbacks.run_layout.RunPaths.metric_files()``
(``logs/csv/version_<k>/metrics.csv``, one per ``tools.fit`` invocation, in write order); a CSV path is read alone.
Lightning's CSVLogger writes one row per logging call with empty cells for the metrics not logged then (a training
row and a validation row may share a step).

How parts merge (a resumed run): parts are read in write order; a part replaces the earlier parts' points from its
first step on — a resume from a checkpoint at step S re-logs S onwards, and what the interrupted invocation logged
after S belongs to a history the checkpoint no longer has. Within a part, a later value of a (metric, step) wins.
``step``, ``epoch`` and the time column are not metrics. Cells that are empty are "not logged"; ``nan`` / ``inf`` are values (a perfect view has infinite PSNR) and are drawn
as gaps. An empty part of a run folder is skipped with a warning; a run whose parts are all empty, a CSV given
alone that is empty, or a missing path is an error naming the path.

Default panels: ``train/loss``, ``val/loss``, one PSNR panel (``train/psnr``, ``val/psnr``, ``val/psnr/*`` per
kind, ``val/psnr_fg`` and ``val/psnr_fg/*``: the foreground-box PSNR), the diffusion stage's generated views against
copying the reference (``val/gen_psnr[_fg]``, ``val/copy_ref_psnr[_fg]``), the learning rate (``lr-*``: one line per
parameter group) and ``train/grad_norm``, each left out when no run logged it; x = step,
or wall time (``--x time``) when the CSV has a ``time`` / ``wall_time`` / ``timestamp`` column (seconds; drawn as
the time since the run's first row). ``metrics=[...]`` gives one panel per name instead (a name with ``*`` ``?``
``[`` is a pattern and its panel holds every match); a name no run part holds is an error naming it and the files.

Example:
    >>> from pathlib import Path
    >>> part = Path("metrics.csv")
    >>> _ = part.write_text("epoch,step,train/loss,val/loss\\n0,9,0.5,\\n0,9,,0.7\\n0,19,0.25,\\n")
    >>> run = load_curves(part)
    >>> run.label, run.series["train/loss"], run.series["val/loss"]
    ('metrics', {9: 0.5, 19: 0.25}, {9: 0.7})
    >>> [p.columns for p in default_panels([run])]
    [['train/loss'], ['val/loss']]
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("mvlift.curves")

STEP = "step"
TIME_COLUMNS = ("time", "wall_time", "timestamp")
NOT_METRICS = (STEP, "epoch", *TIME_COLUMNS)
PSNR_PANEL = re.compile(r"^(train/psnr|val/psnr(/[^/]+)?|val/psnr_fg(/[^/]+)?)$")
GEN_PANEL = re.compile(r"^val/(gen|copy_ref)_psnr(_fg)?$")  # the diffusion stage: its views vs copying the photo
_VERSION = re.compile(r"^version_\d+$")


class CurveError(ValueError):
    """A metrics file or column that cannot be read as asked (the message names the path / column)."""


@dataclasses.dataclass
class RunCurves:
    """One run's merged curves: ``series[metric] = {step: value}`` (steps ascending), ``time = {step: seconds}``
    when a wall-time column exists, and the files read (in write order)."""

    label: str
    files: list[Path]
    series: dict[str, dict[int, float]]
    time: dict[int, float] | None = None
    time_column: str | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.series)

    def xy(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x values, y values) of ``metric``; ``x="time"``: seconds since the run's first timed row (steps without
        a time are left out)."""
        points = self.series.get(metric, {})
        if x == "step":
            return [float(s) for s in points], list(points.values())
        if self.time is None:
            raise CurveError(f"run {self.label!r}: no wall-time column ({', '.join(TIME_COLUMNS)}) in "
                             f"{_names(self.files)}")
        t0 = min(self.time.values())
        keep = [s for s in points if s in self.time]
        return [self.time[s] - t0 for s in keep], [points[s] for s in keep]


@dataclasses.dataclass
class Panel:
    title: str
    columns: list[str]


def _names(files: Sequence[Path]) -> str:
    return ", ".join(str(f) for f in files)


def metric_files(source: str | Path) -> list[Path]:
    """The CSV parts of ``source``: a CSV file itself, or a run folder's ``logs/csv/version_<k>/metrics.csv`` in
    write order (``RunPaths.metric_files``). Errors name the path."""
    path = Path(source)
    if not path.exists():
        raise CurveError(f"{path}: no such run folder or CSV file")
    if path.is_file():
        return [path]
    from callbacks.run_layout import RunPaths

    files = RunPaths.from_run_dir(path).metric_files()
    if not files:
        raise CurveError(f"{path}: no metrics.csv under {path / 'logs' / 'csv'} (not a run folder of tools.fit, or "
                         "it has logged nothing yet)")
    return files


def default_label(path: Path) -> str:
    """A run folder's name; for ``<run>/logs/csv/version_<k>/metrics.csv`` ``<run>/version_<k>``; else the file's
    stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    parts = path.resolve().parts
    if len(parts) >= 5 and _VERSION.match(parts[-2]) and parts[-3] == "csv" and parts[-4] == "logs":
        return f"{parts[-5]}/{parts[-2]}"
    return path.stem


def read_part(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of one metrics.csv; raises CurveError naming the file when it is empty, has no ``step``
    column or no rows."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CurveError(f"{path}: cannot read it as CSV ({e})") from None
    if not columns:
        raise CurveError(f"{path}: empty metrics file (no header, no rows)")
    if STEP not in columns:
        raise CurveError(f"{path}: no {STEP!r} column (columns: {', '.join(columns)})")
    if not rows:
        raise CurveError(f"{path}: empty metrics file (a header but no rows)")
    return columns, rows


def _number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise CurveError(f"{path}, line {line}: {column} = {cell!r} is not a number") from None


def load_curves(source: str | Path, label: str | None = None) -> RunCurves:
    """Read and merge one run (a run folder or a CSV path); see the module docstring for the merge rule."""
    files = metric_files(source)
    parts = []
    for path in files:
        try:
            parts.append((path, *read_part(path)))
        except CurveError as e:
            if len(files) == 1 or "empty metrics file" not in str(e):
                raise
            log.warning("skipping %s", e)
    if not parts:
        raise CurveError(f"{source}: every metrics file is empty ({_names(files)})")
    series: dict[str, dict[int, float]] = {}
    times: dict[int, float] = {}
    time_column = None
    for path, columns, rows in parts:
        tcol = next((c for c in TIME_COLUMNS if c in columns), None)
        time_column = time_column or tcol
        parsed = []
        for line, row in enumerate(rows, start=2):
            cell = (row.get(STEP) or "").strip()
            if cell:
                parsed.append((int(_number(cell, path, line, STEP)), line, row))
        if not parsed:
            continue
        first = min(step for step, _, _ in parsed)
        for points in (*series.values(), times):  # this part replaces the history from its first step on
            for s in [s for s in points if s >= first]:
                del points[s]
        for step, line, row in parsed:
            for column in columns:
                cell = (row.get(column) or "").strip()
                if not cell or column == STEP or column == "epoch":
                    continue
                value = _number(cell, path, line, column)
                if column == tcol:
                    times[step] = value
                elif column not in TIME_COLUMNS:
                    series.setdefault(column, {})[step] = value
    for column in list(series):
        series[column] = dict(sorted(series[column].items()))
    return RunCurves(label or default_label(Path(source)), [p for p, _, _ in parts], series,
                     dict(sorted(times.items())) if times else None, time_column)


def default_panels(runs: Sequence[RunCurves]) -> list[Panel]:
    """``train/loss``, ``val/loss``, PSNR (``PSNR_PANEL``), learning rates and gradient norm, each when some run
    logged it."""
    present = list(dict.fromkeys(c for r in runs for c in r.columns))
    panels = [Panel(name, [name]) for name in ("train/loss", "val/loss") if name in present]
    psnr = sorted(c for c in present if PSNR_PANEL.match(c))
    if psnr:
        panels.append(Panel("PSNR (dB)", psnr))
    generated = sorted(c for c in present if GEN_PANEL.match(c))
    if generated:
        panels.append(Panel("generated vs copy-the-reference (dB)", generated))
    rates = sorted(c for c in present if c.startswith("lr-"))
    if rates:
        panels.append(Panel("learning rate", rates))
    if "train/grad_norm" in present:
        panels.append(Panel("train/grad_norm", ["train/grad_norm"]))
    if not panels:
        files = [f for r in runs for f in r.files]
        raise CurveError(f"none of train/loss, val/loss, train/psnr, val/psnr* is a column of {_names(files)}; "
                         "name the columns with --metrics")
    return panels


def select_panels(runs: Sequence[RunCurves], metrics: Sequence[str]) -> list[Panel]:
    """One panel per name (a pattern's panel: every match). Every exact name must be a column of every run; a
    pattern must match a column of some run. Errors name the column and the files."""
    panels = []
    for name in metrics:
        if any(ch in name for ch in "*?["):
            cols = sorted({c for r in runs for c in r.columns if fnmatch.fnmatchcase(c, name)})
            if not cols:
                files = [f for r in runs for f in r.files]
                raise CurveError(f"--metrics {name!r} matches no column of {_names(files)}")
            panels.append(Panel(name, cols))
            continue
        for r in runs:
            if name not in r.series:
                raise CurveError(f"--metrics {name!r} is not a column of run {r.label!r} ({_names(r.files)}; its "
                                 f"columns: {', '.join(r.columns) or 'none'})")
        panels.append(Panel(name, [name]))
    return panels


def _time_unit(span_s: float) -> tuple[str, float]:
    if span_s < 600:
        return "s", 1.0
    if span_s < 10 * 3600:
        return "min", 60.0
    return "h", 3600.0


# a panel's columns by line style when several runs share it (colour = run); beyond eight, styles repeat
COLUMN_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 3, 2, 3)))


def curves_figure(runs: Sequence[RunCurves], panels: Sequence[Panel] | None = None, x: str = "step",
                  title: str | None = None) -> Any:
    """The matplotlib Figure of ``plot_curves``. Several runs: one colour per run, named once in a legend below the
    panels, and one line style per column, named in its panel's legend (columns only, so a panel's legend stays as
    short as its column list). A single run: one colour per column, named in the panel's legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if x not in ("step", "time"):
        raise CurveError(f"x must be 'step' or 'time', got {x!r}")
    panels = list(panels) if panels is not None else default_panels(runs)
    unit, scale = "", 1.0
    if x == "time":
        for r in runs:
            if r.time is None:
                raise CurveError(f"--x time: run {r.label!r} has no wall-time column ({', '.join(TIME_COLUMNS)}) in "
                                 f"{_names(r.files)}")
        spans = [max(r.time.values()) - min(r.time.values()) for r in runs if r.time]
        unit, scale = _time_unit(max(spans, default=0.0))
    many = len(runs) > 1
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.6 * ncols, 3.9 * nrows + (0.35 * math.ceil(len(runs) / 4) if many else 0)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    drawn: set[int] = set()  # runs with a line somewhere: the figure legend names these
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        styled: dict[str, Any] = {}
        for i, (colour, run) in enumerate(zip(colours, runs)):
            for j, column in enumerate(panel.columns):
                if column not in run.series:
                    continue
                style = COLUMN_STYLES[j % len(COLUMN_STYLES)] if many else "-"
                xs, ys = run.xy(column, x)
                xs = [v / scale for v in xs]
                ys = [v if math.isfinite(v) else math.nan for v in ys]
                ax.plot(xs, ys, color=colour if many else f"C{j % 10}", linestyle=style, linewidth=1.4,
                        marker="." if len(xs) < 30 else None, label=None if many else (
                            column if len(panel.columns) > 1 else run.label))
                styled.setdefault(column, style)
                drawn.add(i)
        ax.set_title(panel.title)
        ax.set_xlabel("step" if x == "step" else f"wall time ({unit})")
        ax.grid(True, alpha=0.3)
        if many and len(styled) > 1:
            ax.legend([Line2D([], [], color="0.25", linestyle=st) for st in styled.values()], list(styled),
                      fontsize="small" if len(styled) <= 4 else "x-small")
        elif not many and ax.lines:
            ax.legend(fontsize="small" if len(ax.lines) <= 4 else "x-small")
    if many and drawn:
        shown = sorted(drawn)
        fig.legend([Line2D([], [], color=colours[i], linewidth=2) for i in shown], [runs[i].label for i in shown],
                   loc="outside lower center", ncols=min(4, len(shown)), fontsize="small", title="run")
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(runs: Sequence[RunCurves], out: str | Path, panels: Sequence[Panel] | None = None, x: str = "step",
                title: str | None = None) -> Path:
    """Draw ``panels`` (default: ``default_panels``) for ``runs`` into the PNG ``out`` (``curves_figure``: several
    runs are colours named below the panels, a panel's columns are line styles named in it). Non-finite values are
    gaps. Returns ``out``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CurveError(f"--out {out}: the figure is a PNG; name it *.png")
    fig = curves_figure(runs, panels, x, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


__all__ = ["COLUMN_STYLES", "GEN_PANEL", "NOT_METRICS", "PSNR_PANEL", "TIME_COLUMNS", "CurveError", "Panel",
           "RunCurves", "curves_figure", "default_label", "default_panels", "load_curves", "metric_files",
           "plot_curves", "read_part", "select_panels"]
