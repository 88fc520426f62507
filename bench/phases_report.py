"""The Phases 1-3 study's report (issue 29): the evaluations of bench/phases.py -> one markdown table with the domain
gap of every row, the chain's panel, training curves and a grid of photo -> views -> renders.

    python -m bench.phases_report [--root runs] [--out out/report] [--profile gpu|toy]

Reads ROOT/phases/eval/*/results.json (tools.evaluate) and the runs' CSV logs; writes into OUT:
    phases.md        the table (rows x {realistic, clean} photos: PSNR, PSNR fg, SSIM fg, silhouette IoU at the
                     held-out cameras; the gap = clean-photo PSNR fg - realistic-photo PSNR fg, both against the
                     clean truth), the targets, the per-seed values, what was not run (with its command), findings
    phases.json      the same numbers
    chain.png        the chain's panel (lightning_modules.evaluation.report.write_chain_chart: tools.plot --chain)
    curves_diffusion.png, curves_gslrm.png    training curves (callbacks.run_curves: tools.plot)
    grid_realistic.png   three held-out realistic photos through the best chain: photo | generated views | renders |
                     clean truth (the evaluation's own grid of that row)
Rows of several seeds show their mean; the seeds' values are listed after the table. A row no evaluation wrote says
"not run", with the study's command that makes it (its settings from the environment) and the jobs it would run, in
order: what is missing of the runs, data and evaluation the row needs. The findings are measured differences only;
what the user should do is written by whoever reads them (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.phases import HELDOUT, PROFILES, ROWS, Job, Study

METRICS = ("psnr", "psnr_fg", "ssim_fg", "iou")
TITLES = {"psnr": "PSNR", "psnr_fg": "PSNR fg", "ssim_fg": "SSIM fg", "iou": "IoU"}
DIGITS = {"psnr": 2, "psnr_fg": 2, "ssim_fg": 3, "iou": 3}
DATAS = tuple(HELDOUT)  # realistic, clean
GAP = "psnr_fg"  # the gap is measured in the target metric
TARGET_DB, TARGET_IOU = 4.0, 0.80


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) else math.nan


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def fmt(x: float, digits: int = 2, sign: bool = False) -> str:
    return "—" if math.isnan(x) else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def load_results(study: Study) -> dict[str, list[dict[str, Any]]]:
    """{evaluation name: its rows} of every results.json under ROOT/phases/eval/."""
    out = {}
    for path in sorted((study.dir / "eval").glob("*/results.json")):
        out[path.parent.name] = json.loads(path.read_text())["rows"]
    return out


def _by_data(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """{data label: {metric: value}} of the rows' summary ``key`` (``all`` group), errors left out."""
    return {r["data"]: {m: _num((r.get(key) or {}).get("all", {}).get(m)) for m in METRICS}
            for r in rows if r.get(key)}


def _reproduce(study: Study, evaluation: Job) -> str:
    """How to make an evaluation not run: the study's step that runs it with the runs and data it needs that are
    missing (repeated steps skip what is there), the study's settings from the environment, and those jobs' names
    (``python -m bench.phases commands`` prints their commands)."""
    missing = [*study.missing_inputs(evaluation), evaluation]
    phase3 = {job.name for group in study.steps("phase3", tuple(ROWS)) for job in group()}
    step = "phase3" if all(job.name in phase3 for job in missing) else "all"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                   if k.startswith("PHASES_") and k != "PHASES_ROWS")  # every row's jobs: what is there is skipped
    command = f"{env + ' ' if env else ''}python -m bench.phases {step} --profile {study.p.name}"
    return f"`{command}` runs {' -> '.join(job.name for job in missing)}"


