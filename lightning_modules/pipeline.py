"""The image-to-3D pipeline: a photo -> the diffusion model's rig views -> GS-LRM Gaussians -> renders.

One home for the chain that ``tools.infer`` (photos), chained ``tools.evaluate`` (a data set's reference views,
renders at the ground-truth cameras) and ``tools.synthesize --from-diffusion`` (the views alone) run:

- :func:`check_stages_and_rigs` — the rig guard from checkpoint metadata only, before any model is built;
- :func:`generate_views` — ``DiffusionModule.sample`` with a ``diffusion_sampling.Sampling`` (the cameras are the
  model's rig's);
- :func:`lift_views` — the views resized to the reconstruction model's size, with the rig's cameras at that size;
- :func:`render_views` / :func:`write_photo_outputs` — renders at given cameras, or a photo's output folder
  (views, cameras.json, gaussians.ply, turntable);
- :func:`choose_background` — the background a photo is composited over, from the stored training records.

Example:
    >>> from geometry.rig import load_rig
    >>> parse_input_views("0,back", load_rig("facelift_6view"))
    [0, 3]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geometry.camera_files import CameraFile, write_camera_file
from geometry.images import resize_images, save_png
from geometry.render import check_video_formats, render_turntable, save_scene_ply, write_turntable
from geometry.rig import Rig, check_rigs
from lightning_modules.artifacts import checkpoint_background, checkpoint_rig, checkpoint_stage
from lightning_modules.diffusion.sampling import Sampling
from lightning_modules.training_background import TOLERANCE, describe

log = logging.getLogger("mvlift.infer")  # its notes are tools.infer's (the name users filter on)


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


def choose_background(spec_color: Tensor | None, diffusion: Path, reconstruction: Path,
                      trust: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """(background [3], report): ``spec_color`` (``--background``) when given, else the diffusion model's training
    background, else the reconstruction model's (the records stored with the checkpoints), else white with a logged
    note."""
    trained = {"diffusion": checkpoint_background(diffusion, trust),
               "reconstruction": checkpoint_background(reconstruction, trust)}
    if spec_color is not None:
        return spec_color, {"from": "--background", "trained": trained}
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


def sampling_for_data_view(sampling: Sampling, diffusion: Any, data_view: int) -> Sampling:
    """``sampling`` for photos that are data view ``data_view`` of scenes whose first ``rig.num_views`` views are the
    diffusion rig's, in rig order (the diffusion stage's data convention): a model with ``camera_rays`` is told the
    photo is that rig view; a view beyond the rig is an error for it (nothing says where that camera sits)."""
    if not diffusion.hparams.camera_rays:
        return sampling
    n = diffusion.rig.num_views
    if not 0 <= data_view < n:
        raise ValueError(f"--reference-view {data_view}: not one of the rig {diffusion.rig.name!r}'s {n} views; this "
                         "diffusion model takes camera rays and must be told which rig view the photo is")
    return dataclasses.replace(sampling, reference_view=data_view)


def note_sampling(diffusion: Any, sampling: Sampling) -> None:
    """Log what the model cannot take or was not validated with: a ``reference_view`` other than 0 for a model
    without camera rays (it generates as for the view it was trained with), and steps or guidance other than its
    validation's (``val_inference_steps`` / ``val_guidance_scale``, whose scores its training logged)."""
    h = diffusion.hparams
    if sampling.reference_view and not h.camera_rays:
        log.warning("--reference-view %d: this diffusion model has no camera rays (camera_rays: false), so it cannot "
                    "be told the photo is rig view %d; it generates the rig's views as for the reference view it was "
                    "trained with", sampling.reference_view, sampling.reference_view)
    validated = (int(h.get("val_inference_steps", sampling.steps)), float(h.get("val_guidance_scale", sampling.guidance)))
    if validated != (sampling.steps, float(sampling.guidance)):
        log.info("sampling with %d steps at guidance %g; this diffusion model was validated with %d steps at guidance "
                 "%g (--steps / --guidance to match)", sampling.steps, sampling.guidance, *validated)


SAMPLING_PRECISIONS = ("fp32", "bf16")


