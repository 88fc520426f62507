"""One photo -> the diffusion model's views -> 3D Gaussians, per image.

    python -m tools.infer IMAGE [IMAGE ...] --diffusion CKPT --reconstruction CKPT --out DIR
        [--steps 50] [--guidance 3.0] [--seed 0] [--scheduler ddim] [--allow-rig-mismatch]
        [--background-removal alpha|none|MODULE:FUNCTION] [--background COLOR] [--input-views all|0,1,...]
        [--ema] [--device cpu|cuda] [--turntable-frames 36] [--turntable-size 256] [--fps 12] [--trust-checkpoint]

CKPT: a Lightning ``.ckpt`` or an export folder of the stage (the stage is read from the checkpoint's metadata).
A ``.ckpt`` is read without unpickling code (``weights_only``, ``lightning_modules.artifacts``); one that needs more
is refused naming the file and the types it asks for; ``--trust-checkpoint`` loads it anyway (only for files you
trust: unpickling can run code).

Order of work: (1) the rig guard — the diffusion checkpoint's rig and the reconstruction checkpoint's rig must
match, else an error naming both rigs with the per-view difference (``--allow-rig-mismatch``: a logged warning, and
the reconstruction still gets the views' true cameras, those of the diffusion rig); (2) every image is read and
checked (unreadable, non-square or smaller than 16 px -> an error naming the file) before any model is loaded;
(3) per image: background removal (tools.images), ``DiffusionModule.sample`` (the cameras come from the diffusion
model's rig, never from the caller), the views resized to the reconstruction model's size with the rig's cameras at
that size, ``ReconstructionModule.reconstruct``, then the outputs.

Background (photos with alpha are composited over it; the turntable is rendered over it): ``--background`` when given,
else the one color the diffusion model's training images were composited over (``checkpoint["mvlift"]["background"]``
or the export's mvlift.json, see ``lightning_modules.training_background``), else the reconstruction model's, else
white. When a model's training backgrounds varied (``random`` / ``as_is`` sources) or were not recorded (older or
converted checkpoints), white is kept and a note says so; info.json records the choice and both records.

Outputs per image, ``<out>/<image stem>/``:
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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.rig_guard import check_rigs
from geometry.camera_files import CameraFile, write_camera_file
from geometry.rig import Rig
from lightning_modules.artifacts import load_checkpoint
from lightning_modules.training_background import TOLERANCE, describe
from geometry.render import check_video_formats, render_turntable, save_scene_ply, write_turntable
from tools.checkpoints import checkpoint_rig, checkpoint_stage, load_stage, resolve_device
from tools.images import BackgroundRemoval, background_color, check_square, read_image, save_png

log = logging.getLogger("mvlift.infer")

MIN_SIZE = 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("images", nargs="+", type=Path, help="input photos (PNG with or without alpha, JPEG, ...)")
    p.add_argument("--diffusion", required=True, type=Path, help="diffusion .ckpt or export folder")
    p.add_argument("--reconstruction", required=True, type=Path, help="reconstruction (GS-LRM) .ckpt or export")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per image)")
    p.add_argument("--steps", type=int, default=50, help="diffusion sampling steps")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every image)")
    p.add_argument("--scheduler", default="ddim", help="sampler: ddim | ddpm | euler | dpm")
    p.add_argument("--allow-rig-mismatch", action="store_true",
                   help="go on (with a logged warning) when the two checkpoints' rigs differ")
    p.add_argument("--background-removal", default="alpha",
                   help="alpha (composite an alpha channel over the background), none, or a local MODULE:FUNCTION")
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
    p.add_argument("--turntable-frames", type=int, default=36)
    p.add_argument("--turntable-size", type=int, default=256)
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--turntable-format", default="gif", type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                   help="gif, mp4 or gif,mp4 (mp4: H.264 through imageio-ffmpeg, the `video` extra)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.turntable_frames < 1 or args.turntable_size < 8 or args.fps < 1:
        raise ValueError("--turntable-frames >= 1, --turntable-size >= 8 and --fps >= 1 are needed")
    check_video_formats(args.turntable_format)
    stems: dict[str, Path] = {}
    for path in args.images:
        if path.stem in stems:
            raise ValueError(f"{path} and {stems[path.stem]} have the same name stem {path.stem!r}; their outputs "
                             "would overwrite each other")
        stems[path.stem] = path


def check_stages_and_rigs(diffusion: Path, reconstruction: Path, allow_mismatch: bool,
                          trust: bool = False) -> dict[str, Any]:
    """The rig guard, from checkpoint metadata only (no model is built). Returns a JSON-able report."""
    for path, want in ((diffusion, "diffusion"), (reconstruction, "reconstruction")):
        found = checkpoint_stage(path, trust)
        if found != want:
            raise ValueError(f"--{want} {path}: is a {found} checkpoint")
    d_rig, r_rig = checkpoint_rig(diffusion, trust), checkpoint_rig(reconstruction, trust)
    diff = check_rigs(d_rig, r_rig, allow_mismatch=allow_mismatch)
    return {"diffusion_rig": d_rig.name, "diffusion_rig_fingerprint": d_rig.fingerprint,
            "reconstruction_rig": r_rig.name, "reconstruction_rig_fingerprint": r_rig.fingerprint,
            "match": diff.ok, "mismatch_allowed": (not diff.ok) and allow_mismatch, "diff": diff.to_dict()}


def stored_background(path: Path, trust: bool = False) -> dict[str, Any] | None:
    """The training-background record stored with a ``.ckpt`` (``checkpoint["mvlift"]["background"]``) or an export
    folder (mvlift.json / config.json); None when not recorded."""
    if path.is_dir():
        for name in ("mvlift.json", "config.json"):
            if (path / name).is_file():
                return json.loads((path / name).read_text()).get("background")
        return None
    ckpt = load_checkpoint(path, trust=trust, mmap=True)
    meta = ckpt.get("mvlift") if isinstance(ckpt, dict) else None
    return meta.get("background") if isinstance(meta, dict) else None


def choose_background(spec: str | None, diffusion: Path, reconstruction: Path,
                      trust: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """(background [3], report): ``spec`` (--background) when given, else the diffusion model's training background,
    else the reconstruction model's, else white with a logged note (module docstring)."""
    trained = {"diffusion": stored_background(diffusion, trust),
               "reconstruction": stored_background(reconstruction, trust)}
    if spec is not None:
        return background_color(spec), {"from": "--background", "trained": trained}
    colors = {k: rec["color"] for k, rec in trained.items() if rec and rec.get("color") is not None}
    if "diffusion" in colors:
        chosen, source = colors["diffusion"], "diffusion checkpoint"
        other = colors.get("reconstruction")
        if other is not None and max(abs(a - b) for a, b in zip(chosen, other)) > TOLERANCE:
            log.warning("the diffusion model was trained on background %s, the reconstruction model on %s: photos are "
                        "composited over the diffusion model's (pass --background to choose)", chosen, other)
    elif "reconstruction" in colors:
        chosen, source = colors["reconstruction"], "reconstruction checkpoint"
        log.info("note: diffusion model's training background: %s; using the reconstruction model's %s",
                 describe(trained["diffusion"]), chosen)
    else:
        chosen, source = [1.0, 1.0, 1.0], "default (white)"
        log.info("note: no single training background stored (diffusion: %s; reconstruction: %s); compositing over "
                 "white (pass --background to choose)", describe(trained["diffusion"]),
                 describe(trained["reconstruction"]))
    log.info("background %s (%s)", chosen, source)
    return torch.tensor(chosen, dtype=torch.float32), {"from": source, "trained": trained}