def collect(study: Study) -> dict[str, Any]:
    """The table's rows: per model, per seed, per data {metric: value} (and the commands of what is missing)."""
    results = load_results(study)
    evals = {job.name.removeprefix("eval_"): job for job in study.plan() if job.tool == "tools.evaluate"}
    table: list[dict[str, Any]] = []
    missing: list[dict[str, str]] = []

    def add(key: str, label: str, group: str, per_seed: dict[int, dict[str, dict[str, float]]], where: str,
            commands: list[str]) -> None:
        table.append({"key": key, "row": label, "group": group, "where": where, "seeds": per_seed,
                      "mean": {d: {m: _mean([s.get(d, {}).get(m, math.nan) for s in per_seed.values()])
                                   for m in METRICS} for d in DATAS}, "not_run": not per_seed})
        missing.extend({"row": label, "command": c} for c in commands)  # a whole row or a seed of it

    copy: dict[str, dict[str, float]] = {}
    for row, (_, what) in ROWS.items():
        for phase, seeds in (("phase2", study.p.seeds), ("phase3", study.p.phase3_seeds)):
            per_seed, commands = {}, []
            for seed in seeds:
                name = f"{row}_s{seed}_{phase}"
                rows = [r for r in results.get(name, []) if r.get("heldout_metrics")]
                if rows:
                    per_seed[seed] = {d: v for d, v in _by_data(rows, "heldout_metrics").items()}
                    copy = copy or _by_data(rows, "heldout_copy_ref_metrics")
                elif name in evals:  # not evaluated
                    commands.append(_reproduce(study, evals[name]))
            gslrm = "Phase-2 GS-LRM (synthetic views)" if phase == "phase2" else "its Phase-3 GS-LRM"
            add(f"{row}_{phase}", f"({row}) {what} -> {gslrm}", "chain", per_seed, "held-out cameras", commands)
    base = [r for r in results.get("views_phase2", []) if r.get("heldout_metrics")]
    add("views_phase2", "baseline: the photographed rig views -> Phase-2 GS-LRM", "baseline",
        {0: _by_data(base, "heldout_metrics")} if base else {}, "held-out cameras",
        [_reproduce(study, evals["views_phase2"])] if "views_phase2" in evals and not base else [])
    add("copy", "baseline: the photo copied to every view", "baseline", {0: copy} if copy else {},
        "held-out cameras", [])
    for row, (_, what) in ROWS.items():
        per_seed = {}
        for seed in study.p.seeds:
            rows = [r for r in results.get(f"{row}_s{seed}_phase2", []) if r.get("generated_novel_metrics")]
            if rows:
                per_seed[seed] = _by_data(rows, "generated_novel_metrics")
        add(f"{row}_generated", f"baseline: ({row})'s generated views themselves", "generated", per_seed,
            "the rig's 5 novel views", [])
    for t in table:
        t["gap"] = {s: v.get("clean", {}).get(GAP, math.nan) - v.get("realistic", {}).get(GAP, math.nan)
                    for s, v in t["seeds"].items()}
        t["gap_mean"] = _mean(list(t["gap"].values()))
    return {"rows": table, "not_run": missing, "results": results}


