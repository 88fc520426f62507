"""The evaluation runner: every checkpoint x data config x rig, one row each (modes and data: tools.evaluate's help).

:class:`EvalSettings` holds what a run is asked (the tool's options, explicit); :func:`run_evaluation` checks
everything it can before loading a model (:func:`preflight`), evaluates each row (:func:`evaluate_row`: the
DataModule's own validation draws at the checkpoint's size; modes reconstruction / diffusion / chained, the chained
one through :mod:`lightning_modules.pipeline`) and writes the report after every row (:mod:`.report`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from datamodules.data_config import load_data_config
from datamodules.datamodule import MultiViewDataModule
from datamodules.shared_settings import SHARED_SETTINGS, differences
from datamodules.sources import MVDiffusionFolderSource, ProceduralSource
from geometry.cameras import cameras_into_frame, reference_similarity
from geometry.images import resize_images
from geometry.progress import progress
from geometry.rig import Rig, check_rigs, load_rig
from lightning_modules.artifacts import checkpoint_rig, checkpoint_stage
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING
from lightning_modules.diffusion.sampling import Sampling
from lightning_modules.evaluation.report import RESULTS_VERSION, fmt, write_grid, write_results
from lightning_modules.evaluation.summary import NOVEL_METRICS, score_views, summarize
from lightning_modules.loading import Labelled, load_stage, parse_labelled, resolve_device, unique_labels
from lightning_modules.metrics import per_view_iou, per_view_ssim_fg
from lightning_modules.pipeline import generate_views, lift_views, parse_input_views
from lightning_modules.reconstruction.losses import load_lpips, torchmetrics_lpips_heads

log = logging.getLogger("mvlift.evaluate")
PLACEMENT_RULE = ("the photo (data view K) is taken as the diffusion rig's view K, re-framed to the rig's focal length; "
                  "the data's cameras are brought into the rig's frame by the similarity that puts the rig's camera K "
                  "on the data's camera K, scale = data camera K's distance to the data origin / rig radius")


@dataclasses.dataclass
class EvalSettings:
    """What an evaluation run is asked (``tools.evaluate``'s options, by name)."""

    ckpt: list[str]
    data: list[str]
    rig: list[str]  # evaluation rigs; empty: each data config's own
    out: Path
    batches: int = 4
    batch_size: int = 2
    split: str = "val"
    seed: int = 0
    device: str = "cpu"
    diffusion: str | None = None
    allow_rig_mismatch: bool = False
    steps: int = SAMPLING.steps
    guidance: float = SAMPLING.guidance
    scheduler: str = SAMPLING.scheduler
    reference_view: int = SAMPLING.reference_view
    num_input_views: int | None = None
    input_views: str | None = None  # reconstruction: random | spread | first (None: the data config's)
    chain_input_views: str = "all"
    heldout_views: int = 0  # chained: also render the data's next N views after the rig's (held-out cameras)
    precision: str = "fp32"  # diffusion sampling: fp32 | bf16 (autocast on CUDA)
    ema: bool = False
    diffusion_ema: bool | None = None  # chained: the diffusion checkpoint's EMA weights (None: as ``ema``)
    trust_checkpoint: bool = False
    lpips_weights: Path | None = None
    vgg_weights: Path | None = None
    grid_scenes: int = 4
    num_workers: int = 0

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.steps, self.guidance, self.scheduler, self.reference_view)

    @property
    def use_diffusion_ema(self) -> bool:
        return self.ema if self.diffusion_ema is None else bool(self.diffusion_ema)


def source_cameras(source: Any) -> str:
    """Where a source's cameras come from (for the row notes)."""

    if isinstance(source, ProceduralSource):
        return f"rendered from rig {source.rig.name}"
    if isinstance(source, MVDiffusionFolderSource):
        return f"rig {source.rig.name} assumed (folders without camera files)"
    return "camera files (not changed by the rig)"