def generate_views(diffusion: Any, ref: Tensor, sampling: Sampling, seed: int,
                   cameras: tuple[Tensor, Tensor, Tensor] | None = None, precision: str = "fp32") -> dict[str, Any]:
    """References [B, 3, H, W] -> ``DiffusionModule.sample``'s {"images" [B, V, 3, S, S], "c2w", "fxfycxcy", ...}
    (the diffusion model's rig views, in rig order; a model conditioned on cameras takes the photo as rig view
    ``sampling.reference_view``, or a batch's own ``cameras``). ``precision`` ``bf16``: the UNet runs under bf16
    autocast on a CUDA device (half the time; the pixel recipe's scores did not change, docs/results.md "The pixel
    recipe and its sampling"), the images come back as float32. The first call for a model logs what it cannot take or was not
    validated with (:func:`note_sampling`)."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f"--precision must be one of {SAMPLING_PRECISIONS}, got {precision!r}")
    if not getattr(diffusion, "_sampling_noted", False):
        diffusion._sampling_noted = True
        note_sampling(diffusion, sampling)
    device = torch.device(diffusion.device)
    bf16 = precision == "bf16" and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = diffusion.sample(ref, num_inference_steps=sampling.steps, guidance_scale=sampling.guidance, seed=seed,
                               scheduler=sampling.scheduler, show_progress=True,
                               reference_view=sampling.reference_view, cameras=cameras)
    out["images"] = out["images"].float()
    return out


def lift_views(reconstruction: Any, views: Tensor, rig: Rig, input_views: list[int]) -> tuple[Any, int]:
    """Generated views [B, V, 3, S, S] in ``rig`` order -> (Gaussians, reconstruction size); the views are resized to
    the reconstruction model's size and given the rig's cameras at that size."""
    size = int(reconstruction.hparams.image_size)
    b = views.shape[0]
    x = resize_images(views, size)
    c2w, k = rig.cameras(size, device=views.device)
    sel = torch.tensor(input_views, device=views.device)
    gaussians = reconstruction.reconstruct(x[:, sel], c2w[sel].expand(b, -1, 4, 4), k[sel].expand(b, -1, 4))
    return gaussians, size


def render_views(reconstruction: Any, gaussians: Any, c2w: Tensor, fxfycxcy: Tensor, height: int, width: int,
                 background: Tensor | None = None) -> Tensor:
    """The Gaussians rendered by the reconstruction model's rasterizer at cameras [B, V, ...] -> rgb [B, V, 3, H, W]."""
    return reconstruction.render(gaussians, c2w, fxfycxcy, height, width, background)["rgb"]


@dataclasses.dataclass(frozen=True)
class Turntable:
    """The turntable a photo's outputs end with (``--turntable-*``, ``--fps``)."""

    frames: int = 36
    size: int = 256
    fps: int = 12
    formats: tuple[str, ...] = ("gif",)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.size < 8 or self.fps < 1:
            raise ValueError("--turntable-frames >= 1, --turntable-size >= 8 and --fps >= 1 are needed")
        check_video_formats(list(self.formats))


def write_photo_outputs(scene_id: str, ref: Tensor, diffusion: Any, reconstruction: Any, out_dir: Path,
                        sampling: Sampling, seed: int, input_views: list[int], background: Tensor,
                        turntable: Turntable) -> dict[str, Any]:
    """Run one prepared reference [3, H, W] through both stages and write its outputs (views/cam_XXX.png,
    cameras.json, gaussians.ply, turntable.*); returns its record for info.json."""
    rig: Rig = diffusion.rig
    t0 = time.time()
    out = generate_views(diffusion, ref[None].to(diffusion.device), sampling, seed)
    t_sample = time.time() - t0
    views = out["images"]  # [1, V, 3, S, S]
    size = views.shape[-1]
    names = [f"views/cam_{i:03d}.png" for i in range(rig.num_views)]
    for i, name in enumerate(names):
        save_png(out_dir / name, views[0, i])
    write_camera_file(out_dir / "cameras.json",
                      CameraFile(scene_id=scene_id, c2w=out["c2w"].detach().cpu(), fxfycxcy=out["fxfycxcy"].cpu(),
                                 sizes=[(size, size)] * rig.num_views, file_paths=names))
    t1 = time.time()
    gaussians, rec_size = lift_views(reconstruction, views, rig, input_views)
    gaussians = gaussians.detach()
    t_lift = time.time() - t1
    save_scene_ply(gaussians, out_dir / "gaussians.ply")
    backend = reconstruction.hparams.get("rasterizer", "auto")
    frames = render_turntable(gaussians, rig, num_frames=turntable.frames, size=turntable.size,
                              background=background.to(gaussians.means.device), backend=backend)
    written = write_turntable(frames, out_dir / "turntable", list(turntable.formats), fps=turntable.fps)
    return {"views": names, "view_names": list(rig.view_names), "view_size": size, "reconstruction_size": rec_size,
            "input_views": [rig.view_names[i] for i in input_views], "num_gaussians": int(gaussians.means.shape[1]),
            "turntables": [t.name for t in written],
            "seconds": {"sample": round(t_sample, 3), "reconstruct": round(t_lift, 3),
                        "total": round(time.time() - t0, 3)}}


__all__ = ["SAMPLING_PRECISIONS", "Turntable", "check_stages_and_rigs", "choose_background", "generate_views",
           "lift_views", "note_sampling", "parse_input_views", "render_views", "sampling_for_data_view",
           "write_photo_outputs"]