def best_chain(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    chains = [t for t in table if t["group"] == "chain" and not t["not_run"]]
    chains = [t for t in chains if not math.isnan(t["mean"]["realistic"][GAP])]
    return max(chains, key=lambda t: t["mean"]["realistic"][GAP]) if chains else None


def tied_with(table: list[dict[str, Any]], best: dict[str, Any]) -> list[dict[str, Any]]:
    """The other chain rows whose realistic-photo PSNR fg lies within the larger seed spread of theirs and the best's
    (both with several seeds): the best row is not measurably better than these."""
    return [t for t in table if t is not best and t["group"] == "chain" and not t["not_run"]
            and compare_rows(best, t)[2] == NO_EFFECT]


def markdown(study: Study, data: dict[str, Any]) -> str:
    table = data["rows"]
    lines = ["# The user's experiment plan (Phases 1-3): results", "",
             (f"Profile `{study.p.name}`; seeds of the Phase-1 rows {list(study.p.seeds)}, of Phase 3 "
             f"{list(study.p.phase3_seeds)}. Held-out scenes: procedural mice of seed 7 (configs/studies/phases/"
             "heldout_*.yaml), scored at two held-out cameras (views no rig view has) against the clean truth of each "
             "scene; realistic photos are captures of the same scenes. Gap = clean-photo PSNR fg minus "
             "realistic-photo PSNR fg (dB), the same model against the same truth: what the remedies exist to "
             "shrink."), ""]
    head = ["row", "n seeds"] + [f"{d}: {TITLES[m]}" for d in DATAS for m in METRICS] + ["gap (PSNR fg)", "scored at"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        if t["not_run"]:
            cells = [t["row"], "0"] + ["not run"] * (len(DATAS) * len(METRICS)) + ["not run", t["where"]]
        else:
            cells = [t["row"], str(len(t["seeds"]))]
            cells += [fmt(t["mean"][d][m], DIGITS[m]) for d in DATAS for m in METRICS]
            cells += [fmt(t["gap_mean"], 2), t["where"]]
        lines.append("| " + " | ".join(cells) + " |")
    seeded = [t for t in table if len(t["seeds"]) > 1]
    if seeded:
        lines += ["", "Per seed (realistic-photo PSNR fg; gap):", ""]
    for t in seeded:
        lines.append(f"- {t['row']}: " + "; ".join(
            f"seed {s}: {fmt(v.get('realistic', {}).get(GAP, math.nan))} dB, gap {fmt(t['gap'][s])}"
            for s, v in sorted(t["seeds"].items())))
    best = best_chain(table)
    copy = next((t for t in table if t["key"] == "copy" and not t["not_run"]), None)
    lines += ["", "## Targets (held-out realistic photos)", ""]
    if best and copy:
        gain = best["mean"]["realistic"][GAP] - copy["mean"]["realistic"][GAP]
        iou = best["mean"]["realistic"]["iou"]
        lines.append(f"- best chain: {best['row']}: PSNR fg {fmt(best['mean']['realistic'][GAP])} dB, "
                     f"{fmt(gain, sign=True)} dB over copying the photo (target +{TARGET_DB:g}): "
                     f"**{'met' if gain >= TARGET_DB else 'not met'}**; silhouette IoU {fmt(iou, 3)} (target "
                     f"{TARGET_IOU:g}): **{'met' if iou >= TARGET_IOU else 'not met'}**.")
        tied = tied_with(table, best)
        if tied:
            lines.append(f"- not measurably below the best chain (within the larger seed spread of the two): "
                         f"{'; '.join(t['row'] for t in tied)}.")
    else:
        lines.append("- not measured (no chain row or no copy baseline was evaluated).")
    lines += ["", "## Findings (measured differences, realistic-photo PSNR fg at the held-out cameras)", ""]
    lines += findings(table) or ["- none: too few rows were evaluated."]
    if data["not_run"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {m['row']}: {m['command']}" for m in data["not_run"]]
    lines += ["", "![the chain's panel](chain.png)", "", "![diffusion curves](curves_diffusion.png)", "",
              "![GS-LRM curves](curves_gslrm.png)", "", "![three held-out realistic photos](grid_realistic.png)", ""]
    return "\n".join(lines)


def realistic_fg(t: dict[str, Any]) -> tuple[float, float]:
    """A row's realistic-photo PSNR fg: the seeds' mean and spread (max - min; NaN with one seed)."""
    vals = [v.get("realistic", {}).get(GAP, math.nan) for v in t["seeds"].values()]
    vals = [v for v in vals if not math.isnan(v)]
    return _mean(vals), (max(vals) - min(vals) if len(vals) > 1 else math.nan)


NO_EFFECT = "so no measured effect"


def verdict(diff: float, spread: float) -> str:
    """Whether a difference between two rows is more than their seeds disagree among themselves."""
    if math.isnan(spread):
        return "one seed, so no spread to judge it by"
    return NO_EFFECT if abs(diff) <= spread else "so a measured effect"


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, str]:
    """Realistic-photo PSNR fg of row ``a`` minus row ``b``, the larger seed spread, the verdict: judged only when
    both rows have several seeds (one row's spread says nothing of how far the other's single seed may lie from its
    own mean)."""
    (va, sa), (vb, sb) = realistic_fg(a), realistic_fg(b)
    spread = math.nan if math.isnan(sa) or math.isnan(sb) else max(sa, sb)
    return va - vb, spread, verdict(va - vb, spread)


def findings(table: list[dict[str, Any]]) -> list[str]:
    """Differences between rows with the seeds' spread beside them and whether the difference exceeds it (no
    recommendation: that is the reader's)."""
    by = {t["key"]: t for t in table if not t["not_run"]}
    out = []

    for remedy in ("ii", "iii"):
        a, b = f"{remedy}_phase2", "i_phase2"
        if a in by and b in by:
            diff, spread, judged = compare_rows(by[a], by[b])
            out.append(f"- ({remedy}) vs (i), Phase 2: {fmt(diff, sign=True)} dB (seed spread up to "
                       f"{fmt(spread)} dB, {judged}); gap {fmt(by[a]['gap_mean'])} vs {fmt(by[b]['gap_mean'])} dB.")
    for row in ROWS:
        a, b = f"{row}_phase3", f"{row}_phase2"
        if a in by and b in by:
            n = len(by[a]["seeds"])
            diff, spread, judged = compare_rows(by[a], by[b])
            out.append(f"- ({row}) Phase 3 vs Phase 2: {fmt(diff, sign=True)} dB ({n} seed{'s' if n > 1 else ''} of "
                       f"Phase 3; seed spread up to {fmt(spread)} dB, {judged}); gap {fmt(by[a]['gap_mean'])} vs "
                       f"{fmt(by[b]['gap_mean'])} dB.")
    if "views_phase2" in by and "i_phase2" in by:
        out.append(f"- the photographed rig views into the Phase-2 GS-LRM (the user's Phase-2 baseline): "
                   f"{fmt(realistic_fg(by['views_phase2'])[0])} dB; chain (i): "
                   f"{fmt(realistic_fg(by['i_phase2'])[0])} dB.")
    return out


def curves(study: Study, out: Path) -> list[Path]:
    """Training curves of the diffusion runs and of the GS-LRMs (tools.plot's library), when they logged."""
    from callbacks.run_curves import CurveError, default_panels, load_curves, plot_curves

    written = []
    for name, pattern in (("curves_diffusion.png", "diffusion_*"), ("curves_gslrm.png", "gslrm_*")):
        runs = []
        for run in sorted(study.dir.glob(pattern)):
            try:
                runs.append(load_curves(run))
            except CurveError:
                continue
        if runs:
            written.append(plot_curves(runs, out / name, default_panels(runs), title=f"phases: {pattern}"))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phases_report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--root", type=Path, default=Path("runs"))
    p.add_argument("--out", type=Path, default=Path("out/report"))
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu", help="the study's seeds and commands")
    args = p.parse_args(argv)
    study = Study(PROFILES[args.profile](), args.root, args.out.parent)
    data = collect(study)
    args.out.mkdir(parents=True, exist_ok=True)
    from lightning_modules.evaluation.report import jsonable, write_chain_chart

    all_rows = [r for rows in data["results"].values() for r in rows]
    write_chain_chart(all_rows, args.out / "chain.png", METRICS,
                      "the chain at held-out cameras: realistic vs clean photos")
    curves(study, args.out)
    best = best_chain(data["rows"])
    if best is not None:
        seed = min(best["seeds"])
        name = f"{best['key'].split('_')[0]}_s{seed}_{best['key'].split('_')[1]}"
        row = next((r for r in data["results"].get(name, []) if r.get("data") == "realistic" and r.get("grid")), None)
        if row is not None:
            shutil.copyfile(study.dir / "eval" / name / row["grid"], args.out / "grid_realistic.png")
    text = markdown(study, data)
    (args.out / "phases.md").write_text(text)
    (args.out / "phases.json").write_text(json.dumps(jsonable({k: v for k, v in data.items() if k != "results"}),
                                                     indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
