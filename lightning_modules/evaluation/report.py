"""The evaluation's files: results.json, results.csv, results.md, chart.png (PSNR and SSIM per view, one bar group per
view in rig order, one bar per checkpoint x data x rig row) and the image grids (formats: docs/ARCHITECTURE.md,
"Tool outputs"). Non-finite values (PSNR of a perfect prediction is +inf) are written as "inf" / "nan" in JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from geometry.images import CHAR_PX, labelled_grid
from lightning_modules.metrics import KIND_LABELS, KINDS

RESULTS_VERSION = 1
BASE_METRICS = ("psnr", "psnr_fg", "ssim", "ssim_fg", "iou", "lpips")
CSV_FIXED = ("checkpoint", "mode", "checkpoint_rig", "data", "rig", "rig_match", "rig_worst_angle_deg",
             "image_size", "scenes", "distinct_scenes", "skipped", "error", "checkpoint_path", "data_path", "grid")


def jsonable(x: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) become strings; tensors and paths plain values."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    return x


GRID_TILE_PX = 128  # the grids' tiles are at least this wide: 16-64 px renders stay readable


def label_words(text: str) -> list[str]:
    """The pieces ``wrap_label`` may put on separate lines: ``text`` broken after ``_``, ``-`` and spaces."""
    return [w for w in re.split(r"(?<=[_\- ])", str(text)) if w]


def grid_tile_px(size: int, labels: Sequence[str], minimum: int = GRID_TILE_PX) -> int:
    """The tile width of an evaluation grid of ``size`` px images: ``size`` times the smallest whole factor that
    reaches ``minimum`` px and fits the longest word of ``labels`` on one line (so a label breaks between words,
    never inside one)."""
    longest = max((len(w) for text in labels for w in label_words(text)), default=0)
    need = max(minimum, CHAR_PX * longest + 2 + 2)  # wrap_label's width is the tile's less 2 px
    return size * max(1, math.ceil(need / size))


def write_grid(path: Path, rows: list[Tensor], labels: list[str], row_labels: list[str],
               tile_labels: list[list[str]] | None = None) -> Path | None:
    """One PNG: a line per scene (labelled), columns ``labels``, each tile's own name when given. Tiles are upscaled
    by a whole factor with nearest-neighbour sampling (each pixel a block, nothing smoothed) to
    :func:`grid_tile_px`."""
    if not rows:
        return None
    images = torch.stack(rows).clamp(0, 1)  # [R, C, 3, H, W]
    r, c, _, h, w = images.shape
    factor = grid_tile_px(max(h, w), [*labels, *(x for t in tile_labels or [] for x in t)]) // max(h, w)
    if factor > 1:
        images = F.interpolate(images.flatten(0, 1), scale_factor=factor, mode="nearest").unflatten(0, (r, c))
    grid = labelled_grid(images, labels, row_labels, tile_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


DIGITS = {"psnr": 2, "psnr_fg": 2, "ssim": 4, "ssim_fg": 4, "iou": 4, "lpips": 4}
TITLES = {"psnr": "PSNR", "psnr_fg": "PSNR fg", "ssim": "SSIM", "ssim_fg": "SSIM fg", "iou": "IoU",
          "lpips": "LPIPS"}
AXIS_LABELS = {"psnr": "PSNR (dB)", "psnr_fg": "PSNR fg (dB)", "ssim": "SSIM (0-1)", "ssim_fg": "SSIM fg (0-1)",
               "iou": "IoU (0-1)", "lpips": "LPIPS (lower is better)"}  # the charts' y axes, with units


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in CSV_FIXED}
    for prefix, summary in (("", row.get("metrics")), ("generated/", row.get("generated_metrics")),
                            ("novel/", row.get("novel_metrics")), ("copy_ref/", row.get("copy_ref_metrics")),
                            ("generated_novel/", row.get("generated_novel_metrics")),
                            ("heldout/", row.get("heldout_metrics")),
                            ("heldout_copy_ref/", row.get("heldout_copy_ref_metrics"))):
        if not summary:
            continue
        names = [m for m in BASE_METRICS if m in summary["all"]]
        for m in names:
            out[f"{prefix}{m}"] = summary["all"][m]
            if f"{m}_empty" in summary["all"]:
                out[f"{prefix}{m}_empty"] = summary["all"][f"{m}_empty"]
        for group in ("kind", "source", "view"):
            items = summary[group].items()
            if group == "view":  # per-view columns in rig order, views the rig does not name after them
                items = sorted(items, key=lambda kv: _rig_position(row, kv[0]))
            for key, vals in items:
                for m in names:
                    out[f"{prefix}{m}/{key}" if group == "kind" else f"{prefix}{m}/{group}:{key}"] = vals[m]
    return out


def _rig_position(row: dict[str, Any], view: str) -> tuple[int, str]:
    order = row.get("rig_views") or []
    return (order.index(view), "") if view in order else (len(order), view)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [csv_row(r) for r in rows]
    columns = list(dict.fromkeys(k for line in lines for k in line))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: (_csv_value(v)) for k, v in line.items()})
    path.write_text(buf.getvalue())


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return jsonable(v) if not math.isfinite(v) else repr(v)
    return "" if v is None else v


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    ok_rows = [r for r in rows if r.get("metrics")]
    metrics = [m for m in BASE_METRICS if any(m in r["metrics"]["all"] for r in ok_rows)]
    kinds = [k for k in KINDS if any(k in r["metrics"]["kind"] for r in ok_rows)]
    s = results["settings"]
    lines = ["# mvlift evaluation", ""]
    mode = ", ".join(sorted({r["mode"] for r in rows})) or "-"
    sampled = bool(s.get("diffusion")) or any(r["mode"] == "diffusion" for r in rows)
    sampling = (f"; sampled with {s['steps']} {str(s.get('scheduler', 'ddim')).upper()} steps at guidance "
                f"{s['guidance']}" if sampled else "")
    lines.append(f"Mode: {mode}; split `{s['split']}`; up to {s['batches']} x {s['batch_size']} scenes per row; "
                 f"seed {s['seed']}; device `{s['device']}`" +
                 (f"; diffusion `{s['diffusion']}` ({s['diffusion_rig']})" if s.get("diffusion") else "") +
                 sampling + ("; EMA weights" if s.get("ema") else "") + ".")
    lines.append(f"LPIPS: {results['lpips']['note']}.")
    lines.append("")
    chained = any(r.get("mode") == "chained" for r in rows)
    head = ["checkpoint", "data", "rig", "checkpoint rig", "rig match"]
    head += ["diffusion rig match"] if chained else []
    head += ["scenes"]
    head += [TITLES[m] for m in metrics]
    head += [f"{TITLES[m]} {KIND_LABELS.get(k, k)}" for k in kinds for m in metrics]
    if any(r.get("generated_metrics") for r in ok_rows):
        head += [f"generated {TITLES[m]}" for m in metrics]
    compared = [m for m in ("psnr", "psnr_fg") if any(m in (r.get("copy_ref_metrics") or {}).get("all", {})
                                                     for r in ok_rows)]
    head += [f"{who} {TITLES[m]}" for m in compared for who in ("novel", "copy-ref")]
    heldout = [m for m in BASE_METRICS if any(m in (r.get("heldout_metrics") or {}).get("all", {}) for r in ok_rows)]
    head += [f"held-out {TITLES[m]}" for m in heldout]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        match = "yes" if r.get("rig_match") else f"**no** ({r.get('rig_worst_angle_deg', 0):.1f}°)"
        cells = [r["checkpoint"], r["data"], r.get("rig", "?"), r.get("checkpoint_rig", "?"), match]
        if chained:
            d_match = r.get("diffusion_rig_match")
            cells.append("—" if d_match is None else ("yes" if d_match else
                                                      f"**no** ({r.get('diffusion_rig', '?')}, allowed)"))
        if not r.get("metrics"):
            cells += [f"error: {r.get('error', '?')}".replace("|", "/").replace("\n", " ")[:200]]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        m_all, m_kind = r["metrics"]["all"], r["metrics"]["kind"]
        cells.append(str(r["scenes"]))
        cells += [fmt(m_all.get(m), DIGITS[m]) for m in metrics]
        cells += [fmt(m_kind.get(k, {}).get(m), DIGITS[m]) for k in kinds for m in metrics]
        if any(x.get("generated_metrics") for x in ok_rows):
            g = (r.get("generated_metrics") or {}).get("all", {})
            cells += [fmt(g.get(m), DIGITS[m]) for m in metrics]
        for m in compared:
            cells += [fmt((r.get(key) or {}).get("all", {}).get(m), DIGITS[m])
                      for key in ("novel_metrics", "copy_ref_metrics")]
        cells += [fmt((r.get("heldout_metrics") or {}).get("all", {}).get(m), DIGITS[m]) for m in heldout]
        lines.append("| " + " | ".join(cells) + " |")
    order = {v: i for r in reversed(ok_rows) for i, v in enumerate(r.get("rig_views") or [])}
    views = sorted(dict.fromkeys(v for r in ok_rows for v in r["metrics"]["view"]),
                   key=lambda v: (order.get(v, len(order)), v))
    if views:
        lines += ["", "## Per view (PSNR / SSIM)", ""]
        head = ["checkpoint", "data", "rig", *views]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in ok_rows:
            pv = r["metrics"]["view"]
            cells = [r["checkpoint"], r["data"], r["rig"]]
            cells += [f"{fmt(pv[v].get('psnr'), 2)} / {fmt(pv[v].get('ssim'), 3)}" if v in pv else "—"
                      for v in views]
            lines.append("| " + " | ".join(cells) + " |")
    if any((r.get("metrics") or {}).get("view") for r in ok_rows):
        lines += ["", "![PSNR and SSIM per view](chart.png)"]
    lines += ["", "## Notes", ""]
    lines.append("- Rows are checkpoint x data x rig. *rig* is the data's stage rig for the row (`--rig`; the data "
                 "config's rig when none is given): procedural scenes are rendered from it; sources with camera files "
                 "keep their cameras. *rig match* compares the rig the checkpoint was trained on with it (worst "
                 "per-view angle when they differ) and is reported, not enforced.")
    lines.append("- Scores: mean over a scene's evaluated views, then over scenes; PSNR in dB (data range 1), SSIM "
                 "with a Gaussian window 11 / sigma 1.5.")
    if "psnr_fg" in metrics:
        lines.append("- PSNR fg: PSNR over the pixels inside the axis-aligned bounding box of the ground truth's "
                     "alpha > 0.5 (the background outside the subject's box does not count); views without "
                     "foreground are left out of the means and counted in the row notes.")
    if heldout:
        lines.append("- held-out: over the data's views beyond the rig's (chained rows: `--heldout-views`; "
                     "reconstruction rows: the scored views the rig does not name), cameras no generated view had.")
    if compared:
        lines.append("- novel / copy-ref (diffusion rows): over the rig's views other than the reference view itself, "
                     "the generated views and the baseline that copies the reference into every view; a model that "
                     "learned the other views beats the copy.")
    for r in rows:
        cams = "; ".join(f"{k}: {v}" for k, v in (r.get("cameras") or {}).items())
        extra = []
        if r.get("skipped"):
            extra.append(f"{r['skipped']} bad samples skipped")
        empty = ((r.get("metrics") or {}).get("all") or {}).get("psnr_fg_empty")
        if empty:
            extra.append(f"{empty} views without foreground (left out of PSNR fg)")
        if r.get("distinct_scenes") is not None and r.get("distinct_scenes") != r.get("scenes"):
            extra.append(f"{r['distinct_scenes']} distinct of {r['scenes']} scenes")
        if r.get("grid"):
            extra.append(f"grid `{r['grid']}`")
        if r.get("shared_settings_differ"):
            extra.append("trained with other settings than this data's: " + ", ".join(
                f"{k} {a} (checkpoint) vs {b} (data)" for k, (a, b) in r["shared_settings_differ"].items()))
        if r.get("error"):
            extra.append(f"ERROR: {r['error']}")
        lines.append(f"- `{r['checkpoint']}` x `{r['data']}` x `{r.get('rig', '?')}` ({r.get('mode', '?')}): "
                     f"cameras — {cams or '?'}" + (f"; {'; '.join(extra)}" if extra else ""))
    return "\n".join(lines) + "\n"


def write_chart(path: Path, rows: list[dict[str, Any]], metrics: tuple[str, ...] = ("psnr", "ssim")) -> Path | None:
    """PSNR and SSIM per view of every evaluated row as grouped bars (views in rig order; a view a row's rig lacks is
    left empty), axes with their units, the rows' legend below the panels; None when no row has per-view scores."""
    fig = chart_figure(rows, metrics)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def chart_figure(rows: list[dict[str, Any]], metrics: tuple[str, ...] = ("psnr", "ssim")) -> Any:
    """:func:`write_chart`'s matplotlib figure (None when no row has per-view scores): one panel per metric, y in
    ``AXIS_LABELS``' units, the legend a figure legend under the panels, never over the bars."""
    ok = [r for r in rows if (r.get("metrics") or {}).get("view")]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views: list[str] = []
    for r in ok:
        for v in sorted(r["metrics"]["view"], key=lambda name, r=r: _rig_position(r, name)):
            if v not in views:
                views.append(v)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 1.1 * len(views) + 2), 3.2 * len(metrics)),
                             squeeze=False)
    width = 0.8 / len(ok)
    for ax, m in zip(axes[:, 0], metrics):
        for k, r in enumerate(ok):
            per_view = r["metrics"]["view"]
            ys = [per_view.get(v, {}).get(m, math.nan) for v in views]
            ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else math.nan for y in ys]
            ax.bar([i + (k - (len(ok) - 1) / 2) * width for i in range(len(views))], ys, width,
                   label=f"{r['checkpoint']} x {r['data']} x {r['rig']}")
        ax.set_xticks(range(len(views)), views, rotation=30, ha="right")
        ax.set_ylabel(AXIS_LABELS.get(m, TITLES.get(m, m)))
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("view")
    axes[0, 0].set_title("per view: checkpoint x data x rig")
    fig.tight_layout()
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(2, len(names)), frameon=False)  # below the panels (saved with bbox_inches="tight")
    return fig


