"""What the multi-view UNet is conditioned on, and how it is called: a mixin of
:class:`~lightning_modules.diffusion.DiffusionModule` (the class's own text, kept apart from training, validation and
export).

- the rig's views: per-view embeddings (``view_conditioning.ViewEmbeddings``: FaceLift's file, learned ones, or a
  file made from text), made by :meth:`MultiViewConditioning._make_view_embeddings` from the module's arguments;
- the reference photo: its latents (the VAE's, or the image itself for ``autoencoder: pixel``) concatenated to the
  noisy latents of every view, and its unCLIP image embedding (CLIP image encoder, noised to ``noise_level``) as
  the UNet's class embedding;
- the target cameras (``camera_rays: true``): each view's Plücker rays in the frame of the reference camera
  (:meth:`MultiViewConditioning.camera_rays`), 6 more input channels. The geometry from the reference to each view
  is then an input instead of something the UNet must infer, and a reference from any rig view (``reference_view:
  random_rig``) is well posed: the reference's own slot is the one whose rays are the reference camera's;
- classifier-free guidance's unconditional input: the reference (latents and embedding) dropped to zeros per scene,
  the cameras kept;
- the UNet call itself (:meth:`MultiViewConditioning.denoise`), with the module's SDPA backend.

It reads what the module's constructor sets: ``rig``, ``unet``, ``vae``, ``image_encoder``, ``image_normalizer``,
``image_noising_scheduler``, ``clip_size`` / ``clip_mean`` / ``clip_std``, ``autoencoder``, ``latent_scale``,
``attention_backend`` and ``hparams``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor

from geometry.cameras import invert_rigid, scale_intrinsics
from geometry.rays import pixel_rays, plucker
from lightning_modules.diffusion.sampling import seeded_randn
from lightning_modules.diffusion.view_conditioning import SOURCES as VIEW_SOURCES
from lightning_modules.diffusion.view_conditioning import ViewEmbeddings, check_embeddings_fit
from lightning_modules.sdpa import attention_backend


def _batch_rigs(batch: dict) -> list[str]:
    rig = batch.get("rig")
    if rig is None:
        return []
    return [rig] if isinstance(rig, str) else [str(r) for r in rig]


class MultiViewConditioning:
    """Conditioning and the UNet call of the multi-view diffusion module (module docstring)."""

    rig: Any
    hparams: Any

    def _make_view_embeddings(self) -> ViewEmbeddings:
        """From ``view_embeddings_path`` (its source must be ``view_embeddings``), a file given as
        ``view_embeddings: FILE`` (any source: FaceLift's .pt, an export's or tools.view_embeddings' .safetensors; the
        file's rig must be the module's), FaceLift's ``facelift_embeds`` or new learned ones (``view_init``)."""
        h = self.hparams
        dim = int(self.unet.config.cross_attention_dim)
        if h.view_embeddings not in VIEW_SOURCES:  # view_embeddings: FILE
            emb = ViewEmbeddings.load(h.view_embeddings, self.rig)
            check_embeddings_fit(tuple(emb.embeds.shape), self.rig.num_views, dim, str(h.view_embeddings))
        elif h.view_embeddings_path:
            emb = ViewEmbeddings.load(h.view_embeddings_path, self.rig)
            if emb.source != h.view_embeddings:
                raise ValueError(f"{h.view_embeddings_path}: holds {emb.source!r} view embeddings but "
                                 f"view_embeddings={h.view_embeddings!r}")
        elif h.view_embeddings == "text":
            raise ValueError("view_embeddings='text' needs the file: view_embeddings: FILE (made by "
                             "python -m tools.view_embeddings)")
        elif h.view_embeddings == "facelift":
            if not h.facelift_embeds:
                raise ValueError("view_embeddings='facelift' needs facelift_embeds=PATH to FaceLift's "
                                 "fixed_prompt_embeds_6view.pt (or view_embeddings_path to an export's file)")
            emb = ViewEmbeddings.from_facelift(h.facelift_embeds, self.rig)
        elif h.view_init == "nearest_facelift":
            if not h.facelift_embeds:
                raise ValueError("view_init='nearest_facelift' needs facelift_embeds=PATH; use view_init='scratch' "
                                 "to start learned view embeddings from random values")
            emb = ViewEmbeddings.from_nearest_facelift(self.rig, h.facelift_embeds)
        elif h.view_init == "scratch":
            emb = ViewEmbeddings.from_scratch(self.rig, tokens=h.view_tokens, dim=dim)
        else:
            raise ValueError(f"view_init must be 'nearest_facelift' or 'scratch', got {h.view_init!r}")
        if emb.dim != dim:
            check_embeddings_fit(tuple(emb.embeds.shape), self.rig.num_views, dim, "view embeddings")
        if emb.num_views != self.rig.num_views:
            raise ValueError(f"view embeddings have {emb.num_views} views, rig {self.rig.name!r} has "
                             f"{self.rig.num_views}")
        return emb

    def check_batch_rig(self, batch: dict) -> None:
        """Every scene of ``batch`` must come from the module's rig (error naming both otherwise)."""
        for name in _batch_rigs(batch):
            if name != self.rig.name:
                raise ValueError(f"batch rig {name!r} does not match the diffusion model's rig {self.rig.name!r}: "
                                 "targets must be rendered/captured with the rig the model generates")
        v = batch["images"].shape[1]
        if v != self.rig.num_views:
            raise ValueError(f"batch has {v} target views; rig {self.rig.name!r} has {self.rig.num_views}")

    def clip_pixels(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [0, 1] -> CLIP input [N, 3, h, w] (resize + normalise as the feature extractor)."""
        x = F.interpolate(images.float(), size=self.clip_size, mode="bicubic", align_corners=False, antialias=True)
        return (x.clamp(0, 1) - self.clip_mean) / self.clip_std

    @torch.no_grad()
    def encode_latents(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None
                       ) -> Tensor:
        """images [N, 3, H, W] in [0, 1] -> scaled VAE latents [N, 4, H/f, W/f] (posterior mode or a sample);
        pixel autoencoder: the images at ``image_size`` in [-1, 1], [N, 3, S, S] (deterministic)."""
        if self.autoencoder == "pixel":
            return self.vae.encode(images)
        dist = self.vae.encode(images.to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mode()
        return z * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """[N, C, h, w] -> images [N, 3, h*f, w*f] in [0, 1]."""
        if self.autoencoder == "pixel":
            return self.vae.decode(latents)
        x = self.vae.decode(latents.to(self.vae.dtype) / self.latent_scale).sample
        return (x.float() / 2.0 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def image_embeddings(self, images: Tensor, noise_level: int, generator: torch.Generator | None = None) -> Tensor:
        """unCLIP image conditioning: images [B, 3, H, W] in [0, 1] -> [B, 2E] = [noised CLIP embedding,
        sinusoidal noise-level embedding]."""
        emb = self.image_encoder(self.clip_pixels(images).to(self.image_encoder.dtype)).image_embeds.float()
        levels = torch.full((emb.shape[0],), int(noise_level), device=emb.device, dtype=torch.long)
        noise = seeded_randn(tuple(emb.shape), generator, emb.device)
        x = self.image_normalizer.scale(emb)
        x = self.image_noising_scheduler.add_noise(x, noise, levels)
        x = self.image_normalizer.unscale(x)
        level_emb = get_timestep_embedding(levels, emb.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([x, level_emb.to(x)], dim=1)

    def conditions(self, ref: Tensor, noise_level: int, drop: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """ref [B, 3, H, W] in [0, 1] -> (reference latents [(B V), 4, h, w], image embeddings [(B V), 2E]);
        scenes where ``drop`` [B] is True get zeros for both (classifier-free guidance's unconditional input)."""
        v = self.rig.num_views
        ref_lat = self.encode_latents(ref)
        img_emb = self.image_embeddings(ref, noise_level, generator)
        if drop is not None:
            keep = (~drop).to(ref_lat.dtype)
            ref_lat = ref_lat * keep.view(-1, 1, 1, 1)
            img_emb = img_emb * keep.view(-1, 1).to(img_emb.dtype)
        return ref_lat.repeat_interleave(v, dim=0), img_emb.repeat_interleave(v, dim=0)

    def camera_rays(self, c2w: Tensor, fxfycxcy: Tensor, ref_c2w: Tensor) -> Tensor:
        """Plücker rays [(B V), 6, h, h] at the latent size of the target cameras c2w [B, V, 4, 4] (OpenCV, intrinsics
        fxfycxcy [B, V, 4] at ``image_size``) in the frame of their reference camera ref_c2w [B, 4, 4], positions in
        rig radii (the UNet's extra inputs when ``camera_rays`` is on)."""
        size = int(self.hparams.image_size)
        h = size // self.vae_factor
        rel = invert_rigid(ref_c2w.double())[:, None] @ c2w.double()
        rel[..., :3, 3] /= float(self.rig.radius)
        k = scale_intrinsics(fxfycxcy.double(), (size, size), (h, h))
        origins, dirs = pixel_rays(rel, k, h, h)
        return plucker(origins, dirs).float().permute(0, 1, 4, 2, 3).flatten(0, 1)

    def rig_cameras(self, batch_size: int, reference_view: int, device: torch.device | str
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """The rig's cameras as a batch: (c2w [B, V, 4, 4], fxfycxcy [B, V, 4] at ``image_size``, the reference
        camera [B, 4, 4] = the rig's view ``reference_view``): the cameras of a photo taken as that rig view."""
        v = self.rig.num_views
        if not 0 <= reference_view < v:
            raise ValueError(f"reference_view {reference_view}: the rig {self.rig.name!r} has {v} views")
        c2w, k = self.rig.cameras(int(self.hparams.image_size), device=device)
        c2w, k = c2w.float(), k.float()
        return (c2w.expand(batch_size, -1, -1, -1), k.expand(batch_size, -1, -1),
                c2w[reference_view].expand(batch_size, -1, -1))

    def denoise(self, noisy: Tensor, timesteps: Tensor, ref_latents: Tensor, image_embeds: Tensor,
                context: Tensor, rays: Tensor | None = None) -> Tensor:
        """UNet prediction [(B V), 4, h, w] from noisy latents, per-sample timesteps [(B V)], reference latents,
        image embeddings [(B V), 2E], view context [(B V), T, D] and, with ``camera_rays``, the views' rays
        [(B V), 6, h, w] (:meth:`camera_rays`)."""
        dtype = self.unet.dtype if not torch.is_autocast_enabled(noisy.device.type) else noisy.dtype
        parts = [noisy, ref_latents.to(noisy.dtype)] + ([] if rays is None else [rays.to(noisy.dtype)])
        x = torch.cat(parts, dim=1).to(dtype)
        with attention_backend(self.attention_backend):
            return self.unet(x, timesteps, encoder_hidden_states=context.to(dtype),
                             class_labels=image_embeds.to(dtype)).sample


__all__ = ["MultiViewConditioning"]
