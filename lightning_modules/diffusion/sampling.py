"""Sampling the multi-view diffusion model: the rig's views from reference photos, with classifier-free guidance.

:func:`sample_views` runs a diffusers scheduler (:data:`SAMPLERS`: ddim | ddpm | euler | dpm, built from the model's own
noise schedule and prediction type) over a :class:`~lightning_modules.diffusion.DiffusionModule`'s conditioning
(``conditions``: reference latents + image embedding; ``view_embeddings``: the rig's views) and denoiser
(``denoise``), all views of a scene at once; ``DiffusionModule.sample`` is this function. Guidance runs the
unconditional and conditional halves as one batch. Noise is drawn from a CPU generator seeded by ``seed``, so the same
seed gives the same views on the same device.

:class:`Sampling` holds the sampling settings and their defaults (FaceLift's inference: 50 DDIM steps at guidance 3)
for every caller: the tools' ``--steps`` / ``--guidance`` / ``--scheduler`` / ``--reference-view``, the evaluation and
synthesis settings, ``DiffusionModule.sample`` and the diffusers pipeline.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from torch import Tensor

from geometry.progress import progress

SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "euler": EulerDiscreteScheduler,
            "dpm": DPMSolverMultistepScheduler}


def check_sampler(name: str, what: str = "scheduler") -> None:
    """``name`` must be one of :data:`SAMPLERS` (``what``: how the caller names the setting, e.g. a flag)."""
    if name not in SAMPLERS:
        raise ValueError(f"{what} must be one of {sorted(SAMPLERS)}, got {name!r}")


MAX_GUIDANCE = 100.0  # classifier-free guidance scales beyond this only overflow the sampler


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the diffusion model samples (the tools' ``--steps`` / ``--guidance`` / ``--scheduler``; ``--reference-view``:
    the rig view a photo is taken as, for a model with ``camera_rays``). The defaults are FaceLift's; the pixel-space
    recipes sample best at 25 steps and guidance 1.5 (docs/results.md), which their exports record as their
    validation settings."""

    steps: int = 50
    guidance: float = 3.0
    scheduler: str = "ddim"
    reference_view: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:  # also NaN: black views and NaN Gaussians otherwise
            raise ValueError(f"--guidance must be a finite scale in [0, {MAX_GUIDANCE:g}], got {self.guidance}")
        if self.reference_view < 0:
            raise ValueError(f"--reference-view must be >= 0, got {self.reference_view}")
        check_sampler(self.scheduler, "--scheduler")


DEFAULT = Sampling()


def seeded_randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Normal noise; drawn on the generator's device then moved (reproducible across devices)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def make_sampler(scheduler_config: Any, name: Any = DEFAULT.scheduler) -> Any:
    """A diffusers scheduler for a model's noise schedule and prediction type (``scheduler_config``): ``name`` is one
    of :data:`SAMPLERS`, or a diffusers scheduler object (``pipe.scheduler = EulerDiscreteScheduler.from_config(...)``)
    of which a fresh copy is made from its own config (its class and settings; sampling never changes the caller's
    object, so a scheduler's step state cannot leak from one call into the next)."""
    if not isinstance(name, str):
        if not (hasattr(name, "set_timesteps") and hasattr(name, "step") and hasattr(name, "config")):
            raise TypeError(f"scheduler must be a name ({', '.join(sorted(SAMPLERS))}) or a diffusers scheduler, "
                            f"got {type(name).__name__}")
        return type(name).from_config(name.config)
    check_sampler(name)
    return SAMPLERS[name].from_config(scheduler_config)