CHAIN_METRICS = ("psnr", "psnr_fg", "ssim_fg", "iou")


def row_label(row: dict[str, Any]) -> str:
    """A row's model: ``DIFFUSION -> GSLRM`` for chained rows, the checkpoint's label otherwise."""
    return f"{row['diffusion']} -> {row['checkpoint']}" if row.get("diffusion") else str(row["checkpoint"])


def chain_scores(row: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(metrics, where) a row is compared by in the chain's panel: its held-out cameras' scores when it has them
    (``--heldout-views``; reconstruction rows whose scored views lie beyond the rig), else all its scored views."""
    held = (row.get("heldout_metrics") or {}).get("all")
    return (held, "held-out cameras") if held else ((row.get("metrics") or {}).get("all") or {}, "scored views")


def write_chain_chart(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = CHAIN_METRICS,
                      title: str | None = None) -> Path | None:
    """The chain's panel: one bar chart per metric (PSNR, PSNR fg, SSIM fg, silhouette IoU by default), one bar group
    per model (:func:`row_label`: a diffusion model with a GS-LRM, or a GS-LRM alone), one bar per data config within
    it (e.g. realistic and clean photos of the same scenes: the gap between them is the domain gap), scores from
    :func:`chain_scores`. Rows of several results files may be given together. None when no row has a score."""
    ok = [r for r in rows if chain_scores(r)[0]]
    metrics = tuple(m for m in metrics if any(m in chain_scores(r)[0] for r in ok))
    if not ok or not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row_label(r) for r in ok))
    datas = list(dict.fromkeys(str(r["data"]) for r in ok))
    value = {(row_label(r), str(r["data"])): chain_scores(r)[0] for r in ok}
    where = sorted({chain_scores(r)[1] for r in ok})
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.9 * len(models) * max(1, len(datas)) / 2 + 3),
                                                        2.8 * len(metrics)), squeeze=False)
    width = 0.8 / len(datas)
    for ax, m in zip(axes[:, 0], metrics):
        for k, d in enumerate(datas):
            ys = [(value.get((model, d)) or {}).get(m, math.nan) for model in models]
            ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else math.nan for y in ys]
            ax.bar([i + (k - (len(datas) - 1) / 2) * width for i in range(len(models))], ys, width, label=d)
        ax.set_xticks(range(len(models)), models, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(AXIS_LABELS.get(m, TITLES.get(m, m)))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(title or f"the chain's metrics ({' / '.join(where)})")
    fig.tight_layout()
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, title="data", title_fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(names)), frameon=False)  # below the panels
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n")
    write_csv(out / "results.csv", results["rows"])
    (out / "results.md").write_text(markdown(results))
    write_chart(out / "chart.png", results["rows"])


__all__ = ["AXIS_LABELS", "BASE_METRICS", "CHAIN_METRICS", "CSV_FIXED", "GRID_TILE_PX", "RESULTS_VERSION",
           "chain_scores", "chart_figure", "csv_row", "fmt", "grid_tile_px", "jsonable", "label_words", "markdown",
           "row_label", "write_chain_chart", "write_chart", "write_csv", "write_grid", "write_results"]
