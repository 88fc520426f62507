"""Write a FaceLift-layout data set: procedural mouse-like scenes, or a diffusion model's views of real inputs.

    python -m tools.synthesize --out DIR --scenes N --views V --size S --rig NAME [--realistic] [--seed K]
        [--val-fraction 0.1] [--camera-jitter-deg J]
    python -m tools.synthesize --from-diffusion CKPT --inputs DATA --out DIR [--steps 50] [--guidance 3.0]
        [--seed K] [--reference-view 0] [--kind real|synthetic|all] [--limit N] [--size S] [--scheduler ddim]
        [--matting opaque|MODULE:FUNCTION] [--val-fraction 0.1] [--ema] [--device cpu|cuda] [--skip-existing]
        [--reconstruction CKPT [--allow-rig-mismatch]] [--trust-checkpoint]

``--from-diffusion`` (Phase 3: train the reconstruction model on diffusion outputs): for every input scene, its view
``--reference-view`` (default 0) is the reference photo; the diffusion model (a ``.ckpt`` or export folder) generates
its rig's views, which are written with that rig's cameras at the output size (``--size``, default the model's
image size) — never cameras copied from the inputs. DATA is a data config (the MultiViewDataModule's arguments:
its ``sources`` of ``--kind``, with ``center_crop`` / ``center_fill`` and each source's ``background`` applied to the
reference as in training; scenes of ``val_sources``, or the DataModule's held-out tail ``val_fraction`` of each
source when there are none, go to ``data_val.txt`` so held-out real scenes stay held out) or a folder of
FaceLift-layout sample directories (``opencv_cameras.json`` + ``images/``; or camera-less folders of PNGs), split by
``--val-fraction``. ``--limit N`` takes the first N scenes of each source and split. Sampling is seeded per sample:
seed + sample number. The generated RGB carries the model's background; alpha is 1 (``--matting opaque``, recorded
as ``has_background``) unless a local ``MODULE:FUNCTION`` matting callable (tools.images) gives each view a mask.
Each sample also holds ``reference.png`` (the model's input); ``dataset.json`` records the checkpoint, rig, sampling
settings and, per sample, the source scene it came from. ``--skip-existing`` keeps finished samples of an earlier
run with the same settings (a sample is finished when its camera file exists: it is written last).
``--reconstruction CKPT`` (the reconstruction ``.ckpt`` or export folder these views will train or feed): the rig
guard of ``tools.infer`` runs first, from checkpoint metadata only — a rig mismatch is an error naming both rigs
with the per-view difference (exit code 2, nothing written) unless ``--allow-rig-mismatch`` (a logged warning);
``dataset.json`` records the check as ``rig_check``. Checkpoints are read without unpickling code
(``lightning_modules.artifacts``); ``--trust-checkpoint`` loads a ``.ckpt`` that needs more (only files you trust).

Layout (what FaceLift's loaders and ours read):
    DIR/sample_000000/images/cam_000.png   RGBA 8-bit: straight RGB + alpha (``--realistic``: the photo,
                                           background and all, alpha = an imperfect segmentation mask)
    DIR/sample_000000/opencv_cameras.json  {"id", "frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c", "file_path"}]}
    DIR/data_train.txt, DIR/data_val.txt   one absolute sample directory per line
    DIR/dataset.json                       generator, rig (name, fingerprint, definition), seed, counts, settings

Scenes come from :func:`datamodules.procedural.make_scene`; :func:`write_facelift_scene` writes any scene dict of
that shape, so other sources (e.g. a diffusion model's views) can reuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geometry.camera_files import CameraFile, write_camera_file
from geometry.files import write_atomic
from geometry.rig import Rig, available_rigs, load_rig

log = logging.getLogger("mvlift.synthesize")

DATASET_VERSION = 1


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def write_facelift_scene(sample_dir: str | Path, scene: dict[str, Any]) -> Path:
    """Write one scene in FaceLift's layout.

    Args:
        sample_dir: the sample directory to create (``.../sample_000000``).
        scene: {"images" [V, 3, H, W] in [0, 1], "alpha" [V, 1, H, W], "c2w" [V, 4, 4], "fxfycxcy" [V, 4],
            "scene_id" str} as :func:`datamodules.procedural.make_scene` returns.
    Returns:
        the sample directory. Images are ``images/cam_XXX.png`` (RGBA), cameras ``opencv_cameras.json`` (w2c).
    """
    sample_dir = Path(sample_dir)
    images, alpha, c2w, k = scene["images"], scene["alpha"], scene["c2w"], scene["fxfycxcy"]
    v, _, h, w = images.shape
    if alpha.shape != (v, 1, h, w) or c2w.shape != (v, 4, 4) or k.shape != (v, 4):
        raise ValueError(f"write_facelift_scene({sample_dir}): inconsistent shapes images {list(images.shape)}, "
                         f"alpha {list(alpha.shape)}, c2w {list(c2w.shape)}, fxfycxcy {list(k.shape)}")
    (sample_dir / "images").mkdir(parents=True, exist_ok=True)
    rgba = _to_uint8(torch.cat([images, alpha], 1).permute(0, 2, 3, 1))  # [V, H, W, 4]
    names = [f"images/cam_{i:03d}.png" for i in range(v)]
    for name, pixels in zip(names, rgba):
        Image.fromarray(pixels, mode="RGBA").save(sample_dir / name)
    cams = CameraFile(scene_id=str(scene.get("scene_id", sample_dir.name)), c2w=c2w.detach().cpu(),
                      fxfycxcy=k.detach().cpu(), sizes=[(h, w)] * v, file_paths=names)
    write_camera_file(sample_dir / "opencv_cameras.json", cams)
    return sample_dir


def split_scenes(num_scenes: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) scene indices: the last round(N * val_fraction) scenes are validation (>= 1 when the fraction
    is positive and N >= 2), so growing --scenes keeps earlier scenes in the same split only up to that tail."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = round(num_scenes * val_fraction)
    if val_fraction > 0 and num_scenes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, num_scenes - 1) if num_scenes > 1 else 0
    return list(range(num_scenes - n_val)), list(range(num_scenes - n_val, num_scenes))


def _write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text)  # readable by others as the umask allows


def write_list_files(out: Path, sample_dirs: Sequence[Path], train: Sequence[int], val: Sequence[int]) -> None:
    """``data_train.txt`` / ``data_val.txt``: one absolute sample directory per line (FaceLift's list files)."""
    for name, idx in (("data_train.txt", train), ("data_val.txt", val)):
        lines = [str(Path(sample_dirs[i]).resolve()) for i in idx]
        _write_text_atomic(out / name, "".join(line + "\n" for line in lines))


def dataset_record(rig: Rig, args: argparse.Namespace, train: Sequence[int], val: Sequence[int]) -> dict[str, Any]:
    return {
        "version": DATASET_VERSION, "generator": "procedural", "rig": rig.name, "rig_fingerprint": rig.fingerprint,
        "rig_definition": rig.to_dict(), "seed": args.seed, "realistic": bool(args.realistic),
        "has_background": False, "scenes": args.scenes, "views": args.views, "size": args.size,
        "camera_jitter_deg": args.camera_jitter_deg, "val_fraction": args.val_fraction,
        "train": len(train), "val": len(val),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.synthesize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--size", type=int, default=None,
                   help="square image size in px (procedural: default 128; diffusion: default the model's size)")
    proc = p.add_argument_group("procedural scenes")
    proc.add_argument("--scenes", type=int, default=None, help=f"number of scenes (default {PROCEDURAL['scenes']})")
    proc.add_argument("--views", type=int, default=None,
                      help="views per scene: the rig's views in order, then random views on its sphere "
                           f"(default {PROCEDURAL['views']})")
    proc.add_argument("--rig", default=None,
                      help=f"rig name or file (shipped: {', '.join(available_rigs())}; default {PROCEDURAL['rig']})")
    proc.add_argument("--realistic", action="store_true", default=None,
                      help="bake background, lighting change, pose error, blur and noise into the images")
    proc.add_argument("--camera-jitter-deg", type=float, default=None,
                      help="rotate each rig camera about the target by up to this angle (saved cameras include it)")
    diff = p.add_argument_group("diffusion views of real inputs (--from-diffusion)")
    diff.add_argument("--from-diffusion", type=Path, default=None, metavar="CKPT",
                      help="diffusion .ckpt or export folder: write its views of --inputs")
    diff.add_argument("--inputs", type=Path, default=None, metavar="DATA",
                      help="a data config (YAML) or a folder of FaceLift-layout sample directories")
    diff.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {DIFFUSION['steps']})")
    diff.add_argument("--guidance", type=float, default=None,
                      help=f"classifier-free guidance scale (default {DIFFUSION['guidance']})")
    diff.add_argument("--scheduler", default=None, help="sampler: ddim | ddpm | euler | dpm (default ddim)")
    diff.add_argument("--reference-view", type=int, default=None,
                      help="which view of each input scene is the reference (default 0)")
    diff.add_argument("--kind", choices=("real", "synthetic", "all"), default=None,
                      help="data config: sources of this kind (default real)")
    diff.add_argument("--limit", type=int, default=None, help="at most N scenes per source and split")
    diff.add_argument("--matting", default=None,
                      help="alpha of the generated views: opaque (default) or a local MODULE:FUNCTION")
    diff.add_argument("--ema", action="store_true", default=None, help="use the checkpoint's EMA weights")
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


