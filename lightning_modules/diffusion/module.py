"""DiffusionModule: one reference image -> the rig's views, with a multi-view diffusers UNet (FaceLift's MVDiffusion).

Model (SD 2.1 unCLIP layout, see ``lightning_modules.diffusion.pretrained``): the UNet sees [noisy latent, reference latent]
(8 channels), class labels = [CLIP image embedding of the reference (noised by the unCLIP image normalizer +
noise schedule at ``noise_level``), sinusoidal embedding of the noise level] (2 x E), and the rig's per-view
embeddings as cross-attention context (``lightning_modules.diffusion.view_conditioning``). The views of a scene are folded
into the batch in rig order, [(B V), ...], and the UNet's self-attention spans them
(``lightning_modules.diffusion.mv_attention``, mode ``sparse`` or ``joint``, stored in checkpoints and exports).
``view_embeddings``: ``facelift`` (FaceLift's fixed file, ``facelift_embeds``), ``learned`` (``view_init``) or a
file to start from (``view_embeddings: FILE``: e.g. ``python -m tools.view_embeddings``' text-built ones; bound to the
rig stored in it).

Training randomness (timesteps, noise, the VAE posterior sample, the unCLIP image-embedding noise, classifier-free
guidance condition dropout) comes from a generator on the module's device, re-seeded every training step from
(seed, global step, global rank, micro-batch index within gradient accumulation) (``training_generator``), never from
the global torch RNG, which Lightning does not checkpoint: a run resumed from a mid-epoch checkpoint draws exactly
what the uninterrupted run drew, DDP ranks draw different noise, and accumulated micro-batches differ. The seed is the
run's ``seed_everything`` seed (``PL_GLOBAL_SEED``, 0 when unset), saved as ``checkpoint["mvlift"]["noise_seed"]``
and taken back on resume. The backgrounds of the training batches are recorded too
(``lightning_modules.training_background``: ``checkpoint["mvlift"]["background"]`` and the export's metadata).

Batches (diffusion stage, docs/ARCHITECTURE.md): ``images`` [B, V, 3, H, W] targets in rig order in [0, 1],
``ref_images`` [B, 1, 3, H, W], optional ``input_images`` [B, 1, 3, H, W] (augmented reference: the model's input
when present), ``kind`` list[str], ``rig`` list[str] (must name the module's rig).

Autoencoder (``autoencoder``, stored in checkpoints and exports): ``vae`` — the pipeline's frozen SD VAE (latents
[4, S/8, S/8] in SD; the tiny random one halves the size) —, or ``pixel`` — ``lightning_modules.diffusion.pretrained.
PixelAutoencoder``, the identity: the UNet denoises the image itself at ``image_size`` (RGB in [-1, 1], 3 channels;
inputs = 2 x 3 for the noisy and the reference image). A pixel-space model needs no VAE weights: built from scratch
(``pretrained`` unset) it learns from random initialisation (``unet_channels``, ``unet_layers_per_block``,
``unet_attention_levels``, ``unet_head_dim`` size its UNet); its export has no ``vae/`` folder.

Cameras (``camera_rays``, off by default, stored in checkpoints and exports): the UNet also sees each view's
Plücker rays in the reference camera's frame (6 channels, ``MultiViewConditioning.camera_rays``): from the batch's
cameras in training and validation, from the rig's with the photo taken as rig view ``reference_view`` (default 0)
when sampling. Without them the UNet knows a view only by its learned embedding, so it must guess which view the
reference is: with ``reference_view: random_rig`` and subjects of any heading that guess is impossible. A pretrained
UNet without ray inputs (SD, FaceLift) gets 6 more ``conv_in`` channels that start at zero, so it begins as it was.

Validation samples the first ``val_sample_batches`` batches (``val_inference_steps`` sampling steps) and logs
val/psnr, val/ssim and val/psnr_fg (inside the target's foreground box) per source kind, plus val/lpips when local
``vgg_weights`` and ``lpips_weights`` are given (LPIPS stays out of checkpoints). Whether the model learned anything
beyond its input: ``val/gen_psnr`` (the generated views against the ground-truth rig views) next to
``val/copy_ref_psnr``, the baseline that copies the reference image into every view (``copy_reference_views``),
and the same pair for ``psnr_fg`` (``val/gen_psnr_fg``, ``val/copy_ref_psnr_fg``). Both are over the novel views
only: a target view that is the reference view itself (``reference_view_mask``) is left out, where copying is exact.

Example (tiny random components, CPU):
    >>> m = DiffusionModule(rig="facelift_6view", view_embeddings="learned", view_init="scratch", image_size=32,
    ...                     view_tokens=4)
    >>> out = m.sample(torch.rand(1, 3, 32, 32), num_inference_steps=2)
    >>> tuple(out["images"].shape), tuple(out["c2w"].shape)
    ((1, 6, 3, 32, 32), (6, 4, 4))
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    UNet2DConditionModel,
)
from torch import Tensor
from torchmetrics import MeanMetric

from geometry.files import make_tree_readable
from geometry.rig import Rig, load_rig
from lightning_modules.artifacts import EMA_WEIGHTS, WEIGHTS
from lightning_modules.diffusion.conditioning import MultiViewConditioning
from lightning_modules.diffusion.mv_attention import check_mode, install_multiview_attention, multiview_attention_mode
from lightning_modules.diffusion.pipeline_files import write_pipeline_files
from lightning_modules.diffusion.pretrained import (
    PipelineComponents,
    build_scratch_components,
    check_autoencoder,
    latent_channels_of,
    load_pipeline_components,
    save_pipeline_components,
    unet_in_channels,
)
from lightning_modules.diffusion.sampling import DEFAULT as SAMPLING
from lightning_modules.diffusion.sampling import make_sampler, sample_views, seeded_randn
from lightning_modules.diffusion.view_conditioning import EXPORT_NAME as VIEW_EMBEDDINGS_FILE
from lightning_modules.diffusion.view_conditioning import SOURCES as VIEW_SOURCES
from lightning_modules.diffusion.view_conditioning import is_embeddings_file
from lightning_modules.metrics import KindMetrics, batch_kinds, view_metrics
from lightning_modules.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    check_optimizer,
    trainer_clips_scaled_gradients,
)
from lightning_modules.reconstruction.losses import load_lpips
from lightning_modules.sdpa import check_attention_backend
from lightning_modules.stage import StageModule

log = logging.getLogger("mvlift.diffusion")

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what the UNet predicts: noise, velocity, clean latents
FROZEN_PREFIXES = ("vae.", "image_encoder.", "image_normalizer.", "lpips.")
# the UNet config keys that fix its layers and their attention heads (DiffusionModule.trained_with)
UNET_ARCHITECTURE = ("in_channels", "out_channels", "block_out_channels", "down_block_types", "mid_block_type",
                     "up_block_types", "layers_per_block", "attention_head_dim", "cross_attention_dim",
                     "transformer_layers_per_block", "use_linear_projection", "class_embed_type",
                     "projection_class_embeddings_input_dim", "norm_num_groups")


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def step_seed(seed: int, step: int, rank: int, micro_batch: int) -> int:
    """64-bit seed of one training micro-batch from (seed, global step, global rank, micro-batch index).

    >>> step_seed(0, 5, 0, 0) == step_seed(0, 5, 0, 0) != step_seed(0, 5, 1, 0)
    True
    """
    words = np.random.SeedSequence([int(seed) % 2**64, int(step), int(rank), int(micro_batch)]).generate_state(
        2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def min_snr_weights(alphas_cumprod: Tensor, timesteps: Tensor, gamma: float | None, prediction_type: str) -> Tensor:
    """Min-SNR-γ loss weights per sample [N] (Hang et al. 2023): min(SNR, γ)/SNR for epsilon, /(SNR+1) for v,
    min(SNR, γ) itself for ``sample`` (the clean latents); all ones without ``gamma``."""
    ac = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = ac / (1.0 - ac)
    if not gamma:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "sample":
        return clipped
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


def clip_input_size(feature_extractor: Any) -> tuple[int, int]:
    """(height, width) the CLIP image processor crops to (dict, SizeDict or int)."""
    crop = feature_extractor.crop_size
    if isinstance(crop, int):
        return crop, crop
    get = crop.get if isinstance(crop, dict) else (lambda k: getattr(crop, k))
    return int(get("height")), int(get("width"))


def copy_reference_views(ref: Tensor, num_views: int, size: int | tuple[int, int]) -> Tensor:
    """The "copy the reference into every view" baseline: ref [B, 3, H, W] -> [B, num_views, 3, h, w] at ``size``.

    A multi-view model has learned something when its generated views beat this against the ground-truth views.

    >>> tuple(copy_reference_views(torch.rand(2, 3, 8, 8), 6, 4).shape)
    (2, 6, 3, 4, 4)
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = ref.float()
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return x[:, None].expand(-1, num_views, -1, -1, -1)


