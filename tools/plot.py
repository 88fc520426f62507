"""Plot training curves of one or more runs into one PNG.

    python -m tools.plot RUN_OR_CSV [[LABEL=]RUN_OR_CSV ...] --out FILE.png [--metrics a,b,c] [--x step|time]
        [--title TEXT]

RUN_OR_CSV is a run folder of ``tools.fit`` (``<root>/<experiment>/<run>``: all its ``logs/csv/version_<k>/
metrics.csv`` parts, merged by step — a resumed run is one curve) or one metrics CSV. Each run is one line per
metric, labelled with the run's folder name (or ``LABEL=``). Default panels: train/loss, val/loss and PSNR
(train/psnr, val/psnr, val/psnr/<kind>, val/psnr_fg[/<kind>]); ``--metrics`` names the columns instead, one panel
each (``val/psnr/*``: a pattern, one panel with every match). ``--x time`` puts wall time on the x axis when the
CSV has a time / wall_time / timestamp column. The reading, merging and drawing live in ``callbacks/run_curves.py``
(its docstring has the merge rule). Errors (a missing path, an empty CSV, a column not in the files) name the path
or the column and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from callbacks.run_curves import CurveError, default_label, default_panels, load_curves, plot_curves, select_panels
from lightning_modules.loading import Labelled, parse_labelled, unique_labels
from tools import log_to_stderr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.plot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_OR_CSV", help="[LABEL=]run folder or metrics CSV (several: "
                   "one line each)")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--metrics", default=None, help="comma-separated columns (or patterns), one panel each")
    p.add_argument("--x", choices=("step", "time"), default="step", help="x axis (time: needs a wall-time column)")
    p.add_argument("--title", default=None, help="figure title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()

    try:
        specs = []
        for spec in args.runs:
            lab = parse_labelled(spec)
            specs.append(lab if lab.path != Path(spec) else Labelled(default_label(lab.path), lab.path))
        runs = [load_curves(s.path, s.label) for s in unique_labels(specs)]
        names = [m.strip() for m in (args.metrics or "").split(",") if m.strip()]
        panels = select_panels(runs, names) if names else default_panels(runs)
        out = plot_curves(runs, args.out, panels, x=args.x, title=args.title)
    except (CurveError, ValueError) as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(panels)} panels: {'; '.join(p.title for p in panels)}; runs: "
          f"{', '.join(r.label for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