def make_loader(data_cfg: dict[str, Any], stage: str, rig: str | None, image_size: int, opts: EvalSettings,
                chained: bool = False) -> tuple[Any, Any]:
    """(DataLoader over the evaluation draws, DataModule) for one data config x rig at ``image_size``: the
    DataModule's own validation (or training) loader, so the draws are those training validates on."""

    n = opts.batches * opts.batch_size
    cfg = {**data_cfg, "stage": stage, "image_size": image_size, "batch_size": opts.batch_size,
           "num_workers": opts.num_workers, "augment": {"enabled": False}, "augment_val": False,
           "val_samples": n, "samples_per_epoch": n}
    if rig is not None:
        cfg["rig"] = rig
    if stage == "diffusion":
        cfg.update(reference_view="fixed", reference_index=opts.reference_view)
        if chained:  # the data's cameras need not be the rig's: the result is placed through the reference camera
            cfg.update(rig_tolerance_deg=float("inf"), rig_distance_tolerance=float("inf"))
    else:
        cfg["supervise_inputs"] = False  # scores are on the views the model did not see
        if opts.num_input_views is not None:
            cfg["num_input_views"] = opts.num_input_views
        if opts.input_views is not None:
            cfg["input_views"] = opts.input_views
    dm = MultiViewDataModule(**cfg)
    if chained and opts.heldout_views:  # the rig's views, then the data's next views: cameras no generated view had
        dm.builder = dataclasses.replace(dm.builder, extra_views=int(opts.heldout_views))
    dm.setup("validate")
    loader = dm.val_dataloader() if opts.split == "val" else dm.train_dataloader()
    if not loader:
        raise ValueError("the data config has no validation split (no val_sources and too few scenes for a "
                         "held-out tail); use --split train")
    return loader, dm


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _view_name(rig: Rig, i: int) -> str:
    return rig.view_names[i] if 0 <= i < rig.num_views else f"view_{i:03d}"


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
    grid_tiles: list[list[str]] | None = None  # per scene, each tile's view name (views that differ between scenes)
    placement: list[float] | None = None  # chained: per scene, the scale of the rig -> data frame similarity
    generated_views: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # chained: the generated views
    generated_novel: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # chained: generated views, novel


def _record(batch: dict[str, Any], b: int, views: list[str], scores: dict[str, Tensor], prefix: str = ""
            ) -> dict[str, Any]:
    rec = {"scene_id": str(batch["scene_id"][b]), "source": str(batch["source"][b]), "kind": str(batch["kind"][b]),
           "views": views}
    for m, v in scores.items():
        rec[prefix + m] = [float(x) for x in v[b].detach().cpu()]
    return rec


def _batches(loader: Any, opts: EvalSettings, device: torch.device, res: RowResult) -> Any:
    """(i, batch on ``device``) for the row's first ``opts.batches`` batches; their skipped draws go to ``res``."""
    for i, batch in enumerate(progress(loader, "batches", total=opts.batches, unit="batch", leave=False)):
        if i >= opts.batches:
            return
        res.skipped += batch.pop("skipped", [])
        yield i, _to(batch, device)


def evaluate_reconstruction(module: Any, loader: Any, rig: Rig, opts: EvalSettings, lpips: Any,
                            device: torch.device) -> RowResult:
    """GS-LRM alone on posed views (module docstring, mode ``reconstruction``)."""
    res = RowResult([], [], [], [], [])
    for i, batch in _batches(loader, opts, device, res):
        with torch.no_grad():
            out = module.evaluate_batch(batch)
        pred, target = out["pred"], out["target"]
        scores = {m: out[m] for m in ("psnr", "ssim", "psnr_fg") if m in out}
        scores.update(shape_scores(pred, target, out.get("pred_alpha"), out.get("target_alpha")))
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
            if len(res.grid_rows) < opts.grid_scenes:  # the input and scored views differ from scene to scene
                res.grid_rows.append(torch.cat([inputs[b], pred[b], target[b]]).float().cpu())
                ins = [_view_name(rig, int(j)) for j in batch["index"][b, :vin, 0]]
                res.grid_tiles = [*(res.grid_tiles or []), [*ins, *names, *names]]
        if not res.grid_labels:
            res.grid_labels = ([f"input {j + 1}" for j in range(vin)] + [f"render {j + 1}" for j in range(vs)] +
                               [f"ground truth {j + 1}" for j in range(vs)])
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