def reference_view_mask(batch: dict) -> Tensor | None:
    """[B, V] bool: which target views are the reference view itself (``index[..., 0] == ref_view``); None when the
    batch does not say (no ``index`` / ``ref_view``).

    >>> reference_view_mask({"index": torch.tensor([[[0, 7], [1, 7], [2, 7]]]), "ref_view": torch.tensor([1])})
    tensor([[False,  True, False]])
    """
    index, ref = batch.get("index"), batch.get("ref_view")
    if not isinstance(index, Tensor) or not isinstance(ref, Tensor):
        return None
    return index[..., 0] == ref.view(-1, 1).to(index.device)


def batch_cameras(batch: dict) -> tuple[Tensor, Tensor, Tensor] | None:
    """A diffusion batch's cameras as ``DiffusionModule.sample`` takes them: (target c2w [B, V, 4, 4], their
    fxfycxcy [B, V, 4], the reference camera [B, 4, 4]); None when the batch has none."""
    if not all(isinstance(batch.get(k), Tensor) for k in ("c2w", "fxfycxcy", "ref_c2w")):
        return None
    return batch["c2w"], batch["fxfycxcy"], batch["ref_c2w"][:, 0]


def novel_view_means(values: Tensor, is_ref: Tensor | None) -> Tensor:
    """Per-scene means [B] of per-view values [B, V] over the views that are not the reference (NaN values, e.g.
    ``psnr_fg`` of an empty view, left out; NaN for a scene with none left).

    >>> novel_view_means(torch.tensor([[float("inf"), 20.0, 30.0]]), torch.tensor([[True, False, False]]))
    tensor([25.])
    """
    v = values.float()
    if is_ref is not None:
        v = v.masked_fill(is_ref.to(v.device), float("nan"))
    return v.nanmean(-1)


