"""Write a FaceLift-layout data set: procedural mouse-like scenes, or a diffusion model's views of real inputs.

    python -m tools.synthesize --out DIR --scenes N --views V --size S --rig NAME [--realistic] [--seed K]
        [--val-fraction 0.1] [--camera-jitter-deg J] [--overwrite]
    python -m tools.synthesize --from-diffusion CKPT --inputs DATA --out DIR [--steps 50] [--guidance 3.0]
        [--seed K] [--reference-view 0] [--kind real|realistic|synthetic|all] [--limit N] [--size S] [--scheduler ddim]
        [--matting opaque|MODULE:FUNCTION] [--val-fraction 0.1] [--ema] [--device cpu|cuda] [--skip-existing]
        [--reconstruction CKPT [--allow-rig-mismatch]] [--trust-checkpoint] [--with-truth] [--batch-size 1]

The layout, splits, reference preparation and ``--from-diffusion``'s sampling, seeding and ``--skip-existing``:
:mod:`datamodules.synthesis`; the views come from :mod:`lightning_modules.pipeline` with the diffusion model's rig
cameras. ``--reconstruction CKPT``: the rig guard of ``tools.infer`` runs first, from checkpoint metadata only (a
mismatch: exit code 2, nothing written, unless ``--allow-rig-mismatch``; recorded as ``rig_check``).
``--trust-checkpoint`` loads a ``.ckpt`` that needs more than plain tensors (only files you trust).
``--with-truth`` (Phase 3 as training data): each sample also holds the input scene's own views after the generated
ones, its cameras placed in the rig's frame as chained ``tools.evaluate`` places them; a GS-LRM fit with
``input_views: first`` takes the generated views in and is supervised by the true ones.
``--batch-size N`` generates N references at once (one seed per batch: seed + its first sample's number).
``--out`` must be new or empty: scenes written among others would mix with them and ``dataset.json`` would describe
only the new ones. ``--overwrite`` replaces an earlier tools.synthesize data set there (cleared just before writing;
a folder holding anything else is refused, nothing deleted); ``--skip-existing`` keeps its finished samples.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.synthesis import (
    GeneratedViews,
    Procedural,
    check_output_folder,
    clear_output_folder,
    input_scenes,
    matting_callable,
    write_generated_dataset,
    write_procedural_dataset,
)
from geometry.cameras import cameras_into_frame
from geometry.rig import available_rigs
from lightning_modules.artifacts import trusting
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING
from lightning_modules.diffusion.sampling import MAX_GUIDANCE, Sampling
from lightning_modules.evaluation.runner import rig_to_data_frame
from lightning_modules.loading import load_stage, resolve_device
from lightning_modules.pipeline import (
    SAMPLING_PRECISIONS,
    check_stages_and_rigs,
    generate_views,
    sampling_for_data_view,
)
from tools import log_to_stderr, number, parse_args

log = logging.getLogger("mvlift.synthesize")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.synthesize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output directory (created; must be new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier tools.synthesize data set in --out (cleared before writing; a folder "
                        "holding anything else is refused)")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    p.add_argument("--val-fraction", type=number(float, 0, 0.99), default=0.1,
                   help="fraction of the scenes in data_val.txt, in [0, 0.99]")
    p.add_argument("--size", type=number(int, 8), default=None,
                   help="square image size in px (procedural: default 128; diffusion: default the model's size)")
    proc = p.add_argument_group("procedural scenes")
    proc.add_argument("--scenes", type=number(int, 1), default=None, help=f"number of scenes (default {PROCEDURAL['scenes']})")
    proc.add_argument("--views", type=number(int, 1), default=None,
                      help="views per scene: the rig's views in order, then random views on its sphere "
                           f"(default {PROCEDURAL['views']})")
    proc.add_argument("--rig", default=None,
                      help=f"rig name or file (shipped: {', '.join(available_rigs())}; default {PROCEDURAL['rig']})")
    proc.add_argument("--realistic", action="store_true", default=None,
                      help="bake background, lighting change, pose error, blur and noise into the images")
    proc.add_argument("--camera-jitter-deg", type=number(float, 0, 180), default=None,
                      help="rotate each rig camera about the target by up to this angle (saved cameras include it)")
    diff = p.add_argument_group("diffusion views of real inputs (--from-diffusion)")
    diff.add_argument("--from-diffusion", type=Path, default=None, metavar="CKPT",
                      help="diffusion .ckpt or export folder: write its views of --inputs")
    diff.add_argument("--inputs", type=Path, default=None, metavar="DATA",
                      help="a data config (YAML) or a folder of FaceLift-layout sample directories")
    diff.add_argument("--steps", type=number(int, 1), default=None, help=f"sampling steps (default {DIFFUSION['steps']})")
    diff.add_argument("--guidance", type=number(float, 0, MAX_GUIDANCE), default=None,
                      help=f"classifier-free guidance scale (default {DIFFUSION['guidance']})")
    diff.add_argument("--scheduler", default=None,
                      help=f"sampler: ddim | ddpm | euler | dpm (default {DIFFUSION['scheduler']})")
    diff.add_argument("--reference-view", type=number(int, 0), default=None,
                      help="which view of each input scene is the reference (default 0); a diffusion model with "
                           "camera rays is told the photo is that rig view (it must be one of the rig's)")
    diff.add_argument("--kind", choices=("real", "realistic", "synthetic", "all"), default=None,
                      help="data config: sources of this kind (default real; realistic: synthetic sources with "
                           "realistic: true)")
    diff.add_argument("--limit", type=number(int, 1), default=None, help="at most N scenes per source and split")
    diff.add_argument("--matting", default=None,
                      help="alpha of the generated views: opaque (default) or a local MODULE:FUNCTION")
    diff.add_argument("--ema", action="store_true", default=None, help="use the checkpoint's EMA weights")
    diff.add_argument("--with-truth", action="store_true", default=None,
                      help="also write each input scene's own views (images, masks, cameras in the rig's frame) after "
                           "the generated ones: Phase-3 training data")
    diff.add_argument("--precision", choices=SAMPLING_PRECISIONS, default=None,
                      help="sampling: fp32 (default), or bf16 autocast on a GPU (about half the time)")
    diff.add_argument("--batch-size", type=number(int, 1), default=None,
                      help="references generated at once (default 1; a batch is seeded with seed + its first sample)")
    diff.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default cpu)")
    diff.add_argument("--skip-existing", action="store_true", default=None,
                      help="keep finished samples of an earlier run with the same settings")
    diff.add_argument("--reconstruction", type=Path, default=None, metavar="CKPT",
                      help="reconstruction .ckpt or export folder: its rig must be the diffusion model's (rig guard)")
    diff.add_argument("--allow-rig-mismatch", action="store_true", default=None,
                      help="with --reconstruction: go on (with a logged warning) when the two rigs differ")
    diff.add_argument("--trust-checkpoint", action="store_true", default=None,
                      help="load .ckpt files that need more than plain tensors and values with full unpickling "
                           "(can run code from the file: only for files you trust)")
    return p


PROCEDURAL = {k: getattr(Procedural(), k) for k in ("scenes", "views", "rig", "realistic", "camera_jitter_deg")}
DIFFUSION = {"inputs": None, "steps": SAMPLING.steps, "guidance": SAMPLING.guidance, "scheduler": SAMPLING.scheduler,
             "reference_view": SAMPLING.reference_view, "kind": "real",
             "limit": None, "matting": "opaque", "ema": False, "device": "cpu", "skip_existing": False,
             "reconstruction": None, "allow_rig_mismatch": False, "trust_checkpoint": False, "with_truth": False,
             "batch_size": 1, "precision": "fp32"}


def _fill_mode_defaults(args: argparse.Namespace) -> None:
    """Mode-specific options default to None so that giving one to the other mode is an error, not ignored."""
    diffusion = args.from_diffusion is not None
    wrong = PROCEDURAL if diffusion else DIFFUSION
    given = [k for k in wrong if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        if diffusion:
            raise ValueError(f"{flags}: procedural options; with --from-diffusion the views and cameras come from "
                             "the diffusion model's rig")
        raise ValueError(f"{flags}: options of --from-diffusion, which was not given")
    for k, v in (DIFFUSION if diffusion else PROCEDURAL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if not diffusion and args.size is None:
        args.size = Procedural().size


def synthesize(args: argparse.Namespace) -> Path:
    """The procedural data set of parsed ``args``; returns the dataset.json path."""
    p = Procedural(args.scenes, args.views, args.rig, args.size, args.seed, bool(args.realistic),
                   args.camera_jitter_deg, args.val_fraction)
    if args.overwrite:
        clear_output_folder(Path(args.out))
    return write_procedural_dataset(Path(args.out), p)


def synthesize_from_diffusion(args: argparse.Namespace) -> Path:
    """The diffusion model's views of ``args.inputs`` (module docstring); returns the dataset.json path."""
    g = GeneratedViews(checkpoint=Path(args.from_diffusion), inputs=args.inputs, seed=args.seed, steps=args.steps,
                       guidance=args.guidance, scheduler=args.scheduler, reference_view=args.reference_view,
                       kind=args.kind, limit=args.limit, matting=args.matting, val_fraction=args.val_fraction,
                       ema=bool(args.ema), size=args.size, with_truth=bool(args.with_truth),
                       batch_size=int(args.batch_size), precision=args.precision)
    if args.allow_rig_mismatch and args.reconstruction is None:
        raise ValueError("--allow-rig-mismatch needs --reconstruction (the checkpoint whose rig is checked)")
    rig_check = None
    if args.reconstruction is not None:  # the rig guard, before any model is built or file written
        rig_check = {"reconstruction": str(Path(args.reconstruction).resolve()),
                     **check_stages_and_rigs(Path(args.from_diffusion), Path(args.reconstruction),
                                             args.allow_rig_mismatch, args.trust_checkpoint)}
    matting_callable(args.matting)  # a bad spec fails before the model is loaded
    sampling, device = Sampling(args.steps, args.guidance, args.scheduler), resolve_device(args.device)
    model = load_stage(args.from_diffusion, "diffusion", ema=args.ema, device=device, trust=args.trust_checkpoint)
    model_size = int(model.hparams.image_size)
    items = input_scenes(Path(args.inputs), args.kind, args.limit, args.val_fraction, model.rig, model_size,
                         args.reference_view)
    if not items:
        raise ValueError(f"--inputs {args.inputs}: no scenes")

    sampling = sampling_for_data_view(sampling, model, args.reference_view)  # the photo's rig view (camera rays)

    def generate(refs: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.no_grad():
            return generate_views(model, refs.to(device), sampling, seed, precision=args.precision)["images"].cpu()

    def to_rig_frame(c2w: torch.Tensor) -> torch.Tensor:  # chained evaluation's placement, through the reference
        m, _ = rig_to_data_frame(model.rig, args.reference_view, c2w[args.reference_view][None].double())
        return cameras_into_frame(c2w.double(), m[0])

    if args.overwrite:  # only now: a refusal or failure above leaves the earlier data set alone
        clear_output_folder(Path(args.out))
    return write_generated_dataset(Path(args.out), g, items, generate, model.rig, model_size,
                                   bool(args.skip_existing), rig_check, to_rig_frame)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args is None:  # a refused option (named on stderr)
        return 2
    log_to_stderr("%(message)s")
    try:
        _fill_mode_defaults(args)
        check_output_folder(Path(args.out), args.overwrite, bool(args.skip_existing))  # before any model is loaded
        if args.from_diffusion is not None:
            with trusting(bool(args.trust_checkpoint)):  # also files the model reads while it is built
                synthesize_from_diffusion(args)
        else:
            synthesize(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"synthesize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