def parse_input_views(spec: str, rig: Rig) -> list[int]:
    """``all`` or comma-separated indices / view names -> sorted distinct view indices of ``rig``."""
    if spec.strip() == "all":
        return list(range(rig.num_views))
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit():
            i = int(item)
            if not 0 <= i < rig.num_views:
                raise ValueError(f"--input-views: index {i} out of range for rig {rig.name!r} ({rig.num_views} views)")
        elif item in rig.view_names:
            i = rig.view_names.index(item)
        else:
            raise ValueError(f"--input-views: {item!r} is neither an index nor a view of rig {rig.name!r} "
                             f"({', '.join(rig.view_names)})")
        out.append(i)
    if not out:
        raise ValueError("--input-views: no views given")
    return sorted(set(out))


def resize_square(images: Tensor, size: int) -> Tensor:
    """[N, 3, H, W] -> [N, 3, size, size] (antialiased bilinear; unchanged when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def lift_views(reconstruction: Any, views: Tensor, rig: Rig, input_views: list[int]) -> tuple[Any, int]:
    """Generated views [B, V, 3, S, S] in ``rig`` order -> (Gaussians, reconstruction size); the views are resized to
    the reconstruction model's size and given the rig's cameras at that size."""
    size = int(reconstruction.hparams.image_size)
    b, v = views.shape[:2]
    x = resize_square(views.flatten(0, 1), size).view(b, v, 3, size, size)
    c2w, k = rig.cameras(size, device=views.device)
    sel = torch.tensor(input_views, device=views.device)
    gaussians = reconstruction.reconstruct(x[:, sel], c2w[sel].expand(b, -1, 4, 4), k[sel].expand(b, -1, 4))
    return gaussians, size



def infer_image(path: Path, ref: Tensor, diffusion: Any, reconstruction: Any, out_dir: Path, args: argparse.Namespace,
                input_views: list[int], background: Tensor) -> dict[str, Any]:
    """Run one prepared reference [3, H, W] through both stages and write its outputs; returns its info record."""
    device = diffusion.device
    rig: Rig = diffusion.rig
    t0 = time.time()
    out = diffusion.sample(ref[None].to(device), num_inference_steps=args.steps, guidance_scale=args.guidance,
                           seed=args.seed, scheduler=args.scheduler)
    t_sample = time.time() - t0
    views = out["images"]  # [1, V, 3, S, S]
    size = views.shape[-1]
    names = [f"views/cam_{i:03d}.png" for i in range(rig.num_views)]
    for i, name in enumerate(names):
        save_png(out_dir / name, views[0, i])
    write_camera_file(out_dir / "cameras.json",
                      CameraFile(scene_id=path.stem, c2w=out["c2w"].detach().cpu(), fxfycxcy=out["fxfycxcy"].cpu(),
                                 sizes=[(size, size)] * rig.num_views, file_paths=names))
    t1 = time.time()
    gaussians, rec_size = lift_views(reconstruction, views, rig, input_views)
    gaussians = gaussians.detach()
    t_lift = time.time() - t1
    save_scene_ply(gaussians, out_dir / "gaussians.ply")
    backend = reconstruction.hparams.get("rasterizer", "auto")
    frames = render_turntable(gaussians, rig, num_frames=args.turntable_frames, size=args.turntable_size,
                              background=background.to(gaussians.means.device), backend=backend)
    turntables = write_turntable(frames, out_dir / "turntable", args.turntable_format, fps=args.fps)
    return {"views": names, "view_names": list(rig.view_names), "view_size": size, "reconstruction_size": rec_size,
            "input_views": [rig.view_names[i] for i in input_views], "num_gaussians": int(gaussians.means.shape[1]),
            "turntables": [t.name for t in turntables],
            "seconds": {"sample": round(t_sample, 3), "reconstruct": round(t_lift, 3),
                        "total": round(time.time() - t0, 3)}}


def run(args: argparse.Namespace) -> list[Path]:
    """The whole command (module docstring); returns the per-image output folders."""
    _check_args(args)
    trust = args.trust_checkpoint
    rig_report = check_stages_and_rigs(args.diffusion, args.reconstruction, args.allow_rig_mismatch, trust)
    background, background_report = choose_background(args.background, args.diffusion, args.reconstruction, trust)
    removal = BackgroundRemoval(args.background_removal, background)
    prepared = []
    for path in args.images:  # every image is checked before any model is loaded
        rgb, alpha = read_image(path)
        check_square(rgb, path, MIN_SIZE)
        image, _, how = removal(rgb, alpha, str(path))
        prepared.append((path, image, how))
    device = resolve_device(args.device)
    diffusion = load_stage(args.diffusion, "diffusion", ema=args.ema, device=device, trust=trust)
    reconstruction = load_stage(args.reconstruction, "reconstruction", ema=args.ema, device=device, trust=trust,
                                rasterizer="auto", compile=False)
    input_views = parse_input_views(args.input_views, diffusion.rig)
    model_size = int(diffusion.hparams.image_size)
    outputs = []
    for path, image, how in prepared:
        if image.shape[-1] < model_size:
            log.warning("%s: %d px, upsampled to the diffusion model's %d px", path, image.shape[-1], model_size)
        out_dir = args.out / path.stem
        out_dir.mkdir(parents=True, exist_ok=True)
        save_png(out_dir / "input.png", image)
        with torch.no_grad():
            record = infer_image(path, image, diffusion, reconstruction, out_dir, args, input_views, background)
        info = {"image": str(path), "background_removal": how, "background": background.tolist(),
                "background_from": background_report["from"], "trained_backgrounds": background_report["trained"],
                "diffusion": str(args.diffusion), "reconstruction": str(args.reconstruction), "ema": args.ema,
                "rigs": rig_report, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "scheduler": args.scheduler, "device": str(device), **record}
        (out_dir / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        log.info("%s -> %s (%d Gaussians, %.1f s)", path, out_dir, record["num_gaussians"],
                 record["seconds"]["total"])
        outputs.append(out_dir)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"infer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
