"""Checkpoint evaluation runs: every checkpoint x data set x rig, one table.

    python -m tools.evaluate --ckpt [LABEL=]CKPT [--ckpt ...] --data [LABEL=]CONFIG [--data ...] [--rig NAME ...]
        --out DIR [--batches 4] [--batch-size 2] [--device cpu|cuda] [--split val|train] [--seed 0]
        [--diffusion CKPT] [--allow-rig-mismatch] [--steps 50] [--guidance 3.0] [--scheduler ddim]
        [--reference-view 0] [--num-input-views N] [--chain-input-views all|0,1,...] [--ema]
        [--lpips-weights FILE --vgg-weights FILE] [--grid-scenes 4] [--num-workers 0] [--trust-checkpoint]

A checkpoint is a Lightning ``.ckpt`` or an export folder; its stage comes from its metadata
(``checkpoint["mvlift"]["stage"]``, the export's mvlift.json / config.json). A ``.ckpt`` is read without unpickling
code (``weights_only``, ``lightning_modules.artifacts``): one that needs more is refused naming the file and the
types it asks for; ``--trust-checkpoint`` loads such files anyway (only files you trust: unpickling can run code). CONFIG is a data config: the
MultiViewDataModule's init arguments (configs/data/*.yaml, or a fit config whose ``data:`` holds them).

What is measured (the "mode" of a row):
    reconstruction  a GS-LRM checkpoint alone: the data's first ``num_input_views`` views of each scene are the
                    inputs, the other views are rendered and compared with the ground truth.
    diffusion       a diffusion checkpoint alone: the reference view (``--reference-view K`` of the rig, default 0
                    = front) generates the rig's views, compared with the ground-truth views in rig order. Whether
                    the model learned more than its input: over the novel views (the rig's views other than the
                    reference view itself), the generated views (``novel/*``) next to the baseline that copies the
                    reference into every view (``copy_ref/*``; ``lightning_modules.diffusion.copy_reference_views``).
    chained         ``--diffusion D`` with GS-LRM checkpoints: D's generated views, with D's rig cameras (the views'
                    true cameras), are lifted by the GS-LRM and the Gaussians rendered at the data's ground-truth
                    cameras, compared with the ground truth (all rig views, the reference view included: the
                    per-view columns show it apart). Before any work the rig guard compares D's rig with
                    every GS-LRM's rig: a mismatch stops with an error naming both rigs and the per-view difference,
                    unless ``--allow-rig-mismatch`` (a logged warning; the row says ``rig match: no``). The
                    generated views' own metrics go into the ``generated/*`` columns.

What "x rig" means: ``--rig NAME`` (repeatable; default: the data config's own rig) is loaded as the data's stage
rig (``MultiViewDataModule(rig=NAME)``). Procedural sources are then rendered from that rig's cameras (views 0..5 =
the rig's views in order, further views random on its sphere), so the same scenes are seen through each rig; for
diffusion and chained rows the ground truth is that rig's views. Sources with camera files (FaceLift folders,
shards) keep their recorded cameras whatever the rig (the row's ``cameras`` note says so), and facelift_mvdiffusion
folders (no camera file) are given the named rig's cameras. The rig a checkpoint was trained on is compared with the
evaluation rig and reported in the table (``rig match``, worst per-view angle) — a mismatch is the experiment
("which GS-LRM with which cameras"), never a reason to stop. Only the chained pipeline's diffusion->GS-LRM hand-off
is guarded, as in tools.infer.

Metrics: PSNR (dB, data range 1) and SSIM (Gaussian window 11, sigma 1.5) per view from
``lightning_modules.metrics``, and ``psnr_fg`` ("PSNR fg"): the PSNR over the pixels inside the axis-aligned
bounding box of the ground-truth view's alpha > 0.5 (``per_view_psnr_fg``; mouse views are mostly white background,
which whole-image PSNR rewards). A view without foreground has no box: NaN, left out of the means (a scene's score is
the mean over its other views; a scene without any is left out of the group means) and counted in
``psnr_fg_empty``. LPIPS only with local weights (``--lpips-weights`` = the lpips package's vgg.pth and
``--vgg-weights`` = torchvision's VGG16 state dict), otherwise left out and said once — never estimated. Each scene's
score is the mean over its evaluated views; a group's score is the mean over its scenes (PSNR averaged in dB).
Groups: all, per kind (synthetic / real), per source name, per view name. The data are the split's draws of the
DataModule (seeded: the same scenes for every checkpoint and rig), ``batches x batch_size`` per row, images at the
checkpoint's image size; no augmentation. Diffusion sampling is seeded (``--seed`` + batch index).

Outputs in ``--out``:
    results.json   everything: settings, checkpoints, rows with metrics per group, per-scene scores, rig diffs
    results.csv    one line per row (checkpoint x data x rig): metric columns ``psnr``, ``psnr/real``,
                   ``psnr/source:NAME``, ``psnr/view:NAME``, ``psnr_fg``..., ``psnr_fg_empty`` (views without
                   foreground), ``generated/psnr``..., ``novel/psnr`` and ``copy_ref/psnr``... (diffusion rows)
    results.md     the table (rows = checkpoint x data x rig; PSNR / PSNR fg / SSIM [/ LPIPS] overall and per kind),
                   a per-view table and notes
    grids/*.png    per row: one line per scene (the first ``--grid-scenes``), columns inputs | rendered | ground
                   truth (chained: reference | generated | rendered | ground truth)
Non-finite values (PSNR of a perfect prediction is +inf) are written as the strings "inf" / "nan" in JSON.
A row that fails is recorded with its error and the run goes on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.rig_guard import check_rigs
from geometry.rig import Rig, load_rig
from tools.checkpoints import (
    Labelled,
    checkpoint_rig,
    checkpoint_stage,
    load_stage,
    parse_labelled,
    resolve_device,
    unique_labels,
)

log = logging.getLogger("mvlift.evaluate")

RESULTS_VERSION = 1
KINDS = ("synthetic", "real")
BASE_METRICS = ("psnr", "psnr_fg", "ssim", "lpips")
CSV_FIXED = ("checkpoint", "mode", "checkpoint_rig", "data", "rig", "rig_match", "rig_worst_angle_deg",
             "image_size", "scenes", "distinct_scenes", "skipped", "error", "checkpoint_path", "data_path", "grid")


# ---- metrics --------------------------------------------------------------------------------------------------------
def score_views(pred: Tensor, target: Tensor, lpips: torch.nn.Module | None = None, alpha: Tensor | None = None
                ) -> dict[str, Tensor]:
    """Per-view metrics {"psnr", "ssim"[, "lpips"][, "psnr_fg"]} -> [B, V] for images [B, V, 3, H, W] in [0, 1]
    (the project's ``lightning_modules.metrics.view_metrics``; ``psnr_fg`` with the targets' alpha [B, V, 1, H, W])."""
    from lightning_modules.metrics import view_metrics

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
    from lightning_modules.metrics import UNDEFINED_AS_NAN

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


# ---- data -------------------------------------------------------------------------------------------------------------
def load_data_config(path: Path) -> dict[str, Any]:
    """DataModule init args from a YAML data config (plain, ``init_args:`` or a fit config's ``data:``)."""
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
        cfg = cfg["data"]
    if isinstance(cfg, dict) and ("class_path" in cfg or "init_args" in cfg):
        cfg = cfg.get("init_args") or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a data config must be a mapping of MultiViewDataModule arguments")  # noqa: TRY004
    return dict(cfg)


def source_cameras(source: Any) -> str:
    """Where a source's cameras come from (for the row notes)."""
    from datamodules.sources import MVDiffusionFolderSource, ProceduralSource

    if isinstance(source, ProceduralSource):
        return f"rendered from rig {source.rig.name}"
    if isinstance(source, MVDiffusionFolderSource):
        return f"rig {source.rig.name} assumed (folders without camera files)"
    return "camera files (not changed by the rig)"


def make_loader(data_cfg: dict[str, Any], stage: str, rig: str | None, image_size: int, args: argparse.Namespace
                ) -> tuple[Any, Any]:
    """(DataLoader over the evaluation draws, DataModule) for one data config x rig at ``image_size``: the
    DataModule's own validation (or training) loader, so the draws are those training validates on."""
    from datamodules.datamodule import MultiViewDataModule

    n = args.batches * args.batch_size
    cfg = {**data_cfg, "stage": stage, "image_size": image_size, "batch_size": args.batch_size,
           "num_workers": args.num_workers, "augment": {"enabled": False}, "augment_val": False,
           "val_samples": n, "samples_per_epoch": n}
    if rig is not None:
        cfg["rig"] = rig
    if stage == "diffusion":
        cfg.update(reference_view="fixed", reference_index=args.reference_view)
    else:
        cfg["supervise_inputs"] = False  # scores are on the views the model did not see
        if args.num_input_views is not None:
            cfg["num_input_views"] = args.num_input_views
    dm = MultiViewDataModule(**cfg)
    dm.setup("validate")
    loader = dm.val_dataloader() if args.split == "val" else dm.train_dataloader()
    if not loader:
        raise ValueError("the data config has no validation split (no val_sources and too few scenes for a "
                         "held-out tail); use --split train")
    return loader, dm


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _view_name(rig: Rig, i: int) -> str:
    return rig.view_names[i] if 0 <= i < rig.num_views else f"view_{i:03d}"


def _resize(images: Tensor, size: int) -> Tensor:
    """[B, V, C, H, W] -> [B, V, C, size, size] (images, or alpha with C = 1)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    b, v, c = images.shape[:3]
    x = F.interpolate(images.flatten(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.view(b, v, c, size, size)


# ---- rows -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RowResult:
    scenes: list[dict[str, Any]]
    grid_rows: list[Tensor]  # [C, 3, H, W] per scene
    grid_labels: list[str]
    skipped: list[dict[str, str]]
    metric_names: list[str]
    generated: bool = False
    num_input_views: int | None = None
    novel: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # diffusion: novel views, model vs copy


NOVEL_METRICS = ("psnr", "psnr_fg", "ssim")  # diffusion rows: generated vs copy-the-reference, on the novel views


def _record(batch: dict[str, Any], b: int, views: list[str], scores: dict[str, Tensor], prefix: str = ""
            ) -> dict[str, Any]:
    rec = {"scene_id": str(batch["scene_id"][b]), "source": str(batch["source"][b]), "kind": str(batch["kind"][b]),
           "views": views}
    for m, v in scores.items():
        rec[prefix + m] = [float(x) for x in v[b].detach().cpu()]
    return rec


def evaluate_reconstruction(module: Any, loader: Any, rig: Rig, args: argparse.Namespace, lpips: Any,
                            device: torch.device) -> RowResult:
    """GS-LRM alone on posed views (module docstring, mode ``reconstruction``)."""
    res = RowResult([], [], [], [], [])
    for i, batch in enumerate(loader):
        if i >= args.batches:
            break
        res.skipped += batch.pop("skipped", [])
        batch = _to(batch, device)
        with torch.no_grad():
            out = module.evaluate_batch(batch)
        pred, target = out["pred"], out["target"]
        scores = {m: out[m] for m in ("psnr", "ssim", "psnr_fg") if m in out}
        if lpips is not None:
            scores["lpips"] = score_views(pred, target, lpips)["lpips"]
        v = batch["images"].shape[1]
        vin = module.input_views_of(batch)
        vs = pred.shape[1]
        res.num_input_views = vin
        sup = slice(0, v) if vs == v else slice(vin, v)
        inputs = batch.get("input_images")
        inputs = inputs if inputs is not None else batch["images"][:, :vin]
        for b in range(pred.shape[0]):
            names = [_view_name(rig, int(j)) for j in batch["index"][b, sup, 0]]
            res.scenes.append(_record(batch, b, names, scores))
            if len(res.grid_rows) < args.grid_scenes:
                res.grid_rows.append(torch.cat([inputs[b], pred[b], target[b]]).float().cpu())
        if not res.grid_labels:
            res.grid_labels = ([f"in{j}" for j in range(vin)] + [f"render{j}" for j in range(vs)] +
                               [f"gt{j}" for j in range(vs)])
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


def _sample(diffusion: Any, ref: Tensor, args: argparse.Namespace, batch_index: int) -> dict[str, Any]:
    return diffusion.sample(ref, num_inference_steps=args.steps, guidance_scale=args.guidance,
                            seed=args.seed + batch_index, scheduler=args.scheduler)


def evaluate_diffusion(module: Any, loader: Any, rig: Rig, args: argparse.Namespace, lpips: Any,
                       device: torch.device) -> RowResult:
    """Diffusion alone: generated rig views vs the ground-truth views in rig order (mode ``diffusion``), and on the
    novel views the generated views vs copying the reference (``RowResult.novel``)."""
    from lightning_modules.diffusion import copy_reference_views, reference_view_mask

    res = RowResult([], [], [], [], [])
    res.num_input_views = 1  # the reference view
    for i, batch in enumerate(loader):
        if i >= args.batches:
            break
        res.skipped += batch.pop("skipped", [])
        batch = _to(batch, device)
        ref = batch["ref_images"][:, 0]
        with torch.no_grad():
            gen = _sample(module, ref, args, i)["images"]
        target = _resize(batch["images"], gen.shape[-1])
        alpha = _resize(batch["alpha"], gen.shape[-1]) if batch.get("alpha") is not None else None
        v = min(gen.shape[1], target.shape[1])
        gen, target = gen[:, :v], target[:, :v]
        scores = score_views(gen, target, lpips, alpha=None if alpha is None else alpha[:, :v])
        copied = score_views(copy_reference_views(ref, v, tuple(gen.shape[-2:])), target, None,
                             alpha=None if alpha is None else alpha[:, :v])
        is_ref = reference_view_mask(batch)
        names = [_view_name(rig, j) for j in range(v)]
        for b in range(gen.shape[0]):
            res.scenes.append(_record(batch, b, names, scores))
            keep = [j for j in range(v) if is_ref is None or not bool(is_ref[b, j])]
            novel = {"scene_id": str(batch["scene_id"][b]), "source": str(batch["source"][b]),
                     "kind": str(batch["kind"][b]), "views": [names[j] for j in keep]}
            for m in NOVEL_METRICS:
                if m in scores:
                    novel[f"novel/{m}"] = [float(scores[m][b, j]) for j in keep]
                    novel[f"copy_ref/{m}"] = [float(copied[m][b, j]) for j in keep]
            res.novel.append(novel)
            if len(res.grid_rows) < args.grid_scenes:
                r = _resize(ref[b][None, None], gen.shape[-1])[0]
                res.grid_rows.append(torch.cat([r, gen[b], target[b]]).float().cpu())
        if not res.grid_labels:
            res.grid_labels = ["reference"] + [f"gen:{n}" for n in names] + [f"gt:{n}" for n in names]
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


def evaluate_chained(diffusion: Any, module: Any, loader: Any, rig: Rig, args: argparse.Namespace, lpips: Any,
                     device: torch.device) -> RowResult:
    """Diffusion views -> GS-LRM -> renders at the ground-truth cameras (mode ``chained``)."""
    from tools.infer import lift_views, parse_input_views

    res = RowResult([], [], [], [], [], generated=True)
    input_views = parse_input_views(args.chain_input_views, diffusion.rig)
    res.num_input_views = len(input_views)
    for i, batch in enumerate(loader):
        if i >= args.batches:
            break
        res.skipped += batch.pop("skipped", [])
        batch = _to(batch, device)
        ref = batch["ref_images"][:, 0]
        target = batch["images"]
        h, w = target.shape[-2:]
        with torch.no_grad():
            gen = _sample(diffusion, ref, args, i)["images"]
            gaussians, _ = lift_views(module, gen, diffusion.rig, input_views)
            rendered = module.render(gaussians, batch["c2w"], batch["fxfycxcy"], h, w, batch.get("background"))["rgb"]
        alpha = batch.get("alpha")
        scores = score_views(rendered, target, lpips, alpha=alpha)
        gen_r = _resize(gen, h)
        v = min(gen_r.shape[1], target.shape[1])
        gen_scores = score_views(gen_r[:, :v], target[:, :v], lpips, alpha=None if alpha is None else alpha[:, :v])
        names = [_view_name(rig, j) for j in range(target.shape[1])]
        for b in range(target.shape[0]):
            rec = _record(batch, b, names, scores)
            gen_rec = _record(batch, b, names[:v], gen_scores, "generated/")
            rec.update({key: val for key, val in gen_rec.items() if key.startswith("generated/")})
            res.scenes.append(rec)
            if len(res.grid_rows) < args.grid_scenes:
                r = _resize(ref[b][None, None], h)[0]
                res.grid_rows.append(torch.cat([r, gen_r[b], rendered[b], target[b]]).float().cpu())
        if not res.grid_labels:
            gnames = [_view_name(diffusion.rig, j) for j in range(gen_r.shape[1])]
            res.grid_labels = (["reference"] + [f"gen:{n}" for n in gnames] + [f"render:{n}" for n in names] +
                               [f"gt:{n}" for n in names])
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


def write_grid(path: Path, rows: list[Tensor], labels: list[str], row_labels: list[str]) -> Path | None:
    """One PNG: a line per scene (labelled), columns ``labels``."""
    if not rows:
        return None
    from PIL import Image

    from callbacks.image_log import labelled_grid

    grid = labelled_grid(torch.stack(rows).clamp(0, 1), labels, row_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


# ---- the run ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CheckpointInfo:
    label: str
    path: Path
    stage: str
    rig: Rig


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "_", "__".join(parts)).strip("_")


def preflight(args: argparse.Namespace) -> tuple[list[CheckpointInfo], CheckpointInfo | None, list[Labelled],
                                                  list[dict[str, Any]], list[Rig | None]]:
    """Everything that can be checked without loading a model or data: files, stages, rigs, the rig guard."""
    if args.batches < 1 or args.batch_size < 1:
        raise ValueError(f"--batches and --batch-size must be >= 1, got {args.batches} and {args.batch_size}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    ckpts, trust = [], args.trust_checkpoint
    for spec in unique_labels([parse_labelled(s) for s in args.ckpt]):
        ckpts.append(CheckpointInfo(spec.label, spec.path, checkpoint_stage(spec.path, trust),
                                    checkpoint_rig(spec.path, trust)))
    diffusion = None
    if args.diffusion is not None:
        d = parse_labelled(args.diffusion)
        diffusion = CheckpointInfo(d.label, d.path, checkpoint_stage(d.path, trust), checkpoint_rig(d.path, trust))
        if diffusion.stage != "diffusion":
            raise ValueError(f"--diffusion {d.path}: is a {diffusion.stage} checkpoint")
        bad = [c for c in ckpts if c.stage != "reconstruction"]
        if bad:
            raise ValueError(f"--ckpt {bad[0].path}: is a {bad[0].stage} checkpoint; with --diffusion every --ckpt "
                             "must be a reconstruction checkpoint (the chained pipeline)")
        for c in ckpts:  # the rig guard, before any work
            check_rigs(diffusion.rig, c.rig, allow_mismatch=args.allow_rig_mismatch)
    data = unique_labels([parse_labelled(s) for s in args.data])
    configs = [load_data_config(d.path) for d in data]
    rigs: list[Rig | None] = [load_rig(r) for r in args.rig] if args.rig else [None]
    return ckpts, diffusion, data, configs, rigs


def _rig_fields(model_rig: Rig, eval_rig: Rig) -> dict[str, Any]:
    diff = model_rig.compare(eval_rig)
    return {"rig_match": diff.ok, "rig_worst_angle_deg": round(diff.worst_angle_deg, 4),
            "rig_worst_distance": round(diff.worst_distance, 5), "rig_diff": diff.to_dict()}


def evaluate_row(ckpt: CheckpointInfo, module: Any, diffusion: Any, data: Labelled, data_cfg: dict[str, Any],
                 rig: Rig | None, args: argparse.Namespace, lpips: Any, device: torch.device) -> dict[str, Any]:
    """One checkpoint x data x rig row (module docstring)."""
    import lightning.pytorch as pl

    mode = "chained" if diffusion is not None else ckpt.stage
    size = int(module.hparams.image_size)
    stage = "reconstruction" if mode == "reconstruction" else "diffusion"
    pl.seed_everything(args.seed, verbose=False)
    loader, dm = make_loader(data_cfg, stage, rig.to_dict() if rig is not None else None, size, args)
    eval_rig: Rig = dm.rig
    row: dict[str, Any] = {
        "checkpoint": ckpt.label, "checkpoint_path": str(ckpt.path), "stage": ckpt.stage, "mode": mode,
        "checkpoint_rig": ckpt.rig.name, "checkpoint_rig_fingerprint": ckpt.rig.fingerprint,
        "data": data.label, "data_path": str(data.path), "rig": eval_rig.name, "rig_fingerprint": eval_rig.fingerprint,
        "rig_views": list(eval_rig.view_names), "image_size": size, **_rig_fields(ckpt.rig, eval_rig),
        "cameras": {s.name: source_cameras(s) for s in (dm.val_sources if args.split == "val" else dm.train_sources)},
    }
    if diffusion is not None:
        row["diffusion_rig"] = diffusion.rig.name
        row["diffusion_rig_match"] = diffusion.rig.compare(ckpt.rig).ok
    t0 = time.time()
    if mode == "reconstruction":
        res = evaluate_reconstruction(module, loader, eval_rig, args, lpips, device)
    elif mode == "diffusion":
        res = evaluate_diffusion(module, loader, eval_rig, args, lpips, device)
    else:
        res = evaluate_chained(diffusion, module, loader, eval_rig, args, lpips, device)
    if not res.scenes:
        raise ValueError("no scene was evaluated (every draw was skipped?)")
    ids = [f"{s['source']}/{s['scene_id']}" for s in res.scenes]
    row.update(scenes=len(res.scenes), distinct_scenes=len(set(ids)), skipped=len(res.skipped),
               skipped_examples=res.skipped[:5], metric_names=res.metric_names, num_input_views=res.num_input_views,
               metrics=summarize(res.scenes, res.metric_names), per_scene=res.scenes,
               seconds=round(time.time() - t0, 3))
    if len(set(ids)) < len(ids):
        log.warning("%s x %s x %s: %d draws but %d distinct scenes (scenes counted more than once; fewer --batches "
                    "or more held-out scenes)", ckpt.label, data.label, eval_rig.name, len(ids), len(set(ids)))
    if res.generated:
        row["generated_metrics"] = summarize(res.scenes, res.metric_names, prefix="generated/")
    if res.novel and res.novel[0]["views"]:
        names = [m for m in NOVEL_METRICS if f"novel/{m}" in res.novel[0]]
        row["novel_metrics"] = summarize(res.novel, names, prefix="novel/")
        row["copy_ref_metrics"] = summarize(res.novel, names, prefix="copy_ref/")
    grid = write_grid(args.out / "grids" / f"{_slug(ckpt.label, data.label, eval_rig.name)}.png", res.grid_rows,
                      res.grid_labels, [f"#{i}" for i in range(len(res.grid_rows))])
    row["grid"] = str(grid.relative_to(args.out)) if grid is not None else None
    return row


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


DIGITS = {"psnr": 2, "psnr_fg": 2, "ssim": 4, "lpips": 4}
TITLES = {"psnr": "PSNR", "psnr_fg": "PSNR fg", "ssim": "SSIM", "lpips": "LPIPS"}


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in CSV_FIXED}
    for prefix, summary in (("", row.get("metrics")), ("generated/", row.get("generated_metrics")),
                            ("novel/", row.get("novel_metrics")), ("copy_ref/", row.get("copy_ref_metrics"))):
        if not summary:
            continue
        names = [m for m in BASE_METRICS if m in summary["all"]]
        for m in names:
            out[f"{prefix}{m}"] = summary["all"][m]
            if f"{m}_empty" in summary["all"]:
                out[f"{prefix}{m}_empty"] = summary["all"][f"{m}_empty"]
        for group in ("kind", "source", "view"):
            for key, vals in summary[group].items():
                for m in names:
                    out[f"{prefix}{m}/{key}" if group == "kind" else f"{prefix}{m}/{group}:{key}"] = vals[m]
    return out


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
    lines.append(f"Mode: {mode}; split `{s['split']}`; up to {s['batches']} x {s['batch_size']} scenes per row; "
                 f"seed {s['seed']}; device `{s['device']}`" +
                 (f"; diffusion `{s['diffusion']}` ({s['diffusion_rig']}), {s['steps']} steps, guidance "
                  f"{s['guidance']}" if s.get("diffusion") else "") + ".")
    lines.append(f"LPIPS: {results['lpips']['note']}.")
    lines.append("")
    chained = any(r.get("mode") == "chained" for r in rows)
    head = ["checkpoint", "data", "rig", "checkpoint rig", "rig match"]
    head += ["diffusion rig match"] if chained else []
    head += ["scenes"]
    head += [TITLES[m] for m in metrics]
    head += [f"{TITLES[m]} {k}" for k in kinds for m in metrics]
    if any(r.get("generated_metrics") for r in ok_rows):
        head += [f"generated {TITLES[m]}" for m in metrics]
    compared = [m for m in ("psnr", "psnr_fg") if any(m in (r.get("copy_ref_metrics") or {}).get("all", {})
                                                     for r in ok_rows)]
    head += [f"{who} {TITLES[m]}" for m in compared for who in ("novel", "copy-ref")]
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
        cells += [_fmt(m_all.get(m), DIGITS[m]) for m in metrics]
        cells += [_fmt(m_kind.get(k, {}).get(m), DIGITS[m]) for k in kinds for m in metrics]
        if any(x.get("generated_metrics") for x in ok_rows):
            g = (r.get("generated_metrics") or {}).get("all", {})
            cells += [_fmt(g.get(m), DIGITS[m]) for m in metrics]
        for m in compared:
            cells += [_fmt((r.get(key) or {}).get("all", {}).get(m), DIGITS[m])
                      for key in ("novel_metrics", "copy_ref_metrics")]
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
            cells += [f"{_fmt(pv[v].get('psnr'), 2)} / {_fmt(pv[v].get('ssim'), 3)}" if v in pv else "—"
                      for v in views]
            lines.append("| " + " | ".join(cells) + " |")
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
        if r.get("error"):
            extra.append(f"ERROR: {r['error']}")
        lines.append(f"- `{r['checkpoint']}` x `{r['data']}` x `{r.get('rig', '?')}` ({r.get('mode', '?')}): "
                     f"cameras — {cams or '?'}" + (f"; {'; '.join(extra)}" if extra else ""))
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n")
    write_csv(out / "results.csv", results["rows"])
    (out / "results.md").write_text(markdown(results))


def load_lpips_metric(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """(LPIPS module or None, a JSON note): only from local weight files, never downloaded nor estimated."""
    if not (args.lpips_weights and args.vgg_weights):
        note = "left out (no local weights: pass --lpips-weights and --vgg-weights)"
        log.warning("LPIPS %s", note)
        return None, {"computed": False, "note": note}
    missing = [str(p) for p in (args.lpips_weights, args.vgg_weights) if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"LPIPS weights not found: {', '.join(missing)}")
    from lightning_modules.losses import load_lpips

    lp = load_lpips(str(args.vgg_weights), str(args.lpips_weights))
    return lp.to(device), {"computed": True, "note": f"VGG LPIPS from {args.lpips_weights} + {args.vgg_weights}",
                           "lpips_weights": str(args.lpips_weights), "vgg_weights": str(args.vgg_weights)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole evaluation (module docstring); returns the results dict (also written to ``args.out``)."""
    ckpts, diffusion_info, data, configs, rigs = preflight(args)
    device = resolve_device(args.device)
    lpips, lpips_note = load_lpips_metric(args, device)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "settings": {"split": args.split, "batches": args.batches, "batch_size": args.batch_size, "seed": args.seed,
                     "device": str(device), "ema": args.ema, "reference_view": args.reference_view,
                     "num_input_views": args.num_input_views, "steps": args.steps, "guidance": args.guidance,
                     "scheduler": args.scheduler, "chain_input_views": args.chain_input_views,
                     "diffusion": str(diffusion_info.path) if diffusion_info else None,
                     "diffusion_rig": diffusion_info.rig.name if diffusion_info else None,
                     "allow_rig_mismatch": args.allow_rig_mismatch},
        "lpips": lpips_note,
        "checkpoints": [{"label": c.label, "path": str(c.path), "stage": c.stage, "rig": c.rig.name,
                         "rig_fingerprint": c.rig.fingerprint} for c in ckpts],
        "data": [{"label": d.label, "path": str(d.path)} for d in data],
        "rigs": [r.name for r in rigs if r is not None] or None,
        "rows": [],
    }
    diffusion = None
    if diffusion_info is not None:
        diffusion = load_stage(diffusion_info.path, "diffusion", ema=args.ema, device=device,
                               trust=args.trust_checkpoint)
    for ckpt in ckpts:
        module = load_stage(ckpt.path, ckpt.stage, ema=args.ema, device=device, trust=args.trust_checkpoint,
                            rasterizer="auto", compile=False)
        for d, cfg in zip(data, configs):
            for rig in rigs:
                rig_name = rig.name if rig is not None else cfg.get("rig", "(data rig)")
                log.info("evaluating %s x %s x %s", ckpt.label, d.label, rig_name)
                try:
                    row = evaluate_row(ckpt, module, diffusion, d, cfg, rig, args, lpips, device)
                except (ValueError, FileNotFoundError, RuntimeError) as e:
                    log.error("%s x %s x %s failed: %s", ckpt.label, d.label, rig_name, e)
                    row = {"checkpoint": ckpt.label, "checkpoint_path": str(ckpt.path), "stage": ckpt.stage,
                           "mode": "chained" if diffusion is not None else ckpt.stage, "checkpoint_rig": ckpt.rig.name,
                           "data": d.label, "data_path": str(d.path), "rig": str(rig_name),
                           "error": f"{type(e).__name__}: {e}"}
                    if rig is not None:
                        row.update(_rig_fields(ckpt.rig, rig))
                results["rows"].append(row)
                write_results(args.out, results)
                if row.get("metrics"):
                    m = row["metrics"]["all"]
                    log.info("  PSNR %s  PSNR fg %s  SSIM %s  (%d scenes, rig match %s)", _fmt(m["psnr"], 2),
                             _fmt(m.get("psnr_fg"), 2), _fmt(m["ssim"], 4), row["scenes"], row["rig_match"])
        del module
    write_results(args.out, results)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--ckpt", action="append", required=True,
                   help="[LABEL=]PATH of a .ckpt or export folder (repeat for several)")
    p.add_argument("--data", action="append", required=True, help="[LABEL=]data config YAML (repeat for several)")
    p.add_argument("--rig", action="append", default=[],
                   help="evaluation rig name or file (repeat for several); default: each data config's rig")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batches", type=int, default=4, help="batches per row")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split of the data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--diffusion", default=None, help="[LABEL=]diffusion checkpoint: evaluate the chained pipeline")
    p.add_argument("--allow-rig-mismatch", action="store_true",
                   help="chained: go on (with a warning) when the diffusion rig differs from a GS-LRM's rig")
    p.add_argument("--steps", type=int, default=50, help="diffusion sampling steps")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--scheduler", default="ddim", help="sampler: ddim | ddpm | euler | dpm")
    p.add_argument("--reference-view", type=int, default=0, help="diffusion / chained: the rig view used as input")
    p.add_argument("--num-input-views", type=int, default=None,
                   help="reconstruction: override the data config's num_input_views")
    p.add_argument("--chain-input-views", default="all",
                   help="chained: generated views given to the GS-LRM (all, or indices / view names)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of every checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load .ckpt files that need more than plain tensors and values with full unpickling (can "
                        "run code from the file: only for files you trust)")
    p.add_argument("--lpips-weights", type=Path, default=None, help="local LPIPS linear heads (lpips' vgg.pth)")
    p.add_argument("--vgg-weights", type=Path, default=None, help="local torchvision VGG16 weights for LPIPS")
    p.add_argument("--grid-scenes", type=int, default=4, help="scenes per image grid")
    p.add_argument("--num-workers", type=int, default=0, help="data loading workers")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in results["rows"] if r.get("error")]
    for r in failed:
        print(f"evaluate: row {r['checkpoint']} x {r['data']} x {r['rig']} failed: {r['error']}", file=sys.stderr)
    print(f"wrote {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
