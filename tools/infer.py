"""One photo -> the diffusion model's views -> 3D Gaussians, per image.

    python -m tools.infer IMAGE [IMAGE ...] --diffusion CKPT --reconstruction CKPT --out DIR
        [--steps 50] [--guidance 3.0] [--seed 0] [--scheduler ddim] [--allow-rig-mismatch]
        [--background-removal alpha|none|MODULE:FUNCTION] [--background COLOR] [--input-views all|0,1,...]
        [--center auto|always|never] [--ema] [--device cpu|cuda] [--turntable-frames 36] [--turntable-size 256] [--fps 12] [--trust-checkpoint]
        [--view [--view-port 8080]]

CKPT: a Lightning ``.ckpt`` or an export folder of the stage (the stage is read from the checkpoint's metadata).
A ``.ckpt`` is read without unpickling code (``weights_only``, ``lightning_modules.artifacts``); one that needs more
is refused naming the file and the types it asks for; ``--trust-checkpoint`` loads it anyway (only for files you
trust: unpickling can run code).

Order of work: (1) the rig guard — the diffusion checkpoint's rig and the reconstruction checkpoint's rig must
match, else an error naming both rigs with the per-view difference (``--allow-rig-mismatch``: a logged warning, and
the reconstruction still gets the views' true cameras, those of the diffusion rig); (2) every image is read and
checked (unreadable or smaller than 16 px -> an error naming the file) before any model is loaded;
(3) per image: background removal (datamodules.photos); a photo of any size is centred on its alpha/mask box with the
DataModule's centring (``datamodules.prepare.center_photo``; ``--center``: auto = non-square photos, always, never);
``DiffusionModule.sample`` (the cameras come from the diffusion
model's rig, never from the caller), the views resized to the reconstruction model's size with the rig's cameras at
that size, ``ReconstructionModule.reconstruct``, then the outputs.

Background (photos with alpha are composited over it; the turntable is rendered over it): ``--background`` when given,
else the one color the diffusion model's training images were composited over (``checkpoint["mvlift"]["background"]``
or the export's mvlift.json, see ``lightning_modules.training_background``), else the reconstruction model's, else
white. When a model's training backgrounds varied (``random`` / ``as_is`` sources) or were not recorded (older or
converted checkpoints), white is kept and a note says so; info.json records the choice and both records.

Outputs per image, ``<out>/<image stem>/`` (the stem with characters other than letters, digits and ``_ . + = @ -``
made ``_``, and a stem of dots only, e.g. ``..`` of ``...png``, spelled with ``_``: always one folder below
``--out``; a name that a symlink would lead outside ``--out`` is an error). Each image's folder is written under a
temporary name and renamed into place when complete (an earlier one of the same name is replaced whole): a failure, a
full disk included, leaves no partial folder and is an error naming the image and the folder.
    input.png           the reference as the diffusion model saw it (after background removal)
    views/cam_XXX.png   the generated views in rig order (RGB, diffusion model's size)
    cameras.json        their cameras: FaceLift's opencv_cameras.json layout (w2c + fx fy cx cy, geometry.camera_files)
    gaussians.ply       the Gaussians (3DGS PLY, render.load_ply reads it)
    turntable.gif       a turntable around the rig's up axis at its radius and mean elevation
                        (``--turntable-format gif,mp4`` adds turntable.mp4, H.264: needs imageio-ffmpeg)
    info.json           checkpoints, rigs and the rig check, sampling settings, seed, background removal, timings
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.io import background_color
from datamodules.photos import BackgroundRemoval, ImageInputError, read_image
from datamodules.prepare import center_photo
from geometry.camera_files import contained_path
from geometry.files import atomic_directory
from geometry.images import save_png
from geometry.progress import progress
from lightning_modules.artifacts import trusting
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING
from lightning_modules.diffusion.sampling import MAX_GUIDANCE, Sampling
from lightning_modules.loading import load_stage, resolve_device
from lightning_modules.pipeline import (
    Turntable,
    check_stages_and_rigs,
    choose_background,
    parse_input_views,
    write_photo_outputs,
)
from tools import HelpFormatter, add_config_option, log_to_stderr, number, parse_args

log = logging.getLogger("mvlift.infer")

MIN_SIZE = 16
_UNSAFE_NAME = re.compile(r"[^\w.+=@-]")


def output_name(path: Path) -> str:
    """The name of ``path``'s output folder: its stem with every character but letters, digits and ``_ . + = @ -``
    made ``_``, and a stem of dots only (``..`` of ``...png``, ``.`` of ``..png``) spelled with ``_`` — one plain
    folder name, never ``.`` or ``..``."""
    name = _UNSAFE_NAME.sub("_", path.stem)
    return "_" * len(name) if not name.strip(".") else name


class OutputError(ValueError):
    """An image's outputs could not be written (a full disk, no permission): its folder is left out whole."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.infer", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter, epilog=__doc__)
    p.add_argument("images", nargs="+", type=Path, help="input photos (PNG with or without alpha, JPEG, ...)")
    p.add_argument("--diffusion", required=True, type=Path, help="diffusion .ckpt or export folder")
    p.add_argument("--reconstruction", required=True, type=Path, help="reconstruction (GS-LRM) .ckpt or export")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per image)")
    p.add_argument("--steps", type=number(int, 1), default=SAMPLING.steps, help="diffusion sampling steps")
    p.add_argument("--guidance", type=number(float, 0, MAX_GUIDANCE), default=SAMPLING.guidance,
                   help=f"classifier-free guidance scale (1 = off; 0 to {MAX_GUIDANCE:g})")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0, help="sampling seed (the same for every image)")
    p.add_argument("--scheduler", default=SAMPLING.scheduler, help="sampler: ddim | ddpm | euler | dpm")
    p.add_argument("--reference-view", type=number(int, 0), default=SAMPLING.reference_view,
                   help="the rig view each photo is taken as (index; used by diffusion models with camera_rays)")
    p.add_argument("--allow-rig-mismatch", action="store_true",
                   help="go on (with a logged warning) when the two checkpoints' rigs differ")
    p.add_argument("--background-removal", default="alpha",
                   help="alpha (composite an alpha channel over the background), none, or a local MODULE:FUNCTION")
    p.add_argument("--center", default="auto", choices=["auto", "always", "never"],
                   help="centre the photo on its alpha/mask box as the DataModule centres views (object 0.6 of the "
                        "frame; without a mask: padded to a square): auto = non-square photos only")
    p.add_argument("--background", default=None,
                   help="background color: white | gray | black | R,G,B (default: the one the models were trained "
                        "on, as stored in the checkpoints; white when it varied or is not recorded)")
    p.add_argument("--input-views", default="all",
                   help="generated views given to the reconstruction model: all, or comma-separated view indices "
                        "or names of the rig")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of both checkpoints")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load .ckpt files that need more than plain tensors and values with full unpickling (can "
                        "run code from the file: only for files you trust)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--turntable-frames", type=number(int, 1), default=36)
    p.add_argument("--turntable-size", type=number(int, MIN_SIZE), default=256)
    p.add_argument("--fps", type=number(int, 1), default=12)
    p.add_argument("--turntable-format", default="gif", type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                   help="gif, mp4 or gif,mp4 (mp4: H.264 through imageio-ffmpeg, the `video` extra)")
    p.add_argument("--view", action="store_true",
                   help="at the end, serve the results in the browser viewer (tools.view; Ctrl-C stops it)")
    p.add_argument("--view-port", type=number(int, 0, 65535), default=8080, help="port of --view's page")
    add_config_option(p)
    return p