PROCEDURAL = {"scenes": 64, "views": 8, "rig": "facelift_6view", "realistic": False, "camera_jitter_deg": 0.0}
DIFFUSION = {"inputs": None, "steps": 50, "guidance": 3.0, "scheduler": "ddim", "reference_view": 0, "kind": "real",
             "limit": None, "matting": "opaque", "ema": False, "device": "cpu", "skip_existing": False,
             "reconstruction": None, "allow_rig_mismatch": False, "trust_checkpoint": False}


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
        args.size = 128


def _check_args(args: argparse.Namespace) -> None:
    if args.scenes < 1 or args.views < 1:
        raise ValueError(f"--scenes and --views must be >= 1, got {args.scenes} and {args.views}")
    if args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    if args.camera_jitter_deg < 0 or not math.isfinite(args.camera_jitter_deg):
        raise ValueError(f"--camera-jitter-deg must be a finite angle >= 0, got {args.camera_jitter_deg}")


def synthesize(args: argparse.Namespace) -> Path:
    """Write the data set described by parsed ``args``; returns the dataset.json path."""
    from datamodules.procedural import make_scene  # heavy import only when running

    _fill_mode_defaults(args)
    _check_args(args)
    rig = load_rig(args.rig)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = split_scenes(args.scenes, args.val_fraction)
    sample_dirs, t0 = [], time.time()
    for i in range(args.scenes):
        scene = make_scene(i, rig, args.views, args.size, realistic=args.realistic, seed=args.seed,
                           camera_jitter_deg=args.camera_jitter_deg)
        sample_dirs.append(write_facelift_scene(out / f"sample_{i:06d}", scene))
        if (i + 1) % max(1, args.scenes // 10) == 0 or i + 1 == args.scenes:
            log.info("%d/%d scenes (%.1f s)", i + 1, args.scenes, time.time() - t0)
    write_list_files(out, sample_dirs, train, val)
    record = dataset_record(rig, args, train, val)
    _write_text_atomic(out / "dataset.json", json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %d train / %d val scenes, %d views at %d px, rig %s (%s)%s", out, len(train), len(val),
             args.views, args.size, rig.name, rig.fingerprint, ", realistic" if args.realistic else "")
    return out / "dataset.json"


# ---- diffusion views of real inputs (--from-diffusion) ---------------------------------------------------------------
@dataclasses.dataclass
class InputScene:
    """One input scene: the source it comes from, its index there, its split, and how to prepare its reference."""

    source: Any  # datamodules.sources.Source
    scene: int
    split: str  # "train" | "val"
    center_crop: bool = False
    center_fill: float = 0.6


def _take(indices: Sequence[int], limit: int | None) -> list[int]:
    return [int(i) for i in indices][: limit if limit is not None else None]


def input_scenes(inputs: Path, kind: str, limit: int | None, val_fraction: float, rig: Rig, size: int,
                 reference_view: int) -> list[InputScene]:
    """The scenes of ``inputs`` (a data config or a FaceLift-layout folder; module docstring), in a fixed order:
    per source, its train scenes then its validation scenes."""
    from datamodules.datamodule import DEMO_SOURCES, held_out_split
    from datamodules.sources import build_source

    num_views = max(rig.num_views, reference_view + 1)  # procedural sources render this many views
    if inputs.is_file() and inputs.suffix in (".yaml", ".yml"):
        from tools.evaluate import load_data_config

        cfg = load_data_config(inputs)
        data_rig = load_rig(cfg.get("rig", "facelift_6view"))
        crop = {"center_crop": bool(cfg.get("center_crop", False)), "center_fill": float(cfg.get("center_fill", 0.6))}
        train_cfgs = list(cfg.get("sources") or DEMO_SOURCES)
        val_cfgs = list(cfg.get("val_sources") or [])

        def keep(c: dict[str, Any]) -> bool:
            return kind == "all" or c.get("kind", "synthetic") == kind

        chosen = [(c, "train") for c in train_cfgs if keep(c)] + [(c, "val") for c in val_cfgs if keep(c)]
        if not chosen:
            kinds = sorted({c.get("kind", "synthetic") for c in train_cfgs + val_cfgs})
            raise ValueError(f"{inputs}: no source of kind {kind!r} (the config has {', '.join(kinds)}); "
                             "use --kind")
        scenes: list[InputScene] = []
        for c, role in chosen:
            source = build_source(c, data_rig, num_views, size)
            if role == "val":
                parts = {"val": range(len(source))}
            elif val_cfgs:
                parts = {"train": range(len(source))}
            else:  # the DataModule's own held-out tail stays held out
                train, val = held_out_split(len(source), float(cfg.get("val_fraction", 0.05)))
                parts = {"train": train, "val": val}
            for split, idx in parts.items():
                scenes += [InputScene(source, i, split, **crop) for i in _take(idx, limit)]
        return scenes
    if inputs.is_dir() or (inputs.is_file() and inputs.suffix == ".txt"):
        cfg = {"name": inputs.stem if inputs.is_file() else inputs.name, "kind": "real"}
        key = "list_file" if inputs.is_file() else "path"
        try:
            source = build_source({**cfg, "format": "facelift", key: str(inputs)}, rig, num_views, size)
        except FileNotFoundError:  # sample folders without camera files: PNGs in rig order
            source = build_source({**cfg, "format": "facelift_mvdiffusion", key: str(inputs)}, rig, num_views, size)
        train, val = split_scenes(len(source), val_fraction)
        return ([InputScene(source, i, "train") for i in _take(train, limit)] +
                [InputScene(source, i, "val") for i in _take(val, limit)])
    raise FileNotFoundError(f"--inputs {inputs}: neither a data config (.yaml) nor a folder / list file of "
                            "FaceLift-layout samples")


def reference_image(item: InputScene, view: int, size: int, seed: int) -> tuple[torch.Tensor, str]:
    """(reference [3, size, size] in [0, 1], scene id): view ``view`` of the scene, centred / resized and put on the
    source's background exactly as the DataModule prepares training views."""
    from datamodules.io import (
        background_color,
        center_views,
        composite,
        resize_views,
        validate_pixels,
    )

    src = item.source
    cams = src.cameras(item.scene)
    if not 0 <= view < len(cams.c2w):
        raise ValueError(f"{cams.where}: --reference-view {view} but the scene has {len(cams.c2w)} views")
    decode = sorted({view, 0} if item.center_crop else {view})
    rgb, alpha, _ = src.pixels(item.scene, decode)
    validate_pixels(rgb, alpha, cams.where, len(decode), None)
    k = cams.fxfycxcy[decode]
    as_is = src.background == "as_is" or alpha is None
    if alpha is None:
        alpha = torch.ones_like(rgb[:, :1])
    premult = rgb if as_is else rgb * alpha
    if item.center_crop:
        premult, alpha, k = center_views(premult, alpha, k, size, item.center_fill, "border" if as_is else "zeros",
                                         box_alpha=alpha[decode.index(0)])
    else:
        premult, alpha, k = resize_views(premult, alpha, k, size)
    r = decode.index(view)
    if as_is:
        image = premult[r].clamp(0, 1)
    else:
        bg = background_color(src.background, np.random.default_rng([seed, item.scene]))
        image = composite(premult[r: r + 1], alpha[r: r + 1], bg)[0]
    return image, str(cams.scene_id)


def _resize_views(views: torch.Tensor, size: int) -> torch.Tensor:
    if views.shape[-1] == size and views.shape[-2] == size:
        return views
    import torch.nn.functional as F

    return F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _matting(spec: str) -> Any:
    if spec == "opaque":
        return None
    from tools.images import load_callable

    return load_callable(spec)


def _view_alpha(views: torch.Tensor, matting: Any, spec: str, where: str) -> torch.Tensor:
    """alpha [V, 1, H, W] of generated views [V, 3, H, W]: ones, or the matting callable's mask per view."""
    if matting is None:
        return torch.ones_like(views[:, :1])
    from PIL import Image as PILImage

    from tools.images import mask_from_result, to_uint8

    masks = []
    for v, img in enumerate(views):
        try:
            result = matting(PILImage.fromarray(to_uint8(img)))
        except Exception as e:  # the user's callable: say which view it failed on
            raise ValueError(f"{where} view {v}: matting {spec} failed ({type(e).__name__}: {e})") from e
        masks.append(mask_from_result(result, tuple(img.shape[-2:]), f"{where} view {v} ({spec})"))
    return torch.stack(masks)


def diffusion_settings(args: argparse.Namespace, rig: Rig, size: int) -> dict[str, Any]:
    """What decides the written views (compared by --skip-existing)."""
    return {"checkpoint": str(Path(args.from_diffusion).resolve()), "ema": bool(args.ema), "rig": rig.name,
            "rig_fingerprint": rig.fingerprint, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
            "scheduler": args.scheduler, "reference_view": args.reference_view, "size": size,
            "inputs": str(Path(args.inputs).resolve()), "kind": args.kind, "limit": args.limit,
            "matting": args.matting, "val_fraction": args.val_fraction}


def synthesize_from_diffusion(args: argparse.Namespace) -> Path:
    """Write the diffusion model's views of ``args.inputs`` (module docstring); returns the dataset.json path."""
    from tools.checkpoints import load_stage, resolve_device

    _fill_mode_defaults(args)
    if args.inputs is None:
        raise ValueError("--from-diffusion needs --inputs (a data config or a FaceLift-layout folder)")
    if args.steps < 1 or args.reference_view < 0 or (args.limit is not None and args.limit < 1):
        raise ValueError("--steps >= 1, --reference-view >= 0 and --limit >= 1 are needed")
    if args.size is not None and args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    split_scenes(2, args.val_fraction)  # validates --val-fraction
    if args.allow_rig_mismatch and args.reconstruction is None:
        raise ValueError("--allow-rig-mismatch needs --reconstruction (the checkpoint whose rig is checked)")
    rig_check = None
    if args.reconstruction is not None:  # the rig guard, before any model is built or file written
        from tools.infer import check_stages_and_rigs

        rig_check = {"reconstruction": str(Path(args.reconstruction).resolve()),
                     **check_stages_and_rigs(Path(args.from_diffusion), Path(args.reconstruction),
                                             args.allow_rig_mismatch, args.trust_checkpoint)}
    matting = _matting(args.matting)
    device = resolve_device(args.device)
    model = load_stage(args.from_diffusion, "diffusion", ema=args.ema, device=device, trust=args.trust_checkpoint)
    rig: Rig = model.rig
    model_size = int(model.hparams.image_size)
    size = int(args.size or model_size)
    items = input_scenes(Path(args.inputs), args.kind, args.limit, args.val_fraction, rig, model_size,
                         args.reference_view)
    if not items:
        raise ValueError(f"--inputs {args.inputs}: no scenes")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = diffusion_settings(args, rig, size)
    record_path = out / "dataset.json"
    if args.skip_existing and record_path.is_file():
        old = json.loads(record_path.read_text()).get("settings")
        if old != settings:
            changed = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise ValueError(f"{out}: --skip-existing, but the earlier run had other settings ({', '.join(changed)})")
    c2w, k = rig.cameras(size)
    sample_dirs, records, t0, skipped = [], [], time.time(), 0
    for i, item in enumerate(items):
        sample_dir = out / f"sample_{i:06d}"
        ref, scene_id = reference_image(item, args.reference_view, model_size, args.seed)
        rec = {"sample": sample_dir.name, "split": item.split, "source": item.source.name, "kind": item.source.kind,
               "scene": item.scene, "scene_id": scene_id, "seed": args.seed + i}
        if args.skip_existing and (sample_dir / "opencv_cameras.json").is_file():
            skipped += 1
        else:
            with torch.no_grad():
                views = model.sample(ref[None].to(device), num_inference_steps=args.steps,
                                     guidance_scale=args.guidance, seed=args.seed + i,
                                     scheduler=args.scheduler)["images"][0].float().cpu()
            views = _resize_views(views, size)
            alpha = _view_alpha(views, matting, args.matting, str(sample_dir))
            sample_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_to_uint8(ref.permute(1, 2, 0))).save(sample_dir / "reference.png")
            write_facelift_scene(sample_dir, {"images": views, "alpha": alpha, "c2w": c2w, "fxfycxcy": k,
                                              "scene_id": f"{item.source.name}/{scene_id}"})
        sample_dirs.append(sample_dir)
        records.append(rec)
        if (i + 1) % max(1, len(items) // 10) == 0 or i + 1 == len(items):
            log.info("%d/%d samples (%.1f s)", i + 1, len(items), time.time() - t0)
    train = [i for i, r in enumerate(records) if r["split"] == "train"]
    val = [i for i, r in enumerate(records) if r["split"] == "val"]
    write_list_files(out, sample_dirs, train, val)
    record = {"version": DATASET_VERSION, "generator": "diffusion", "settings": settings, "rig": rig.name,
              "rig_fingerprint": rig.fingerprint, "rig_definition": rig.to_dict(), "seed": args.seed,
              "views": rig.num_views, "size": size, "has_background": args.matting == "opaque",
              "alpha": "opaque (1 everywhere)" if args.matting == "opaque" else f"matting {args.matting}",
              "scenes": len(records), "train": len(train), "val": len(val), "rig_check": rig_check,
              "samples": records}
    _write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %d train / %d val samples (%d kept from an earlier run), %d views at %d px, rig %s (%s)",
             out, len(train), len(val), skipped, rig.num_views, size, rig.name, rig.fingerprint)
    return record_path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.from_diffusion is not None:
            synthesize_from_diffusion(args)
        else:
            synthesize(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"synthesize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
