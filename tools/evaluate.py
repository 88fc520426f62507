"""Checkpoint evaluation runs: every checkpoint x data set x rig, one table.

    python -m tools.evaluate --ckpt [LABEL=]CKPT [--ckpt ...] --data [LABEL=]CONFIG [--data ...] [--rig NAME ...]
        --out DIR [--batches 4] [--batch-size 2] [--device cpu|cuda] [--split val|train] [--seed 0]
        [--diffusion CKPT] [--allow-rig-mismatch] [--steps 50] [--guidance 3.0] [--scheduler ddim]
        [--reference-view 0] [--num-input-views N] [--input-views random|spread|first] [--chain-input-views all|0,1,...]
        [--heldout-views N] [--ema] [--diffusion-ema | --no-diffusion-ema] [--precision fp32|bf16]
        [--lpips-weights FILE --vgg-weights FILE] [--grid-scenes 4] [--num-workers 0] [--trust-checkpoint]

A checkpoint is a Lightning ``.ckpt`` or an export folder; its stage comes from its metadata
(``checkpoint["mvlift"]["stage"]``, the export's mvlift.json). A ``.ckpt`` is read without unpickling
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
                    reference into every view (``copy_ref/*``; ``lightning_modules.diffusion.module.copy_reference_views``).
    chained         ``--diffusion D`` with GS-LRM checkpoints: D's generated views, with D's rig cameras (the views'
                    true cameras), are lifted by the GS-LRM and the Gaussians rendered at the data's ground-truth
                    cameras placed through the reference camera (the data's cameras need not be the rig's: a real
                    recording is Phase 2; rule and scale in the README), compared with the ground truth (all rig views, the reference view included: the
                    per-view columns show it apart). Before any work the rig guard compares D's rig with
                    every GS-LRM's rig: a mismatch stops with an error naming both rigs and the per-view difference,
                    unless ``--allow-rig-mismatch`` (a logged warning; the row says ``rig match: no``). The
                    generated views' own metrics go into the ``generated/*`` columns (``generated_novel/*``: the
                    rig's views but the photo's). ``--heldout-views N`` also renders the data's next N views after
                    the rig's (cameras no generated view had) and scores them apart: ``heldout/*``, with copying the
                    photo there, ``heldout_copy_ref/*``. A source with observed captures (``truth: clean``) gives
                    the model its captured photo while the views it is scored on are the scene's clean render.

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
Groups: all, per kind (synthetic / realistic / real), per source name, per view name. The data are the split's draws of the
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
import sys
from collections.abc import Sequence
from pathlib import Path

from datamodules.views import INPUT_VIEW_MODES
from lightning_modules.artifacts import trusting
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING
from lightning_modules.diffusion.sampling import MAX_GUIDANCE
from lightning_modules.evaluation import EvalSettings, run_evaluation
from lightning_modules.pipeline import SAMPLING_PRECISIONS
from tools import HelpFormatter, add_config_option, log_to_stderr, number, parse_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter, epilog=__doc__)
    p.add_argument("--ckpt", action="append", required=True,
                   help="[LABEL=]PATH of a .ckpt or export folder (repeat for several)")
    p.add_argument("--data", action="append", required=True, help="[LABEL=]data config YAML (repeat for several)")
    p.add_argument("--rig", action="append", default=[],
                   help="evaluation rig name or file (repeat for several); default: each data config's rig")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batches", type=number(int, 1), default=4, help="batches per row")
    p.add_argument("--batch-size", type=number(int, 1), default=2)
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split of the data")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--diffusion", default=None, help="[LABEL=]diffusion checkpoint: evaluate the chained pipeline")
    p.add_argument("--allow-rig-mismatch", action="store_true",
                   help="chained: go on (with a warning) when the diffusion rig differs from a GS-LRM's rig")
    p.add_argument("--steps", type=number(int, 1), default=SAMPLING.steps, help="diffusion sampling steps")
    p.add_argument("--guidance", type=number(float, 0, MAX_GUIDANCE), default=SAMPLING.guidance, help="classifier-free guidance scale")
    p.add_argument("--scheduler", default=SAMPLING.scheduler, help="sampler: ddim | ddpm | euler | dpm")
    p.add_argument("--reference-view", type=number(int, 0), default=SAMPLING.reference_view,
                   help="diffusion / chained: the rig view used as input")
    p.add_argument("--num-input-views", type=number(int, 1), default=None,
                   help="reconstruction: override the data config's num_input_views")
    p.add_argument("--input-views", choices=INPUT_VIEW_MODES, default=None,
                   help="reconstruction: override the data config's input_views (how the inputs are drawn: random, "
                        "spread round the subject, or first: the scene's first N views, a rig's)")
    p.add_argument("--chain-input-views", default="all",
                   help="chained: generated views given to the GS-LRM (all, or indices / view names)")
    p.add_argument("--heldout-views", type=number(int, 0), default=0,
                   help="chained: also render and score the data's next N views after the rig's (held-out cameras, "
                        "the heldout/* columns)")
    p.add_argument("--precision", choices=SAMPLING_PRECISIONS, default="fp32",
                   help="diffusion sampling: fp32, or bf16 autocast on a GPU (about half the time)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of every checkpoint")
    p.add_argument("--diffusion-ema", action=argparse.BooleanOptionalAction, default=None,
                   help="chained: whether the diffusion checkpoint's EMA weights are used, apart from --ema (which "
                        "otherwise picks EMA weights for every checkpoint): e.g. a diffusion export's EMA UNet with "
                        "GS-LRM exports that have none")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load .ckpt files that need more than plain tensors and values with full unpickling (can "
                        "run code from the file: only for files you trust)")
    p.add_argument("--lpips-weights", type=Path, default=None,
                   help="local LPIPS linear heads (lpips' vgg.pth); default: the ones torchmetrics ships")
    p.add_argument("--vgg-weights", type=Path, default=None, help="local torchvision VGG16 weights for LPIPS")
    p.add_argument("--grid-scenes", type=number(int, 0), default=4, help="scenes per image grid")
    p.add_argument("--num-workers", type=number(int, 0), default=0, help="data loading workers")
    add_config_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args is None:  # a refused option (named on stderr)
        return 2
    log_to_stderr()
    try:
        with trusting(args.trust_checkpoint):  # also LPIPS / VGG weights and files the models read when built
            results = run_evaluation(EvalSettings(**vars(args)))
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
