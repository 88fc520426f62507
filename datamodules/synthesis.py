"""Writing FaceLift-layout data sets: procedural scenes, or a diffusion model's views of a data set's scenes.

``tools.synthesize`` is the command line over this module. Layout (what FaceLift's loaders and ours read):

    DIR/sample_000000/images/cam_000.png   RGBA 8-bit: straight RGB + alpha (``realistic``: the photo, background
                                           and all, alpha = an imperfect segmentation mask)
    DIR/sample_000000/opencv_cameras.json  {"id", "frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c", "file_path"}]}
    DIR/data_train.txt, DIR/data_val.txt   one absolute sample directory per line
    DIR/dataset.json                       generator, rig (name, fingerprint, definition), seed, counts, settings

Procedural scenes come from :func:`datamodules.procedural.make_scene`; :func:`write_facelift_scene` writes any scene
dict of that shape.

Generated views (:func:`write_generated_dataset`, Phase 3: train the reconstruction model on diffusion outputs): for
every input scene (:func:`input_scenes`: a data config's sources of one kind, split as the DataModule splits them,
or a folder of FaceLift-layout samples split by ``val_fraction``), its view ``reference_view`` is the reference,
prepared by :func:`datamodules.prepare.prepare_views` exactly as in training (centring, the source's background);
the caller's ``generate(reference, seed)`` gives the model's rig views, written with the rig's cameras at the
output size — never cameras copied from the inputs. Sampling is seeded per sample: seed + sample number. Alpha is 1
(``matting="opaque"``, recorded as ``has_background``) unless a local ``MODULE:FUNCTION`` matting callable
(``datamodules.photos``) gives each view a mask. Each sample also holds ``reference.png``; ``dataset.json`` records
the settings and, per sample, the source scene it came from. ``skip_existing`` keeps finished samples of an earlier
run with the same settings (a sample is finished when its camera file exists: it is written last). References are
generated ``batch_size`` at a time, a batch seeded with seed + its first sample's number (batch size 1: seed + sample
number, per sample).

``with_truth`` (Phase 3 as training data): after the generated views (cam 0 .. V-1, the rig's cameras) each sample
holds the input scene's own views (cam V .. V+N-1: its images and masks, prepared as the DataModule prepares them, at
the output size), with the scene's cameras brought into the rig's frame by the caller's ``to_rig_frame`` (the
chained evaluation's placement through the reference camera; the identity for data rendered from the rig). A GS-LRM
trained with ``input_views: first`` and ``num_input_views: V`` on such a folder (a ``format: facelift`` source a fit
config mixes with others) takes the generated views as inputs and is supervised by the scene's true views.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.data_config import find_config, load_data_config
from datamodules.datamodule import DEMO_SOURCES, held_out_split
from datamodules.photos import load_callable, mask_from_result
from datamodules.prepare import prepare_views
from datamodules.sources import build_source
from geometry.camera_files import CameraFile, write_camera_file
from geometry.files import write_atomic
from geometry.images import resize_images, to_uint8
from geometry.progress import progress
from geometry.rig import Rig, load_rig

log = logging.getLogger("mvlift.synthesize")

DATASET_VERSION = 1


# ---- the layout ------------------------------------------------------------------------------------------------------
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
    rgba = to_uint8(torch.cat([images, alpha], 1))  # [V, H, W, 4]
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


def write_list_files(out: Path, sample_dirs: Sequence[Path], train: Sequence[int], val: Sequence[int]) -> None:
    """``data_train.txt`` / ``data_val.txt``: one absolute sample directory per line (FaceLift's list files)."""
    for name, idx in (("data_train.txt", train), ("data_val.txt", val)):
        lines = [str(Path(sample_dirs[i]).resolve()) for i in idx]
        write_atomic(out / name, "".join(line + "\n" for line in lines))  # readable as the umask allows


_SYNTHESIZED = re.compile(r"^(sample_\d{6}|data_train\.txt|data_val\.txt|dataset\.json|\.dataset\.json\..*\.tmp|"
                          r"\.data_(train|val)\.txt\..*\.tmp)$")


def check_output_folder(out: Path, overwrite: bool = False, keep_existing: bool = False) -> None:
    """A data set is written into a new or empty ``out``: scenes written into a folder that holds others would mix
    with them, and ``dataset.json`` would describe only the new ones. A non-empty ``out`` is refused (naming it and
    its first entries) unless ``keep_existing`` (``--skip-existing``: an earlier run's finished samples are kept) or
    ``overwrite`` (``--overwrite``: :func:`clear_output_folder` empties it before writing), which is itself refused
    for a folder holding anything a data set of this module does not (``sample_NNNNNN/``, the list files,
    ``dataset.json``): nothing else is ever deleted."""
    if overwrite and keep_existing:
        raise ValueError("--overwrite clears --out and --skip-existing keeps what it holds: give one of them")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or keep_existing:
        return
    if not overwrite:
        raise ValueError(f"--out {out} is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}): "
                         "new scenes would mix with what is there and dataset.json would describe only the new ones; "
                         "choose a new folder, or pass --overwrite to replace an earlier tools.synthesize data set")
    foreign = [n for n in entries if not _SYNTHESIZED.match(n) or (n.startswith("sample_") and not (out / n).is_dir())]
    if foreign:
        raise ValueError(f"--out {out}: --overwrite only replaces a tools.synthesize data set, and the folder also "
                         f"holds {foreign[0]!r}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}; "
                         "nothing was deleted")


def clear_output_folder(out: Path) -> None:
    """Empty ``out`` (``--overwrite``), after :func:`check_output_folder` agreed: an earlier data set only."""
    check_output_folder(out, overwrite=True)
    if out.is_dir():
        for p in out.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        log.info("--overwrite: cleared the earlier data set in %s", out)


def _progress(i: int, n: int, what: str, t0: float) -> None:
    if (i + 1) % max(1, n // 10) == 0 or i + 1 == n:
        log.info("%d/%d %s (%.1f s)", i + 1, n, what, time.time() - t0)


# ---- procedural scenes -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Procedural:
    """A procedural data set: ``scenes`` scenes of ``views`` views (the rig's views in order, then random views on its
    sphere) at ``size`` px."""

    scenes: int = 64
    views: int = 8
    rig: str = "facelift_6view"
    size: int = 128
    seed: int = 0
    realistic: bool = False
    camera_jitter_deg: float = 0.0
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.views < 1:
            raise ValueError(f"--scenes and --views must be >= 1, got {self.scenes} and {self.views}")
        if self.size < 8:
            raise ValueError(f"--size must be >= 8, got {self.size}")
        if self.camera_jitter_deg < 0 or not math.isfinite(self.camera_jitter_deg):
            raise ValueError(f"--camera-jitter-deg must be a finite angle >= 0, got {self.camera_jitter_deg}")


def write_procedural_dataset(out: Path, p: Procedural) -> Path:
    """Write the procedural data set ``p`` into ``out``; returns the dataset.json path."""
    from datamodules.procedural import make_scene  # heavy import only when running

    rig = load_rig(p.rig)
    out.mkdir(parents=True, exist_ok=True)
    train, val = split_scenes(p.scenes, p.val_fraction)
    sample_dirs, t0 = [], time.time()
    for i in progress(range(p.scenes), "procedural scenes", unit="scene"):
        scene = make_scene(i, rig, p.views, p.size, realistic=p.realistic, seed=p.seed,
                           camera_jitter_deg=p.camera_jitter_deg)
        sample_dirs.append(write_facelift_scene(out / f"sample_{i:06d}", scene))
        _progress(i, p.scenes, "scenes", t0)
    write_list_files(out, sample_dirs, train, val)
    record = {
        "version": DATASET_VERSION, "generator": "procedural", "rig": rig.name, "rig_fingerprint": rig.fingerprint,
        "rig_definition": rig.to_dict(), "seed": p.seed, "realistic": bool(p.realistic),
        "has_background": False, "scenes": p.scenes, "views": p.views, "size": p.size,
        "camera_jitter_deg": p.camera_jitter_deg, "val_fraction": p.val_fraction,
        "train": len(train), "val": len(val),
    }
    write_atomic(out / "dataset.json", json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %d train / %d val scenes, %d views at %d px, rig %s (%s)%s", out, len(train), len(val),
             p.views, p.size, rig.name, rig.fingerprint, ", realistic" if p.realistic else "")
    return out / "dataset.json"


# ---- a data set's scenes as references -------------------------------------------------------------------------------
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

    num_views = max(rig.num_views, reference_view + 1)  # procedural sources render this many views
    if inputs.suffix in (".yaml", ".yml") and find_config(inputs).is_file():  # a shipped config from any folder
        cfg = load_data_config(inputs)
        data_rig = load_rig(cfg.get("rig", "facelift_6view"))
        crop = {"center_crop": bool(cfg.get("center_crop", False)), "center_fill": float(cfg.get("center_fill", 0.6))}
        train_cfgs = list(cfg.get("sources") or DEMO_SOURCES)
        val_cfgs = list(cfg.get("val_sources") or [])

        def sample_kind(c: dict[str, Any]) -> str:  # Source.sample_kind: realistic captures are synthetic
            return "realistic" if c.get("realistic") is True else str(c.get("kind", "synthetic"))

        def keep(c: dict[str, Any]) -> bool:
            return kind == "all" or sample_kind(c) == kind

        chosen = [(c, "train") for c in train_cfgs if keep(c)] + [(c, "val") for c in val_cfgs if keep(c)]
        if not chosen:
            kinds = sorted({sample_kind(c) for c in train_cfgs + val_cfgs})
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
    """(reference [3, size, size] in [0, 1], scene id): view ``view`` of the scene, prepared by
    :func:`datamodules.prepare.prepare_views` as the DataModule prepares training views (a source with observed
    captures, ``truth: clean``: the capture, what a model is given)."""
    cams = item.source.cameras(item.scene)
    if not 0 <= view < len(cams.c2w):
        raise ValueError(f"{cams.where}: --reference-view {view} but the scene has {len(cams.c2w)} views")
    source = item.source.observed or item.source
    prepared = prepare_views(source, item.scene, cams, [view], size, rng=np.random.default_rng([seed, item.scene]),
                             center_crop=item.center_crop, center_fill=item.center_fill)
    return prepared.images[int(prepared.rows([view])[0])], str(cams.scene_id)


# ---- generated views -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GeneratedViews:
    """What decides a generated data set (``tools.synthesize --from-diffusion``'s options, whose defaults are the
    tool's: the sampling ones ``lightning_modules.diffusion.sampling.Sampling``'s), checked on creation."""

    checkpoint: Path
    inputs: Path | None
    seed: int
    steps: int
    guidance: float
    scheduler: str
    reference_view: int
    kind: str
    limit: int | None
    matting: str
    val_fraction: float
    ema: bool
    size: int | None
    with_truth: bool
    batch_size: int
    precision: str

    def __post_init__(self) -> None:
        if self.inputs is None:
            raise ValueError("--from-diffusion needs --inputs (a data config or a FaceLift-layout folder)")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.steps < 1 or self.reference_view < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError("--steps >= 1, --reference-view >= 0 and --limit >= 1 are needed")
        if self.size is not None and self.size < 8:
            raise ValueError(f"--size must be >= 8, got {self.size}")
        split_scenes(2, self.val_fraction)  # validates the fraction

    def settings(self, rig: Rig, size: int) -> dict[str, Any]:
        """The record compared by ``skip_existing``."""
        return {"checkpoint": str(Path(self.checkpoint).resolve()), "ema": bool(self.ema), "rig": rig.name,
                "rig_fingerprint": rig.fingerprint, "seed": self.seed, "steps": self.steps, "guidance": self.guidance,
                "scheduler": self.scheduler, "reference_view": self.reference_view, "size": size,
                "inputs": str(Path(self.inputs).resolve()), "kind": self.kind, "limit": self.limit,
                "matting": self.matting, "val_fraction": self.val_fraction, "with_truth": self.with_truth,
                "batch_size": self.batch_size, "precision": self.precision}


def _view_alpha(views: torch.Tensor, matting: Any, spec: str, where: str) -> torch.Tensor:
    """alpha [V, 1, H, W] of generated views [V, 3, H, W]: ones, or the matting callable's mask per view."""
    if matting is None:
        return torch.ones_like(views[:, :1])

    masks = []
    for v, img in enumerate(views):
        try:
            result = matting(Image.fromarray(to_uint8(img)))
        except Exception as e:  # the user's callable: say which view it failed on
            raise ValueError(f"{where} view {v}: matting {spec} failed ({type(e).__name__}: {e})") from e
        masks.append(mask_from_result(result, tuple(img.shape[-2:]), f"{where} view {v} ({spec})"))
    return torch.stack(masks)


def matting_callable(spec: str) -> Any:
    """None for ``opaque``, else the local ``MODULE:FUNCTION`` (errors name the spec)."""
    if spec == "opaque":
        return None

    return load_callable(spec)


def truth_views(item: InputScene, size: int, seed: int,
                to_rig_frame: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The input scene's own views at ``size`` (images, masks, intrinsics: ``prepare_views`` as in training) with
    its cameras in the rig's frame (``to_rig_frame(c2w [N, 4, 4]) -> [N, 4, 4]``)."""
    cams = item.source.cameras(item.scene)
    views = list(range(len(cams.c2w)))
    p = prepare_views(item.source, item.scene, cams, views, size, rng=np.random.default_rng([seed, item.scene]),
                      center_crop=item.center_crop, center_fill=item.center_fill)
    return {"images": p.images, "alpha": p.alpha, "c2w": to_rig_frame(cams.c2w.double()).float(),
            "fxfycxcy": p.fxfycxcy.float()}


def write_generated_dataset(out: Path, g: GeneratedViews, items: Sequence[InputScene],
                            generate: Callable[[torch.Tensor, int], torch.Tensor], rig: Rig, model_size: int,
                            skip_existing: bool = False, rig_check: dict[str, Any] | None = None,
                            to_rig_frame: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """Write ``generate(references [B, 3, S, S], seed) -> views [B, V, 3, S', S']``'s views of ``items`` into ``out``
    (module docstring); ``rig`` / ``model_size``: the model's; ``to_rig_frame``: an input scene's cameras in the
    rig's frame (``with_truth``). Returns the dataset.json path."""
    if g.with_truth and to_rig_frame is None:
        raise ValueError("with_truth needs to_rig_frame (the input scenes' cameras in the rig's frame)")
    size = int(g.size or model_size)
    settings, seed, matting, reference_view = g.settings(rig, size), g.seed, g.matting, g.reference_view
    matte = matting_callable(matting)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "dataset.json"
    if skip_existing and record_path.is_file():
        old = json.loads(record_path.read_text()).get("settings")
        if old != settings:
            changed = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise ValueError(f"{out}: --skip-existing, but the earlier run had other settings ({', '.join(changed)})")
    c2w, k = rig.cameras(size)
    sample_dirs, records, t0, skipped, truth_counts = [], [], time.time(), 0, set()
    for start in progress(range(0, len(items), g.batch_size), "synthesized batches", unit="batch"):
        chunk = list(enumerate(items[start: start + g.batch_size], start))
        dirs = [out / f"sample_{i:06d}" for i, _ in chunk]
        refs = [reference_image(item, reference_view, model_size, seed) for _, item in chunk]
        todo = [j for j, d in enumerate(dirs) if not (skip_existing and (d / "opencv_cameras.json").is_file())]
        skipped += len(chunk) - len(todo)
        batch = generate(torch.stack([r for r, _ in refs]), seed + start) if todo else None  # the whole batch: the
        for j in todo:  # noise of a batch does not depend on which of its samples an earlier run finished
            (i, item), sample_dir, (ref, scene_id) = chunk[j], dirs[j], refs[j]
            views = batch[j]
            if tuple(views.shape[-2:]) != (size, size):
                views = resize_images(views, size).clamp(0, 1)
            alpha = _view_alpha(views, matte, matting, str(sample_dir))
            scene = {"images": views, "alpha": alpha, "c2w": c2w, "fxfycxcy": k,
                     "scene_id": f"{item.source.name}/{scene_id}"}
            if g.with_truth:
                truth = truth_views(item, size, seed, to_rig_frame)
                truth_counts.add(len(truth["images"]))
                scene.update({key: torch.cat([scene[key], truth[key]]) for key in ("images", "alpha", "c2w",
                                                                                    "fxfycxcy")})
            sample_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(ref)).save(sample_dir / "reference.png")
            write_facelift_scene(sample_dir, scene)
        for (i, item), sample_dir, (_, scene_id) in zip(chunk, dirs, refs):
            sample_dirs.append(sample_dir)
            records.append({"sample": sample_dir.name, "split": item.split, "source": item.source.name,
                            "kind": item.source.sample_kind, "scene": item.scene, "scene_id": scene_id,
                            "seed": seed + start})
            _progress(i, len(items), "samples", t0)
    train = [i for i, r in enumerate(records) if r["split"] == "train"]
    val = [i for i, r in enumerate(records) if r["split"] == "val"]
    write_list_files(out, sample_dirs, train, val)
    record = {"version": DATASET_VERSION, "generator": "diffusion", "settings": settings, "rig": rig.name,
              "rig_fingerprint": rig.fingerprint, "rig_definition": rig.to_dict(), "seed": seed,
              "views": rig.num_views, "size": size, "has_background": matting == "opaque",
              "truth_views": sorted(truth_counts) if g.with_truth else None,
              "layout": f"cam 0-{rig.num_views - 1}: generated views at the rig's cameras" + (
                  "; then the input scene's own views, its cameras in the rig's frame" if g.with_truth else ""),
              "alpha": "opaque (1 everywhere)" if matting == "opaque" else f"matting {matting}",
              "scenes": len(records), "train": len(train), "val": len(val), "rig_check": rig_check,
              "samples": records}
    write_atomic(record_path, json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %d train / %d val samples (%d kept from an earlier run), %d views at %d px%s, rig %s (%s)",
             out, len(train), len(val), skipped, rig.num_views, size,
             f" + the scene's {'/'.join(map(str, sorted(truth_counts)))} true views" if truth_counts else "",
             rig.name, rig.fingerprint)
    return record_path


__all__ = ["DATASET_VERSION", "GeneratedViews", "InputScene", "Procedural", "check_output_folder", "clear_output_folder",
           "input_scenes", "reference_image", "split_scenes", "write_facelift_scene", "write_generated_dataset",
           "write_list_files", "write_procedural_dataset"]
