"""Scores of an evaluation: per-view metrics and their group means (all / per kind / per source / per view).

Example:
    >>> s = summarize([{"kind": "real", "source": "a", "views": ["front"], "psnr": [20.0]}], ["psnr"])
    >>> s["all"]["psnr"], s["kind"]["real"]["n"]
    (20.0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_modules.metrics import KINDS, UNDEFINED_AS_NAN, view_metrics

NOVEL_METRICS = ("psnr", "psnr_fg", "ssim")  # diffusion rows: generated vs copy-the-reference, on the novel views


def score_views(pred: Tensor, target: Tensor, lpips: torch.nn.Module | None = None, alpha: Tensor | None = None
                ) -> dict[str, Tensor]:
    """Per-view metrics {"psnr", "ssim"[, "lpips"][, "psnr_fg"]} -> [B, V] for images [B, V, 3, H, W] in [0, 1]
    (the project's ``lightning_modules.metrics.view_metrics``; ``psnr_fg`` with the targets' alpha [B, V, 1, H, W])."""
    return view_metrics(pred, target, lpips, alpha=alpha)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _defined_mean(values: list[float]) -> float:
    """Mean over the non-NaN values (NaN = undefined, e.g. psnr_fg of a view without foreground); NaN if none."""
    return _mean([x for x in values if not math.isnan(x)])


def summarize(scenes: list[dict[str, Any]], metrics: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Group means over per-scene records {"kind", "source", "views": [names], "<prefix><metric>": [per view]}.

    Returns {"all": {metric: mean, "n": scenes}, "kind": {kind: {...}}, "source": {name: {...}},
    "view": {name: {...}}}; a scene's score is the mean over its views, a group's the mean over its scenes.
    Metrics in ``UNDEFINED_AS_NAN`` (psnr_fg) leave NaN views out (a scene's score is the mean over its other views;
    a scene without any is left out of the group) and count them: ``"<metric>_empty"`` = the group's NaN views.
    """
    def scene_score(values: list[float], m: str) -> float:
        return _defined_mean([float(x) for x in values]) if m in UNDEFINED_AS_NAN else float(np.mean(values))

    def group(records: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in metrics:
            scores = [scene_score(r[prefix + m], m) for r in records]
            if m in UNDEFINED_AS_NAN:
                out[m] = _defined_mean(scores)
                out[f"{m}_empty"] = sum(math.isnan(float(x)) for r in records for x in r[prefix + m])
            else:
                out[m] = _mean(scores)
        out["n"] = len(records)
        return out

    summary: dict[str, Any] = {"all": group(scenes), "kind": {}, "source": {}, "view": {}}
    for kind in KINDS:
        sel = [s for s in scenes if s["kind"] == kind]
        if sel:
            summary["kind"][kind] = group(sel)
    for name in dict.fromkeys(s["source"] for s in scenes):
        summary["source"][name] = group([s for s in scenes if s["source"] == name])
    views: dict[str, dict[str, list[float]]] = {}
    for s in scenes:
        for i, v in enumerate(s["views"]):
            for m in metrics:
                views.setdefault(v, {}).setdefault(m, []).append(float(s[prefix + m][i]))
    for v, vals in views.items():
        summary["view"][v] = {"n": len(next(iter(vals.values())))}
        for m, x in vals.items():
            if m in UNDEFINED_AS_NAN:
                summary["view"][v].update({m: _defined_mean(x), f"{m}_empty": sum(math.isnan(y) for y in x)})
            else:
                summary["view"][v][m] = _mean(x)
    return summary


__all__ = ["NOVEL_METRICS", "score_views", "summarize"]