def _novel_record(batch: dict[str, Any], b: int, names: list[str], is_ref: Tensor | None,
                  scores: dict[str, Tensor], copied: dict[str, Tensor]) -> dict[str, Any]:
    """Scene ``b``'s scores on the views that are not its reference view (``novel/``) and the same views' scores of
    copying the reference photo into them (``copy_ref/``)."""
    keep = [j for j in range(len(names)) if is_ref is None or not bool(is_ref[b, j])]
    both = [m for m in scores if m in copied]
    return {**_views_record(batch, b, names, keep, {m: scores[m] for m in both}, "novel/"),
            **_views_record(batch, b, names, keep, {m: copied[m] for m in both}, "copy_ref/")}


def _views_record(batch: dict[str, Any], b: int, names: list[str], keep: list[int], scores: dict[str, Tensor],
                  prefix: str = "") -> dict[str, Any]:
    """Scene ``b``'s record of views ``keep`` (positions in ``names`` and in the scores' view axis)."""
    rec = {"scene_id": str(batch["scene_id"][b]), "source": str(batch["source"][b]), "kind": str(batch["kind"][b]),
           "views": [names[j] for j in keep]}
    rec.update({prefix + m: [float(v[b, j]) for j in keep] for m, v in scores.items()})
    return rec


def heldout_records(records: list[dict[str, Any]], rig_views: Sequence[str], metrics: Sequence[str]
                    ) -> list[dict[str, Any]]:
    """The records' views that the rig does not name (the data's views beyond the rig's: cameras no rig view, so no
    generated view, had), with the ``metrics`` (full keys) of those views; scenes without such views are left out."""
    out = []
    for r in records:
        keep = [i for i, v in enumerate(r["views"]) if v not in rig_views]
        if keep:
            out.append({"scene_id": r["scene_id"], "source": r["source"], "kind": r["kind"],
                        "views": [r["views"][i] for i in keep], **{m: [r[m][i] for i in keep] for m in metrics}})
    return out