def sampling_generator(seed: int, generator: Any = None) -> torch.Generator:
    """The noise source of one sampling call: ``generator`` (diffusers' argument; a list of one generator is taken
    as that one) or, without it, a CPU generator seeded by ``seed``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError("generator: give one torch.Generator (a list of one per image is not supported; the "
                             f"views of all images are drawn from one), got a list of {len(generator)}")
        generator = generator[0]
    if generator is None:
        return torch.Generator("cpu").manual_seed(int(seed))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


@torch.no_grad()
def sample_views(model: Any, ref_images: Tensor, num_inference_steps: int = DEFAULT.steps,
                 guidance_scale: float = DEFAULT.guidance, seed: int = 0, scheduler: str = DEFAULT.scheduler,
                 noise_level: int | None = None, eta: float = 0.0,
                 show_progress: bool = False, reference_view: int = 0,
                 cameras: tuple[Tensor, Tensor, Tensor] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """Generate ``model``'s rig views from reference images (``show_progress``: a bar over the denoising steps on a
    terminal, ``geometry.progress``). ``scheduler``: a name of :data:`SAMPLERS` or a diffusers scheduler object
    (:func:`make_sampler`); ``generator``: the noise source instead of a CPU generator seeded by ``seed``. A model with ``camera_rays`` is given the rays of ``cameras`` (target c2w
    [B, V, 4, 4], fxfycxcy [B, V, 4] at its image size, reference c2w [B, 4, 4]: a batch's own) or, by default, of
    the rig's cameras with the photo taken as rig view ``reference_view``.

    ref_images [B, 3, H, W] in [0, 1] (resized to the model's ``image_size`` when needed) ->
    {"images" [B, V, 3, S, S] in [0, 1], "c2w" [V, 4, 4], "fxfycxcy" [V, 4] (the model's rig at S px),
    "rig": rig.to_dict()}.
    """
    if ref_images.ndim != 4 or ref_images.shape[1] != 3:
        raise ValueError(f"ref_images must be [B, 3, H, W], got {list(ref_images.shape)}")
    size = int(model.hparams.image_size)
    device = model.device
    ref = ref_images.to(device).float()
    if tuple(ref.shape[-2:]) != (size, size):
        ref = F.interpolate(ref, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    b, v = ref.shape[0], model.rig.num_views
    gen = sampling_generator(seed, generator)
    level = model.hparams.noise_level if noise_level is None else noise_level
    ref_lat, img_emb = model.conditions(ref, level, None, gen)
    context = model.view_embeddings.for_batch(b)
    rays = None
    if model.hparams.camera_rays:
        cams = model.rig_cameras(b, reference_view, device) if cameras is None else \
            tuple(c.to(device).float() for c in cameras)
        rays = model.camera_rays(*cams)
    cfg = guidance_scale != 1.0
    if cfg:  # [unconditional; conditional], each scene-major with its V views; the cameras are kept in both
        ref_lat = torch.cat([torch.zeros_like(ref_lat), ref_lat])
        img_emb = torch.cat([torch.zeros_like(img_emb), img_emb])
        context = torch.cat([context, context])
        rays = None if rays is None else torch.cat([rays, rays])
    sampler = make_sampler(model.scheduler_config, scheduler)
    sampler.set_timesteps(num_inference_steps, device=device)
    h = size // model.vae_factor
    latents = seeded_randn((b * v, model.latent_channels, h, h), gen, device) * sampler.init_noise_sigma
    step_kwargs = {}
    params = inspect.signature(sampler.step).parameters
    if "eta" in params:
        step_kwargs["eta"] = eta
    if "generator" in params:
        step_kwargs["generator"] = gen
    steps = progress(sampler.timesteps, "sampling", unit="step", leave=False) if show_progress else sampler.timesteps
    for t in steps:
        x = sampler.scale_model_input(latents, t)
        x = torch.cat([x, x]) if cfg else x
        tt = t.expand(x.shape[0]).to(device)
        pred = model.denoise(x, tt, ref_lat, img_emb, context, rays).float()
        if cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        latents = sampler.step(pred, t, latents, **step_kwargs).prev_sample
    images = model.decode_latents(latents).view(b, v, 3, size, size)
    c2w, k = model.rig.cameras(size, device=device)
    return {"images": images, "c2w": c2w, "fxfycxcy": k, "rig": model.rig.to_dict()}


__all__ = ["DEFAULT", "MAX_GUIDANCE", "SAMPLERS", "Sampling", "check_sampler", "make_sampler", "sample_views", "sampling_generator",
           "seeded_randn"]