COMPARED = ("gen_psnr", "copy_ref_psnr", "gen_psnr_fg", "copy_ref_psnr_fg")  # validation: model vs copy baseline


def _resize_views(x: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, V, C, H, W] -> [B, V, C, *size] (bilinear, antialiased)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x.flatten(0, 1).float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.view(*x.shape[:3], *size)


class DiffusionModule(MultiViewConditioning, StageModule):
    """Multi-view diffusion training, sampling and export. Constructor arguments are plain types (LightningCLI;
    ``python -m tools.fit --model.help lightning_modules.diffusion.DiffusionModule`` prints them).

    Args:
        rig: the rig (name or path) whose views the model generates; set in the data section (shared setting).
        pretrained: a diffusers pipeline folder (FaceLift's pipeckpts/, SD 2.1 unCLIP) read with local files only;
            None builds the components from scratch (the unet_* arguments).
        unet_subfolder: the pipeline folder's UNet subfolder (e.g. unet_ema).
        attention: multi-view self-attention: "sparse" (each view attends to itself and the first; FaceLift's) or
            "joint" (all views).
        attention_backend: the SDPA kernel tried first ("auto": torch's own order).
        view_embeddings: "facelift" (FaceLift's fixed file), "learned" (from view_init) or a file to start from.
        facelift_embeds: FaceLift's per-view prompt embeddings file (view_embeddings: facelift).
        view_embeddings_path: a view-embeddings file to start from (e.g. an export's).
        view_init: learned embeddings' start: "nearest_facelift" (FaceLift's row nearest each view) or "scratch".
        view_tokens: tokens per view embedding (FaceLift: 77).
        train_view_embeddings: train the view embeddings with the UNet.
        image_size: square view size in pixels; set in the data section.
        prediction_type: "epsilon" | "v_prediction" | "sample"; None: the pipeline scheduler's (or the
            autoencoder's default), recorded once resolved.
        noise_level: unCLIP noise level of the reference's CLIP image embedding.
        autoencoder: "vae" (the pipeline's frozen SD VAE) or "pixel" (denoise the image itself).
        camera_rays: give the UNet each view's Plücker rays in the reference camera's frame (6 more inputs).
        unet_width: from-scratch UNet base width.
        cross_attention_dim: from-scratch view-embedding width.
        image_embed_dim: from-scratch CLIP image-embedding width.
        unet_channels: from-scratch UNet channels per level (default unet_width, 2 x unet_width).
        unet_layers_per_block: from-scratch UNet layers per level.
        unet_attention_levels: from-scratch UNet levels with attention.
        unet_head_dim: from-scratch UNet attention head size.
        snr_gamma: min-SNR loss weighting gamma; None for plain MSE.
        cond_drop_prob: probability of dropping the conditioning (classifier-free guidance training).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        max_steps: schedule length when the trainer sets none.
        decay: "constant" | "cosine" after warm-up.
        freeze: parameter-name patterns whose parameters are frozen (an unknown pattern is an error).
        lr_groups: parameter-name pattern -> learning rate for the matching parameters.
        optimizer: "adamw" | "adamw8bit" | "auto".
        grad_checkpointing: recompute UNet activations in the backward pass (less memory).
        compile: torch.compile the UNet.
        val_inference_steps: sampling steps of validation samples.
        val_guidance_scale: guidance of validation samples.
        val_sample_batches: validation batches sampled.
        val_sample_every_n_steps: fewest training steps between two sampled validations.
        vgg_weights: local VGG-16 weights for val/lpips.
        lpips_weights: local LPIPS head weights for val/lpips.
    """

    stage = "diffusion"
    pipeline_tag = "image-to-image"  # one photo -> the rig's views (model card metadata)
    card_tags = ("diffusers", "multi-view-diffusion", "novel-view-synthesis")
    ema_target = "unet"  # the EMA callback keeps a shadow of self.unet and calls export(..., ema_weights=...)
    export_drops = ("pretrained", "view_embeddings_path", "facelift_embeds", "unet_subfolder")  # the export is all

    def __init__(
        self,
        rig: str = "facelift_6view",
        pretrained: str | None = None,
        unet_subfolder: str = "unet",
        attention: str = "sparse",
        attention_backend: str = "auto",
        view_embeddings: str = "facelift",
        facelift_embeds: str | None = None,
        view_embeddings_path: str | None = None,
        view_init: str = "nearest_facelift",
        view_tokens: int = 77,
        train_view_embeddings: bool = True,
        image_size: int = 512,
        prediction_type: str | None = None,
        noise_level: int = 0,
        autoencoder: str = "vae",
        camera_rays: bool = False,
        # the architecture built from scratch when pretrained is None (pretrained.build_scratch_components: a random
        # UNet of unet_channels (default unet_width, 2 x unet_width), a small random CLIP vision encoder giving
        # image_embed_dim, a small VAE or the pixel autoencoder); cross_attention_dim: the view embeddings' width
        unet_width: int = 32,
        cross_attention_dim: int = 32,
        image_embed_dim: int = 16,
        unet_channels: list[int] | None = None,
        unet_layers_per_block: int = 1,
        unet_attention_levels: list[bool] | None = None,
        unet_head_dim: int = 16,
        # training
        snr_gamma: float | None = 5.0,
        cond_drop_prob: float = 0.05,
        lr: float = 1e-5,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        max_steps: int = 100_000,
        decay: str = "constant",
        freeze: list[str] | None = None,
        lr_groups: dict[str, float] | None = None,
        optimizer: str = "adamw",
        grad_checkpointing: bool = False,
        compile: bool = False,
        # validation
        val_inference_steps: int = 20,
        val_guidance_scale: float = SAMPLING.guidance,
        val_sample_batches: int = 1,
        val_sample_every_n_steps: int = 1000,
        vgg_weights: str | None = None,
        lpips_weights: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.attention_mode = check_mode(attention)
        self.attention_backend = check_attention_backend(attention_backend)
        check_optimizer(optimizer)
        if view_embeddings not in VIEW_SOURCES and not is_embeddings_file(view_embeddings):
            raise ValueError(f"view_embeddings must be 'facelift', 'learned' or a view embeddings file (.safetensors "
                             f"from an export or tools.view_embeddings, FaceLift's .pt), got {view_embeddings!r}")
        self.rig: Rig = load_rig(rig)
        check_autoencoder(autoencoder)

        if pretrained:
            c = load_pipeline_components(pretrained, unet_subfolder=unet_subfolder, autoencoder=autoencoder,
                                         image_size=image_size, in_channels=unet_in_channels(autoencoder, camera_rays))
        else:
            default_prediction = "v_prediction" if autoencoder == "pixel" else "epsilon"
            c = build_scratch_components(image_size=image_size, in_channels=unet_in_channels(autoencoder, camera_rays),
                                      cross_attention_dim=cross_attention_dim,
                                      image_embed_dim=image_embed_dim, width=unet_width,
                                      prediction_type=prediction_type or default_prediction, autoencoder=autoencoder,
                                      unet_channels=unet_channels, layers_per_block=unet_layers_per_block,
                                      attention_levels=unet_attention_levels, head_dim=unet_head_dim)
        self._set_components(c, prediction_type)
        self.prediction_type_derived = prediction_type is None  # from the folder's scheduler / the autoencoder
        self.hparams.prediction_type = self.prediction_type  # resolved once: checkpoints and exports record it
        upstream_sparse = c.upstream_unet_config.get("sparse_mv_attention")
        if upstream_sparse is not None and (attention == "sparse") != bool(upstream_sparse):
            log.warning("%s: the UNet was trained with %s multi-view attention; this module uses %r (as configured)",
                        pretrained, "sparse" if upstream_sparse else "joint", attention)
        self.view_embeddings = self._make_view_embeddings()
        self.view_embeddings.requires_grad_(self.view_embeddings.learnable and train_view_embeddings)
        install_multiview_attention(self.unet, self.rig.num_views, self.attention_mode)
        if grad_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if compile:  # in place (Module.compile): parameter names, exports and checkpoints are unchanged
            self.unet.compile()
        dropout = sorted({m.p for m in self.unet.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0})
        if dropout:
            log.warning("the UNet has dropout %s: it draws from the global torch RNG, which Lightning does not "
                        "checkpoint, so a resumed run will not repeat the uninterrupted one exactly", dropout)
        self._noise_seed: int | None = None  # resolved at the first training step (or taken from the resumed ckpt)
        self._generators: dict[str, torch.Generator] = {}
        self._last_sample_step: int | None = None
        self._val_views: dict[str, Tensor] | None = None  # this validation's first sampled batch (validation_images)
        self.lpips = load_lpips(vgg_weights, lpips_weights) if (vgg_weights or lpips_weights) else None
        self.val_metrics = KindMetrics()
        self.compare_metrics = torch.nn.ModuleDict({k: MeanMetric(nan_strategy="ignore") for k in COMPARED})

    # ---- construction -----------------------------------------------------------------------------------------
    def _set_components(self, c: PipelineComponents, prediction_type: str | None) -> None:
        # diffusers' from_pretrained returns eval mode and Lightning does not switch modes at fit start: a loaded UNet
        # would fine-tune with its dropout off. Trained parts start in train mode, as a freshly built module does.
        self.unet: UNet2DConditionModel = c.unet.train()
        self.vae = c.vae.requires_grad_(False).eval()
        self.image_encoder = c.image_encoder.requires_grad_(False).eval()
        self.image_normalizer = c.image_normalizer.requires_grad_(False)
        self.feature_extractor = c.feature_extractor
        self.image_noising_scheduler = c.image_noising_scheduler
        self.pipeline_notes = list(c.notes)
        self.scheduler_config = dict(c.scheduler_config)
        self._use_prediction_type(prediction_type or c.scheduler_config.get("prediction_type", "epsilon"))
        fe = c.feature_extractor
        self.clip_size = clip_input_size(fe)
        self.register_buffer("clip_mean", torch.tensor(fe.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(fe.image_std).view(1, 3, 1, 1), persistent=False)
        self.autoencoder = c.autoencoder
        if self.autoencoder == "pixel":
            self.latent_scale = float(self.vae.scaling_factor)
            self.vae_factor = int(self.vae.downsample_factor)
        else:
            self.latent_scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
            self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = latent_channels_of(self.autoencoder)
        if int(self.unet.config.out_channels) != self.latent_channels:
            raise ValueError(f"the UNet predicts {self.unet.config.out_channels} channels but the {self.autoencoder!r} "
                             f"autoencoder's latents have {self.latent_channels}")
        self._components = c

    def _use_prediction_type(self, pt: str) -> None:
        if pt not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {pt!r}")
        self.prediction_type = pt
        self.scheduler_config = {**self.scheduler_config, "prediction_type": pt}
        self.train_scheduler = DDPMScheduler.from_config(self.scheduler_config)

    def train(self, mode: bool = True) -> DiffusionModule:
        """Frozen components (VAE, CLIP image encoder) stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.image_encoder.eval()
        return self

    @property
    def view_rig(self) -> str:
        """Name of the rig the view conditioning was made for (always the module's rig)."""
        return self.view_embeddings.rig_name

    # ---- training -----------------------------------------------------------------------------------------------
    def reference_input(self, batch: dict) -> Tensor:
        """The model's reference input [B, 3, H, W]: the augmented reference when present, else the clean one."""
        ref = batch.get("input_images")
        if ref is None:
            ref = batch["ref_images"]
        if ref.ndim != 5 or ref.shape[1] != 1:
            raise ValueError(f"reference images must be [B, 1, 3, H, W], got {list(ref.shape)}")
        return ref[:, 0]

    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None, cond_drop_prob: float | None = None
                       ) -> dict[str, Tensor]:
        """Min-SNR-weighted denoising loss of a batch: {"loss", "mse"} scalars. One timestep per scene (shared by its
        views); conditions dropped together per scene with ``cond_drop_prob``. Deterministic for a ``generator``."""
        self.check_batch_rig(batch)
        images = batch["images"]
        b, v = images.shape[:2]
        device = images.device
        p = self.hparams.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        with torch.no_grad():
            latents = self.encode_latents(images.flatten(0, 1), sample=True, generator=generator).float()
        drop = _rand((b,), generator, device) < p if p > 0 else None
        ref_lat, img_emb = self.conditions(self.reference_input(batch), self.hparams.noise_level, drop, generator)
        noise = seeded_randn(tuple(latents.shape), generator, device)
        n_train = self.train_scheduler.config.num_train_timesteps
        if generator is None:
            t_scene = torch.randint(0, n_train, (b,), device=device)
        else:
            t_scene = torch.randint(0, n_train, (b,), generator=generator, device=generator.device).to(device)
        t = t_scene.repeat_interleave(v)
        noisy = self.train_scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction_type == "epsilon" else latents if self.prediction_type == "sample" \
            else self.train_scheduler.get_velocity(latents, noise, t)
        context = self.view_embeddings.for_batch(b)
        cameras = self.cameras_of(batch)
        rays = None if cameras is None else self.camera_rays(*cameras)
        pred = self.denoise(noisy, t, ref_lat, img_emb, context, rays)
        mse = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        w = min_snr_weights(self.train_scheduler.alphas_cumprod, t, self.hparams.snr_gamma, self.prediction_type)
        return {"loss": (mse * w).mean(), "mse": mse.mean().detach()}

    def cameras_of(self, batch: dict) -> tuple[Tensor, Tensor, Tensor] | None:
        """The batch's cameras (:func:`batch_cameras`) when the model is conditioned on cameras (``camera_rays``), else
        None; a model conditioned on cameras refuses a batch without them."""
        if not self.hparams.camera_rays:
            return None
        cameras = batch_cameras(batch)
        if cameras is None:
            raise ValueError("camera_rays: the batch has no cameras (c2w, fxfycxcy, ref_c2w): the diffusion stage's "
                             "DataModule gives them for every source")
        return cameras

    @property
    def noise_seed(self) -> int:
        """Seed of the training draws: the resumed checkpoint's, else the run's seed_everything seed, else 0."""
        if self._noise_seed is None:
            self._noise_seed = int(os.environ.get("PL_GLOBAL_SEED") or 0)
        return self._noise_seed

    def training_generator(self, batch_idx: int) -> torch.Generator:
        """The generator of one training micro-batch, on the module's device (a CUDA generator on GPU), seeded with
        ``step_seed(noise_seed, global_step, global_rank, batch_idx % accumulate_grad_batches)``. One generator per
        device is kept and re-seeded (cheap: no allocation per step)."""
        trainer = self._trainer
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1)) if trainer is not None else 1
        seed = step_seed(self.noise_seed, self.global_step, self.global_rank, batch_idx % accumulate)
        device = self.device
        gen = self._generators.get(str(device))
        if gen is None:
            gen = self._generators[str(device)] = torch.Generator(device=device)
        return gen.manual_seed(seed)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self.train_background.update(batch.get("background"))
        terms = self.diffusion_loss(batch, generator=self.training_generator(batch_idx))
        b = batch["images"].shape[0]
        if self.log_train_loss(terms["loss"], b):
            self.log("train/mse", terms["mse"], batch_size=b)
        return terms["loss"]

    def configure_optimizers(self) -> dict:
        h = self.hparams
        groups = build_param_groups(self, h.freeze, h.lr_groups, h.lr, h.weight_decay)
        opt = build_optimizer(h.optimizer, groups, tuple(h.betas), trainer_clips_scaled_gradients(self))
        sched = build_scheduler(opt, h.warmup_steps, self.schedule_steps(), h.decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- sampling (lightning_modules.diffusion.sampling) -----------------------------------------------------------
    def make_sampler(self, name: Any = SAMPLING.scheduler):
        """A diffusers scheduler for sampling from the model's noise schedule and prediction type (``name``: one of
        ``diffusion_sampling.SAMPLERS`` or a scheduler object, copied)."""
        return make_sampler(self.scheduler_config, name)

    def sample(self, ref_images: Tensor, num_inference_steps: int = SAMPLING.steps,
               guidance_scale: float = SAMPLING.guidance, seed: int = 0, scheduler: Any = SAMPLING.scheduler,
               noise_level: int | None = None, eta: float = 0.0,
               show_progress: bool = False, reference_view: int = 0,
               cameras: tuple[Tensor, Tensor, Tensor] | None = None,
               generator: torch.Generator | None = None) -> dict[str, Any]:
        """Generate the rig's views from reference images: :func:`lightning_modules.diffusion.sampling.sample_views`
        (ref_images [B, 3, H, W] in [0, 1] -> {"images" [B, V, 3, S, S], "c2w", "fxfycxcy", "rig"}; seeded, or drawn
        from ``generator``; ``scheduler`` a name or a diffusers scheduler; with ``camera_rays`` the photo is rig view
        ``reference_view`` unless ``cameras`` gives a batch's own)."""
        return sample_views(self, ref_images, num_inference_steps, guidance_scale, seed, scheduler, noise_level, eta,
                            show_progress, reference_view, cameras, generator)

    # ---- validation ---------------------------------------------------------------------------------------------
    def _should_sample(self) -> bool:
        last = self._last_sample_step
        return last is None or self.global_step - last >= self.hparams.val_sample_every_n_steps \
            or self.global_step == last

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        b = batch["images"].shape[0]
        gen = torch.Generator("cpu").manual_seed(batch_idx)
        terms = self.diffusion_loss(batch, generator=gen, cond_drop_prob=0.0)
        self.log("val/loss", terms["loss"], batch_size=b, sync_dist=True)
        if batch_idx >= self.hparams.val_sample_batches or not self._should_sample():
            return
        self._last_sample_step = self.global_step
        ref = self.reference_input(batch)
        out = self.sample(ref, self.hparams.val_inference_steps, self.hparams.val_guidance_scale, seed=batch_idx,
                          cameras=self.cameras_of(batch))
        size = tuple(out["images"].shape[-2:])
        target = _resize_views(batch["images"], size)
        alpha = batch.get("alpha")
        alpha = _resize_views(alpha, size) if alpha is not None else None
        generated = view_metrics(out["images"], target, self.lpips, alpha)
        self.val_metrics.update(generated, batch_kinds(batch, b))
        copied = view_metrics(copy_reference_views(ref, target.shape[1], size), target, None, alpha)
        is_ref = reference_view_mask(batch)
        for name in ("psnr", "psnr_fg"):
            if name in generated:
                self.compare_metrics[f"gen_{name}"].update(novel_view_means(generated[name], is_ref))
                self.compare_metrics[f"copy_ref_{name}"].update(novel_view_means(copied[name], is_ref))
        if batch_idx == 0:
            size = out["images"].shape[-2:]
            ref = F.interpolate(ref.float(), size=size, mode="bilinear", antialias=True) if ref.shape[-2:] != size \
                else ref.float()
            self._val_views = {"reference": ref.cpu(), "generated": out["images"].float().cpu(),
                               "target": target.float().cpu()}

    def on_validation_epoch_start(self) -> None:
        self._val_views = None

    def validation_images(self, batch: dict, max_scenes: int = 4) -> dict[str, Any] | None:
        """What this validation shows (logged by ``callbacks.image_log.ImageLogger``): one row per scene of the first
        sampled batch, columns reference | generated views | ground truth, labelled with the rig's view names; None
        when this validation sampled nothing (``val_sample_every_n_steps``)."""
        if self._val_views is None:
            return None
        v = self._val_views
        n = min(max_scenes, v["reference"].shape[0])
        rows = torch.cat([v["reference"][:n, None], v["generated"][:n], v["target"][:n]], dim=1).clamp(0, 1)
        names = list(self.rig.view_names)
        return {"tag": "generated_views", "images": rows,
                "columns": ["reference", *names, *(f"gt {name}" for name in names)], "rows": None}

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        for name, value in values.items():
            self.log(f"val/{name}", value, sync_dist=True)
        for name, metric in self.compare_metrics.items():  # generated vs copying the reference, novel views
            if metric.update_called:
                self.log(f"val/{name}", metric.compute(), sync_dist=True)
            metric.reset()
        self.val_metrics.reset()

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def stage_metadata(self) -> dict[str, Any]:
        return {"attention": self.attention_mode, "prediction_type": self.prediction_type,
                "view_embeddings": self.view_embeddings.source,
                "view_rig_fingerprint": self.view_embeddings.rig_fingerprint,
                "noise_level": int(self.hparams.noise_level), "image_size": int(self.hparams.image_size),
                "autoencoder": self.autoencoder}

    def trained_with(self) -> dict[str, Any]:
        """What a checkpoint's weights were trained with that its constructor arguments only imply (the UNet a
        ``pretrained`` folder or the scratch defaults build, the folder's noise schedule): stored with every
        ``.ckpt`` and compared on load (:meth:`on_load_checkpoint`)."""
        return json.loads(json.dumps({"unet_architecture": {k: self.unet.config.get(k) for k in UNET_ARCHITECTURE},
                                      "noise_schedule": {k: v for k, v in self.scheduler_config.items()
                                                         if not k.startswith("_")}}, default=str))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["mvlift"]["noise_seed"] = self.noise_seed
        checkpoint["mvlift"].update(self.trained_with())
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):  # frozen VAE / CLIP come from `pretrained`, not from every checkpoint
            for k in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
                del state[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("mvlift") or {}
        if meta.get("stage", "diffusion") != "diffusion":
            raise ValueError(f"checkpoint is a {meta.get('stage')!r} checkpoint, not a diffusion one")
        if "attention" in meta and meta["attention"] != self.attention_mode:
            raise ValueError(f"checkpoint was trained with {meta['attention']!r} multi-view attention but this module "
                             f"uses {self.attention_mode!r}; the mode is never switched silently")
        stored_ae = meta.get("autoencoder", "vae")  # checkpoints written before the choice existed: the VAE
        if stored_ae != self.autoencoder:
            raise ValueError(f"checkpoint was trained with the {stored_ae!r} autoencoder but this module uses "
                             f"{self.autoencoder!r}; the latent space is never switched silently")
        if "rig" in meta:
            stored = Rig.from_dict(meta["rig"])
            if stored.fingerprint != self.rig.fingerprint:
                raise ValueError(f"checkpoint rig {stored.name!r} ({stored.fingerprint}) does not match the module's "
                                 f"rig {self.rig.name!r} ({self.rig.fingerprint})")
        stored_pt = meta.get("prediction_type")
        if stored_pt and stored_pt != self.prediction_type:  # the checkpoint's, unless given otherwise explicitly
            if not self.prediction_type_derived:
                raise ValueError(f"checkpoint was trained with prediction_type {stored_pt!r} but this module was built "
                                 f"with {self.prediction_type!r}; leave prediction_type unset to use the checkpoint's")
            self._use_prediction_type(stored_pt)
            self.hparams.prediction_type = stored_pt
        for key, now in self.trained_with().items():  # keys one diffusers version has and another lacks: no change
            stored = meta.get(key) or {}
            diff = {k: (stored[k], now[k]) for k in sorted(set(stored) & set(now)) if stored[k] != now[k]}
            if diff:
                raise ValueError(f"checkpoint's {key} differs from this module's (checkpoint, module): {diff}; the "
                                 "module is built from its arguments and `pretrained` folder as they are now")
        super().on_load_checkpoint(checkpoint)
        if self._trainer is not None and meta.get("noise_seed") is not None:  # resuming: the run's own seed
            self._noise_seed = int(meta["noise_seed"])
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for k, val in self.state_dict().items():
                if k.startswith(FROZEN_PREFIXES) and k not in state:
                    state[k] = val

    # ---- export (StageModule.export / from_export: metadata, rig, hparams) ----------------------------------------
    def save_weights(self, out: Path) -> None:
        """A self-contained pipeline folder: unet/, vae/ (not for ``autoencoder: pixel``), image_encoder/,
        feature_extractor/, scheduler/, image_normalizer/, image_noising_scheduler/, view_embeddings.safetensors, and
        diffusers' model_index.json + pipeline.py (``lightning_modules.diffusion.mv_pipeline``)."""
        c = self._components
        c.scheduler_config = self.scheduler_config
        save_pipeline_components(c, out, unet=self.unet, unet_subfolder=WEIGHTS[self.stage])
        self.view_embeddings.save(out / VIEW_EMBEDDINGS_FILE)
        write_pipeline_files(self, out)  # model_index.json + pipeline.py: diffusers opens the folder

    def save_ema_weights(self, out: Path, ema_weights: dict[str, Tensor]) -> None:
        """unet_ema/: the EMA shadow of ``self.unet`` (names with or without the ``unet.`` prefix)."""
        ema_unet = UNet2DConditionModel.from_config(self.unet.config)
        state = {k.removeprefix("unet."): v.detach().cpu() for k, v in ema_weights.items()
                 if not k.startswith(("vae.", "image_encoder.", "view_embeddings.", "image_normalizer."))}
        missing, unexpected = ema_unet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"ema_weights do not match the UNet: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        ema_unet.save_pretrained(str(out / EMA_WEIGHTS[self.stage]))
        make_tree_readable(out / EMA_WEIGHTS[self.stage])

    def card_details(self) -> list[tuple[str, Any]]:
        return [("image size", f"{int(self.hparams.image_size)} px"), ("autoencoder", self.autoencoder),
                ("multi-view attention", self.attention_mode), ("prediction type", self.prediction_type),
                ("view embeddings", f"{self.view_embeddings.source} ({VIEW_EMBEDDINGS_FILE})"),
                ("unCLIP noise level", int(self.hparams.noise_level)),
                ("camera rays", "yes: a photo is rig view 0 unless `reference_view` says otherwise"
                 if self.hparams.camera_rays else "no"),
                ("UNet", f"{sum(p.numel() for p in self.unet.parameters()) / 1e6:.1f} M parameters")]

    def card_loading(self) -> list[str]:
        return ["Photo -> views -> 3D Gaussians, with a reconstruction export of the same rig:", "",
                "    python -m tools.infer photo.png --diffusion EXPORT --reconstruction GSLRM_EXPORT --out out/", "",
                "In Python:", "",
                "    from lightning_modules.diffusion.module import DiffusionModule",
                "    module = DiffusionModule.from_export(EXPORT)  # ema=True: the EMA weights",
                "    views = module.sample(ref_images, num_inference_steps=50, guidance_scale=3.0, seed=0)", "",
                "With diffusers (needs mvlift installed: `pipeline.py` here imports its `MVLiftPipeline`):", "",
                "    from diffusers import DiffusionPipeline",
                "    pipe = DiffusionPipeline.from_pretrained(EXPORT, custom_pipeline=EXPORT, trust_remote_code=True)",
                "    out = pipe(image, num_inference_steps=50, guidance_scale=3.0, seed=0)  # out.images: the views",
                "", "or `MVLiftPipeline.from_pretrained(EXPORT)` (`lightning_modules.diffusion.mv_pipeline`)."]

    def export_extras(self) -> dict[str, Any]:
        info = {"view_embeddings_info": self.view_embeddings.info} if self.view_embeddings.info else {}
        return {"pipeline_notes": self.pipeline_notes, **info}

    @classmethod
    def export_arguments(cls, path: Path, meta: dict[str, Any], hparams: dict[str, Any], ema: bool) -> dict[str, Any]:
        """The export folder is the pipeline folder (``ema`` reads unet_ema/); the metadata's attention, prediction
        type, autoencoder and view-embedding source are what the weights were trained with."""
        return {**hparams, "pretrained": str(path), "unet_subfolder": (EMA_WEIGHTS if ema else WEIGHTS)[cls.stage],
                "attention": meta["attention"], "prediction_type": meta["prediction_type"],
                "autoencoder": meta.get("autoencoder", "vae"), "view_embeddings": meta["view_embeddings"],
                "view_embeddings_path": str(path / VIEW_EMBEDDINGS_FILE)}

    def load_export_weights(self, path: Path, meta: dict[str, Any], ema: bool) -> None:
        """The constructor loaded them from the folder; the multi-view attention mode must be the stored one."""
        if multiview_attention_mode(self.unet) != meta["attention"]:
            raise RuntimeError("multi-view attention mode not restored")


__all__ = ["COMPARED", "DiffusionModule", "batch_cameras", "copy_reference_views", "min_snr_weights", "novel_view_means",
           "reference_view_mask", "step_seed"]