def run(args: argparse.Namespace) -> list[Path]:
    """The whole command (module docstring); returns the per-image output folders."""
    sampling = Sampling(args.steps, args.guidance, args.scheduler, args.reference_view)
    turntable = Turntable(args.turntable_frames, args.turntable_size, args.fps, tuple(args.turntable_format))
    stems: dict[str, Path] = {}
    for path in args.images:
        name = output_name(path)
        if name in stems:
            raise ValueError(f"{path} and {stems[name]} would both write to {args.out / name}; their outputs "
                             "would overwrite each other")
        stems[name] = path
        contained_path(args.out, name, f"{path}: output folder")  # a symlink there must not lead outside --out
    trust = args.trust_checkpoint
    rig_report = check_stages_and_rigs(args.diffusion, args.reconstruction, args.allow_rig_mismatch, trust)
    spec = None if args.background is None else background_color(args.background)
    background, background_report = choose_background(spec, args.diffusion, args.reconstruction, trust)
    removal = BackgroundRemoval(args.background_removal, background)
    prepared = []
    for path in args.images:  # every image is checked before any model is loaded
        rgb, alpha = read_image(path)
        if min(rgb.shape[-2:]) < MIN_SIZE:
            raise ImageInputError(f"{path}: image is {rgb.shape[-1]}x{rgb.shape[-2]} px, smaller than {MIN_SIZE} px")
        image, mask, how = removal(rgb, alpha, str(path))
        if args.center == "always" or (args.center == "auto" and rgb.shape[-1] != rgb.shape[-2]):
            image = center_photo(rgb, mask, background) if mask is not None else center_photo(image, None, background)
            how += f"; centred on its {'mask' if mask is not None else 'frame'} box ({image.shape[-1]} px square)"
        elif image.shape[-1] != image.shape[-2]:
            raise ImageInputError(f"{path}: image is {rgb.shape[-1]}x{rgb.shape[-2]} px and --center never: the model "
                                  "takes square images")
        prepared.append((path, image, how))
    device = resolve_device(args.device)
    diffusion = load_stage(args.diffusion, "diffusion", ema=args.ema, device=device, trust=trust)
    reconstruction = load_stage(args.reconstruction, "reconstruction", ema=args.ema, device=device, trust=trust,
                                rasterizer="auto", compile=False)
    input_views = parse_input_views(args.input_views, diffusion.rig)
    model_size = int(diffusion.hparams.image_size)
    outputs = []
    for path, image, how in progress(prepared, "photos", unit="photo"):
        if image.shape[-1] < model_size:
            log.warning("%s: %d px, upsampled to the diffusion model's %d px", path, image.shape[-1], model_size)
        name = output_name(path)
        out_dir = contained_path(args.out, name, f"{path}: output folder")
        try:
            with atomic_directory(out_dir) as tmp:  # complete or absent: never a partial folder
                save_png(tmp / "input.png", image)
                with torch.no_grad():
                    record = write_photo_outputs(path.stem, image, diffusion, reconstruction, tmp, sampling,
                                                 args.seed, input_views, background, turntable)
                info = {"image": str(path), "output": name, "background_removal": how,
                        "background": background.tolist(), "background_from": background_report["from"],
                        "trained_backgrounds": background_report["trained"], "diffusion": str(args.diffusion),
                        "reconstruction": str(args.reconstruction), "ema": args.ema, "rigs": rig_report,
                        "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                        "scheduler": args.scheduler, "device": str(device), **record}
                (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        except OSError as e:  # a full disk, a read-only folder: named, and nothing partial is left
            raise OutputError(f"{path}: could not write its outputs to {out_dir} ({e.strerror or e}); nothing of "
                              "it was kept") from e
        log.info("%s -> %s (%d Gaussians, %.1f s)", path, out_dir, record["num_gaussians"],
                 record["seconds"]["total"])
        outputs.append(out_dir)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args is None:  # a refused option (named on stderr)
        return 2
    log_to_stderr()
    try:
        with trusting(args.trust_checkpoint):  # also weights files the models read while they are built
            outputs = run(args)
    except (ValueError, OSError) as e:
        print(f"infer: error: {e}", file=sys.stderr)
        return 2
    if args.view:
        from geometry.render.viewer import serve_until_interrupted  # the viewer extra (viser), only when asked for

        return serve_until_interrupted(outputs[0] if len(outputs) == 1 else args.out, port=args.view_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
