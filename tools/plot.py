"""Plot training curves of one or more runs into one PNG.

    python -m tools.plot RUN_OR_CSV [[LABEL=]RUN_OR_CSV ...] --out FILE.png [--metrics a,b,c] [--x step|time]
        [--title TEXT]
    python -m tools.plot --chain EVAL [--chain EVAL ...] --out FILE.png [--metrics psnr,psnr_fg,ssim_fg,iou]

RUN_OR_CSV is a run folder of ``tools.fit`` (``<root>/<experiment>/<run>``: all its ``logs/csv/version_<k>/
metrics.csv`` parts, merged by step — a resumed run is one curve) or one metrics CSV. Each run is one line per
metric, labelled with the run's folder name (or ``LABEL=``). Default panels: train/loss, val/loss and PSNR
(train/psnr, val/psnr, val/psnr/<kind>, val/psnr_fg[/<kind>]); ``--metrics`` names the columns instead, one panel
each (``val/psnr/*``: a pattern, one panel with every match). ``--x time`` puts wall time on the x axis when the
CSV has a time / wall_time / timestamp column. The reading, merging and drawing live in ``callbacks/run_curves.py``
(its docstring has the merge rule). A diffusion run's default panels include its generated views against copying the
reference (``val/gen_psnr``, ``val/copy_ref_psnr``, and their ``_fg``).

``--chain EVAL`` (a ``tools.evaluate`` results folder or its results.json; several are drawn together) draws the
chain's panel instead of curves: per metric (PSNR, PSNR fg, SSIM fg, silhouette IoU; ``--metrics`` to choose) one
bar group per model — ``DIFFUSION -> GSLRM`` for chained rows, the checkpoint otherwise — and one bar per data
config (realistic and clean photos of the same scenes side by side: their difference is the domain gap), at the
held-out cameras when the rows scored them (``--heldout-views``) (``lightning_modules.evaluation.report.
write_chain_chart``). Errors (a missing path, an empty CSV, a column not in the files) name the path
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
    p.add_argument("runs", nargs="*", metavar="RUN_OR_CSV", help="[LABEL=]run folder or metrics CSV (several: "
                   "one line each)")
    p.add_argument("--chain", action="append", default=[], type=Path, metavar="EVAL",
                   help="tools.evaluate results folder or results.json: draw the chain's panel (bars) instead")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--metrics", default=None, help="comma-separated columns (or patterns), one panel each")
    p.add_argument("--x", choices=("step", "time"), default="step", help="x axis (time: needs a wall-time column)")
    p.add_argument("--title", default=None, help="figure title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()

    if bool(args.runs) == bool(args.chain):
        print("plot: error: give run folders / CSVs (curves) or --chain results (the chain's panel), not both or "
              "neither", file=sys.stderr)
        return 2
    if args.chain:
        return plot_chain(args)
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


def plot_chain(args: argparse.Namespace) -> int:
    """The chain's panel of ``--chain`` results (module docstring)."""
    import json

    from lightning_modules.evaluation.report import CHAIN_METRICS, write_chain_chart

    rows = []
    for spec in args.chain:
        path = spec / "results.json" if spec.is_dir() else spec
        try:
            rows += json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            print(f"plot: error: {path}: not a tools.evaluate results.json ({e})", file=sys.stderr)
            return 2
    metrics = tuple(m.strip() for m in (args.metrics or ",".join(CHAIN_METRICS)).split(",") if m.strip())
    if args.out.suffix.lower() != ".png":
        print(f"plot: error: --out {args.out}: the figure is a PNG; name it *.png", file=sys.stderr)
        return 2
    out = write_chain_chart(rows, args.out, metrics, args.title)
    if out is None:
        print(f"plot: error: no evaluated row of {', '.join(map(str, args.chain))} has any of {', '.join(metrics)}",
              file=sys.stderr)
        return 2
    print(f"wrote {out} (the chain's panel: {len(rows)} rows; {', '.join(metrics)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