def model_photo(batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
    """(photo [B, 3, H, W], its mask [B, 1, H, W] | None) a diffusion or chained row gives the model: the batch's
    ``input_images`` when its source has observed views (a realistic capture scored against its scene's clean
    truth, ``datamodules.sources``), else the reference view."""
    if batch.get("input_images") is not None:
        alpha = batch.get("input_alpha")
        return batch["input_images"][:, 0], None if alpha is None else alpha[:, 0]
    alpha = batch.get("ref_alpha")
    return batch["ref_images"][:, 0], None if alpha is None else alpha[:, 0]


def evaluate_diffusion(module: Any, loader: Any, rig: Rig, opts: EvalSettings, lpips: Any,
                       device: torch.device) -> RowResult:
    """Diffusion alone: generated rig views vs the ground-truth views in rig order (mode ``diffusion``), and on the
    novel views the generated views vs copying the reference (``RowResult.novel``)."""
    from lightning_modules.diffusion.module import copy_reference_views, reference_view_mask

    res = RowResult([], [], [], [], [])
    res.num_input_views = 1  # the reference view
    for i, batch in _batches(loader, opts, device, res):
        ref, _ = model_photo(batch)
        with torch.no_grad():
            gen = generate_views(module, ref, opts.sampling, opts.seed + i, cameras=module.cameras_of(batch),
                                 precision=opts.precision)["images"]
        target = resize_images(batch["images"].float(), gen.shape[-1])
        alpha = resize_images(batch["alpha"].float(), gen.shape[-1]) if batch.get("alpha") is not None else None
        v = min(gen.shape[1], target.shape[1])
        gen, target = gen[:, :v], target[:, :v]
        scores = score_views(gen, target, lpips, alpha=None if alpha is None else alpha[:, :v])
        copied = score_views(copy_reference_views(ref, v, tuple(gen.shape[-2:])), target, None,
                             alpha=None if alpha is None else alpha[:, :v])
        is_ref = reference_view_mask(batch)
        names = [_view_name(rig, j) for j in range(v)]
        for b in range(gen.shape[0]):
            res.scenes.append(_record(batch, b, names, scores))
            res.novel.append(_novel_record(batch, b, names, is_ref, scores, copied))
            if len(res.grid_rows) < opts.grid_scenes:
                r = resize_images(ref[b][None, None].float(), gen.shape[-1])[0]
                res.grid_rows.append(torch.cat([r, gen[b], target[b]]).float().cpu())
        if not res.grid_labels:
            res.grid_labels = ["reference"] + [f"gen:{n}" for n in names] + [f"gt:{n}" for n in names]
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


def reframe_to_focal(images: Tensor, fxfycxcy: Tensor, focal: float, background: Tensor | None) -> Tensor:
    """Photos [B, 3, H, W] taken with intrinsics fxfycxcy [B, 4] re-framed to a camera with focal length ``focal``
    (px) and the principal point at the image centre (a zoom about the principal point: crop, or pad with the
    background), so a rig with that focal length sees the same rays. Identity when the intrinsics already match."""
    b, _, h, w = images.shape
    k = fxfycxcy.float()
    theta = torch.zeros(b, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = k[:, 0] / focal, k[:, 1] / focal
    theta[:, 0, 2], theta[:, 1, 2] = 2 * k[:, 2] / w - 1, 2 * k[:, 3] / h - 1
    grid = torch.nn.functional.affine_grid(theta, [b, 4, h, w], align_corners=False)
    x = torch.cat([images.float(), torch.ones_like(images[:, :1]).float()], dim=1)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bg = torch.ones(b, 3, device=images.device) if background is None else background.float().expand(b, 3)
    return out[:, :3] + (1 - out[:, 3:]) * bg[:, :, None, None]


def rig_to_data_frame(rig: Rig, view: int, ref_c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Phase 2's placement rule: the photo is data view ``view`` and is taken as the rig's view ``view``, so the
    rig's frame (where the generated views' cameras, and the Gaussians, live) is put on the data's frame by the
    similarity that moves the rig's camera ``view`` onto the data's reference camera ref_c2w [B, 4, 4]: rotation
    R_ref R_rig^T and scale s = |c_ref| / |c_rig - target| (the data camera's distance to the data's origin — the
    animal's centre after ``tools.import_captures``) over the rig camera's distance to its target (the
    rig's radius, or that view's distance in a lab's rig), so the rig's target lands on the animal. Returns (M [B, 4, 4], s [B]). For data rendered from the
    rig itself M is the identity."""
    c2w, _ = rig.cameras(dtype=torch.float64, device=ref_c2w.device)
    rig_ref = c2w[view]
    target = torch.tensor(rig.target, dtype=torch.float64, device=ref_c2w.device)
    scale = ref_c2w[:, :3, 3].double().norm(dim=-1) / (rig_ref[:3, 3] - target).norm()
    return reference_similarity(rig_ref.expand_as(ref_c2w.double()), ref_c2w.double(), scale), scale


def shape_scores(pred: Tensor, target: Tensor, pred_alpha: Tensor | None, alpha: Tensor | None) -> dict[str, Tensor]:
    """``ssim_fg`` (SSIM over the target's foreground box) and ``iou`` (silhouette IoU of the rendered alpha with
    the target's mask), both [B, V]; nothing without the target's alpha."""
    if alpha is None:
        return {}
    out = {"ssim_fg": per_view_ssim_fg(pred, target, alpha)}
    if pred_alpha is not None:
        out["iou"] = per_view_iou(pred_alpha, alpha)
    return out


def evaluate_chained(diffusion: Any, module: Any, loader: Any, rig: Rig, opts: EvalSettings, lpips: Any,
                     device: torch.device) -> RowResult:
    """Diffusion views -> GS-LRM -> renders at the data's cameras (mode ``chained``; Phase 2 on real data): the
    reference photo is re-framed to the diffusion rig's focal length (:func:`reframe_to_focal`), the Gaussians made
    in the rig's frame are rendered at the data's cameras brought into that frame (:func:`rig_to_data_frame`).
    ``RowResult.novel``: the renders on the held-out views (every data view but the one the photo is) and copying
    the photo into them, as for diffusion rows."""
    from lightning_modules.diffusion.module import copy_reference_views, reference_view_mask
    res = RowResult([], [], [], [], [], generated=True)
    input_views = parse_input_views(opts.chain_input_views, diffusion.rig)
    res.num_input_views = len(input_views)
    view = opts.reference_view
    if not 0 <= view < diffusion.rig.num_views:
        raise ValueError(f"--reference-view {view}: the diffusion rig {diffusion.rig.name!r} has "
                         f"{diffusion.rig.num_views} views")
    res.placement = []
    for i, batch in _batches(loader, opts, device, res):
        target = batch["images"]
        h, w = target.shape[-2:]
        rig_k = diffusion.rig.focal(h)
        photo, photo_alpha = model_photo(batch)
        ref = reframe_to_focal(photo, batch["ref_fxfycxcy"][:, 0], rig_k, batch.get("background"))
        m, scale = rig_to_data_frame(diffusion.rig, view, batch["ref_c2w"][:, 0])
        cams = cameras_into_frame(batch["c2w"].double(), m).to(batch["c2w"].dtype)
        with torch.no_grad():
            gen = generate_views(diffusion, ref, opts.sampling, opts.seed + i, precision=opts.precision)["images"]
            gaussians, _ = lift_views(module, gen, diffusion.rig, input_views)
            out = module.render(gaussians, cams, batch["fxfycxcy"], h, w, batch.get("background"))
        rendered = out["rgb"]
        alpha = batch.get("alpha")
        scores = score_views(rendered, target, lpips, alpha=alpha)
        scores.update(shape_scores(rendered, target, out.get("alpha"), alpha))
        gen_r = resize_images(gen.float(), h)
        v = min(gen_r.shape[1], target.shape[1])
        gen_alpha = None if alpha is None else alpha[:, :v]
        gen_scores = score_views(gen_r[:, :v], target[:, :v], lpips, alpha=gen_alpha)
        gen_scores.update(shape_scores(gen_r[:, :v], target[:, :v], None, gen_alpha))
        names = [_view_name(rig, j) for j in range(target.shape[1])]
        n_views = target.shape[1]
        copy = copy_reference_views(ref, n_views, (h, w))
        copied = score_views(copy, target, None, alpha=alpha)
        copy_alpha = None if photo_alpha is None else \
            copy_reference_views(reframe_to_focal(photo_alpha.expand(-1, 3, -1, -1), batch["ref_fxfycxcy"][:, 0],
                                                  rig_k, torch.zeros(3, device=device))[:, :1], n_views, (h, w))
        copied.update(shape_scores(copy, target, copy_alpha, alpha))  # the photo's silhouette copied too
        is_ref = reference_view_mask(batch)  # the data view the photo is: held out of the novel-view means
        for b in range(target.shape[0]):
            rec = _record(batch, b, names, scores)
            gen_rec = _record(batch, b, names[:v], gen_scores, "generated/")
            rec.update({key: val for key, val in gen_rec.items() if key.startswith("generated/")})
            if v < len(names):  # the generated views are the rig's: fewer than the scored views
                rec["generated/views"] = names[:v]
            res.scenes.append(rec)
            res.generated_views.append(gen_rec)
            res.novel.append(_novel_record(batch, b, names, is_ref, scores, copied))
            keep = [j for j in range(v) if is_ref is None or not bool(is_ref[b, j])]
            res.generated_novel.append(_views_record(batch, b, names, keep, gen_scores, "generated/"))
            res.placement.append(float(scale[b]))
            if len(res.grid_rows) < opts.grid_scenes:
                r = resize_images(ref[b][None, None].float(), h)[0]
                res.grid_rows.append(torch.cat([r, gen_r[b], rendered[b], target[b]]).float().cpu())
        if not res.grid_labels:
            gnames = [_view_name(diffusion.rig, j) for j in range(gen_r.shape[1])]
            res.grid_labels = (["reference"] + [f"gen:{n}" for n in gnames] + [f"render:{n}" for n in names] +
                               [f"gt:{n}" for n in names])
    res.metric_names = list(scores) if res.scenes else ["psnr", "ssim"]
    return res


@dataclasses.dataclass
class CheckpointInfo:
    label: str
    path: Path
    stage: str
    rig: Rig


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "_", "__".join(parts)).strip("_")


def preflight(opts: EvalSettings) -> tuple[list[CheckpointInfo], CheckpointInfo | None, list[Labelled],
                                                  list[dict[str, Any]], list[Rig | None]]:
    """Everything that can be checked without loading a model or data: files, stages, rigs, the rig guard."""
    if opts.batches < 1 or opts.batch_size < 1:
        raise ValueError(f"--batches and --batch-size must be >= 1, got {opts.batches} and {opts.batch_size}")
    if opts.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {opts.steps}")
    if opts.heldout_views < 0:
        raise ValueError(f"--heldout-views must be >= 0, got {opts.heldout_views}")
    if opts.diffusion is None and (opts.heldout_views or opts.diffusion_ema is not None):
        raise ValueError("--heldout-views and --diffusion-ema are for chained rows: they need --diffusion")
    ckpts, trust = [], opts.trust_checkpoint
    for spec in unique_labels([parse_labelled(s) for s in opts.ckpt]):
        ckpts.append(CheckpointInfo(spec.label, spec.path, checkpoint_stage(spec.path, trust),
                                    checkpoint_rig(spec.path, trust)))
    diffusion = None
    if opts.diffusion is not None:
        d = parse_labelled(opts.diffusion)
        diffusion = CheckpointInfo(d.label, d.path, checkpoint_stage(d.path, trust), checkpoint_rig(d.path, trust))
        if diffusion.stage != "diffusion":
            raise ValueError(f"--diffusion {d.path}: is a {diffusion.stage} checkpoint")
        bad = [c for c in ckpts if c.stage != "reconstruction"]
        if bad:
            raise ValueError(f"--ckpt {bad[0].path}: is a {bad[0].stage} checkpoint; with --diffusion every --ckpt "
                             "must be a reconstruction checkpoint (the chained pipeline)")
        for c in ckpts:  # the rig guard, before any work
            check_rigs(diffusion.rig, c.rig, allow_mismatch=opts.allow_rig_mismatch)
    data = unique_labels([parse_labelled(s) for s in opts.data])
    configs = [load_data_config(d.path) for d in data]
    rigs: list[Rig | None] = [load_rig(r) for r in opts.rig] if opts.rig else [None]
    return ckpts, diffusion, data, configs, rigs


def diffusion_label(opts: EvalSettings) -> str | None:
    """The ``--diffusion`` checkpoint's label (chained rows name it: one results folder per diffusion model)."""
    return parse_labelled(opts.diffusion).label if opts.diffusion else None


def _short(value: Any) -> Any:
    """A rig dict by its name, anything else as is (for reports)."""
    return value.get("name", "?") if isinstance(value, dict) else value


def _rig_fields(model_rig: Rig, eval_rig: Rig) -> dict[str, Any]:
    diff = model_rig.compare(eval_rig)
    return {"rig_match": diff.ok, "rig_worst_angle_deg": round(diff.worst_angle_deg, 4),
            "rig_worst_distance": round(diff.worst_distance, 5), "rig_diff": diff.to_dict()}


def evaluate_row(ckpt: CheckpointInfo, module: Any, diffusion: Any, data: Labelled, data_cfg: dict[str, Any],
                 rig: Rig | None, opts: EvalSettings, lpips: Any, device: torch.device) -> dict[str, Any]:
    """One checkpoint x data x rig row (module docstring)."""

    mode = "chained" if diffusion is not None else ckpt.stage
    size = int(module.hparams.image_size)
    stage = "reconstruction" if mode == "reconstruction" else "diffusion"
    pl.seed_everything(opts.seed, verbose=False)
    loader, dm = make_loader(data_cfg, stage, rig.to_dict() if rig is not None else None, size, opts,
                             chained=mode == "chained")
    eval_rig: Rig = dm.rig
    row: dict[str, Any] = {
        "checkpoint": ckpt.label, "checkpoint_path": str(ckpt.path), "stage": ckpt.stage, "mode": mode,
        "checkpoint_rig": ckpt.rig.name, "checkpoint_rig_fingerprint": ckpt.rig.fingerprint,
        "data": data.label, "data_path": str(data.path), "rig": eval_rig.name, "rig_fingerprint": eval_rig.fingerprint,
        "rig_views": list(eval_rig.view_names), "image_size": size, **_rig_fields(ckpt.rig, eval_rig),
        "cameras": {s.name: source_cameras(s) for s in (dm.val_sources if opts.split == "val" else dm.train_sources)},
    }
    trained = {k: module.hparams.get(k) for k in SHARED_SETTINGS}
    trained["rig"] = ckpt.rig.to_dict()
    served = {**{k: data_cfg.get(k) for k in SHARED_SETTINGS}, "rig": eval_rig.to_dict()}
    if mode == "reconstruction" and opts.num_input_views:
        served["num_input_views"] = opts.num_input_views
    differ = differences(trained, served)
    row["shared_settings_differ"] = {k: [_short(a), _short(b)] for k, (a, b) in differ.items()}
    if differ:  # reported for every shared key at once, not only the rig
        log.warning("%s x %s: the checkpoint was trained with other settings than this data's: %s", ckpt.label,
                    data.label, "; ".join(f"{k} {a} (checkpoint) vs {b} (data)"
                                          for k, (a, b) in row["shared_settings_differ"].items()))
    if diffusion is not None:
        row["diffusion_rig"] = diffusion.rig.name
        row["diffusion_rig_match"] = diffusion.rig.compare(ckpt.rig).ok
        row["diffusion"] = diffusion_label(opts)
    t0 = time.time()
    if mode == "reconstruction":
        res = evaluate_reconstruction(module, loader, eval_rig, opts, lpips, device)
    elif mode == "diffusion":
        res = evaluate_diffusion(module, loader, eval_rig, opts, lpips, device)
    else:
        res = evaluate_chained(diffusion, module, loader, eval_rig, opts, lpips, device)
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
    if res.placement:
        row["placement"] = {"rule": PLACEMENT_RULE, "scale_min": min(res.placement),
                            "scale_max": max(res.placement)}
    if res.generated and res.generated_views:
        row["generated_metrics"] = summarize(res.generated_views, [
            m for m in res.metric_names if f"generated/{m}" in res.generated_views[0]], prefix="generated/")
    if res.novel and res.novel[0]["views"]:
        names = [m for m in NOVEL_METRICS if f"novel/{m}" in res.novel[0]]
        row["novel_metrics"] = summarize(res.novel, names, prefix="novel/")
        row["copy_ref_metrics"] = summarize(res.novel, names, prefix="copy_ref/")
    if res.generated_novel and res.generated_novel[0]["views"]:
        names = [m.removeprefix("generated/") for m in res.generated_novel[0] if m.startswith("generated/")]
        row["generated_novel_metrics"] = summarize(res.generated_novel, names, prefix="generated/")
    rig_views = list(eval_rig.view_names)  # held-out cameras: the data's views beyond the rig's
    heldout = heldout_records(res.scenes, rig_views, res.metric_names)
    if heldout:
        row["heldout_metrics"] = summarize(heldout, res.metric_names)
        copy_names = [m for m in res.metric_names if res.novel and f"copy_ref/{m}" in res.novel[0]]
        copied = heldout_records(res.novel, rig_views, [f"copy_ref/{m}" for m in copy_names])
        if copied:
            row["heldout_copy_ref_metrics"] = summarize(copied, copy_names, prefix="copy_ref/")
    grid = write_grid(opts.out / "grids" / f"{_slug(ckpt.label, data.label, eval_rig.name)}.png", res.grid_rows,
                      res.grid_labels, [f"#{i}" for i in range(len(res.grid_rows))], res.grid_tiles)
    row["grid"] = str(grid.relative_to(opts.out)) if grid is not None else None
    return row


def load_lpips_metric(opts: EvalSettings, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """(LPIPS module or None, a JSON note): only from local weight files, never downloaded nor estimated."""
    heads = opts.lpips_weights or torchmetrics_lpips_heads()  # torchmetrics ships LPIPS' VGG heads
    if not (heads and opts.vgg_weights):
        note = "left out (no local weights: pass --vgg-weights, and --lpips-weights without torchmetrics' heads)"
        log.warning("LPIPS %s", note)
        return None, {"computed": False, "note": note}
    missing = [str(p) for p in (heads, opts.vgg_weights) if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"LPIPS weights not found: {', '.join(missing)}")

    lp = load_lpips(str(opts.vgg_weights), str(heads))
    return lp.to(device), {"computed": True, "note": f"VGG LPIPS from {heads} + {opts.vgg_weights}",
                           "lpips_weights": str(heads), "vgg_weights": str(opts.vgg_weights)}


def run_evaluation(opts: EvalSettings) -> dict[str, Any]:
    """The whole evaluation (module docstring); returns the results dict (also written to ``opts.out``)."""
    ckpts, diffusion_info, data, configs, rigs = preflight(opts)
    device = resolve_device(opts.device)
    lpips, lpips_note = load_lpips_metric(opts, device)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()},
        "settings": {"split": opts.split, "batches": opts.batches, "batch_size": opts.batch_size, "seed": opts.seed,
                     "device": str(device), "ema": opts.ema, "reference_view": opts.reference_view,
                     "num_input_views": opts.num_input_views, "input_views": opts.input_views,
                     "steps": opts.steps, "guidance": opts.guidance,
                     "scheduler": opts.scheduler, "chain_input_views": opts.chain_input_views,
                     "heldout_views": opts.heldout_views, "diffusion_ema": opts.use_diffusion_ema,
                     "precision": opts.precision,
                     "diffusion": str(diffusion_info.path) if diffusion_info else None,
                     "diffusion_rig": diffusion_info.rig.name if diffusion_info else None,
                     "allow_rig_mismatch": opts.allow_rig_mismatch},
        "lpips": lpips_note,
        "checkpoints": [{"label": c.label, "path": str(c.path), "stage": c.stage, "rig": c.rig.name,
                         "rig_fingerprint": c.rig.fingerprint} for c in ckpts],
        "data": [{"label": d.label, "path": str(d.path)} for d in data],
        "rigs": [r.name for r in rigs if r is not None] or None,
        "rows": [],
    }
    diffusion = None
    if diffusion_info is not None:
        diffusion = load_stage(diffusion_info.path, "diffusion", ema=opts.use_diffusion_ema, device=device,
                               trust=opts.trust_checkpoint)
    for ckpt in progress(ckpts, "checkpoints", unit="checkpoint"):
        module = load_stage(ckpt.path, ckpt.stage, ema=opts.ema, device=device, trust=opts.trust_checkpoint,
                            rasterizer="auto", compile=False)
        for d, cfg in zip(data, configs):
            for rig in rigs:
                rig_name = rig.name if rig is not None else cfg.get("rig", "(data rig)")
                log.info("evaluating %s x %s x %s", ckpt.label, d.label, rig_name)
                try:
                    row = evaluate_row(ckpt, module, diffusion, d, cfg, rig, opts, lpips, device)
                except (ValueError, FileNotFoundError, RuntimeError) as e:
                    log.error("%s x %s x %s failed: %s", ckpt.label, d.label, rig_name, e)
                    row = {"checkpoint": ckpt.label, "checkpoint_path": str(ckpt.path), "stage": ckpt.stage,
                           "mode": "chained" if diffusion is not None else ckpt.stage, "checkpoint_rig": ckpt.rig.name,
                           "data": d.label, "data_path": str(d.path), "rig": str(rig_name),
                           "error": f"{type(e).__name__}: {e}"}
                    if rig is not None:
                        row.update(_rig_fields(ckpt.rig, rig))
                results["rows"].append(row)
                write_results(opts.out, results)
                if row.get("metrics"):
                    m = row["metrics"]["all"]
                    log.info("  PSNR %s  PSNR fg %s  SSIM %s  (%d scenes, rig match %s)", fmt(m["psnr"], 2),
                             fmt(m.get("psnr_fg"), 2), fmt(m["ssim"], 4), row["scenes"], row["rig_match"])
        del module
    write_results(opts.out, results)
    return results


