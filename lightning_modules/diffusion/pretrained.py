"""Pretrained pipeline components for the diffusion stage: load a local folder, or write tiny random ones.

A pipeline folder has FaceLift's ``pipeckpts/`` (= Stable Diffusion 2.1 unCLIP) layout::

    unet/ vae/ image_encoder/ feature_extractor/ scheduler/ [image_normalizer/ image_noising_scheduler/]
    [text_encoder/ tokenizer/]

``text_encoder/`` + ``tokenizer/`` (SD's CLIP text model) are read only to make view embeddings from text
(:func:`load_text_encoder`, ``lightning_modules.diffusion.view_conditioning.text_view_embeddings``); the diffusion stage itself
conditions on per-view embeddings, not on text.

Everything is read with ``from_pretrained(..., local_files_only=True)``: nothing is downloaded. FaceLift's
``unet/config.json`` names its own block classes (``CrossAttnDownBlockMV2D``, ``UNetMidBlockMV2DCrossAttn``,
``CrossAttnUpBlockMV2D``) and adds keys (``num_views``, ``sparse_mv_attention``, ...): the block names map to the
plain diffusers blocks (same parameter names and shapes) and the extra keys are reported, not used — the
multi-view behaviour comes from ``lightning_modules.diffusion.mv_attention``.

``make_tiny_pipeline_folder(path)`` writes tiny random components in the same layout (tests and smoke runs);
``text_encoder=True`` adds a tiny CLIP text model and a tokenizer built offline (:func:`tiny_clip_tokenizer`).

The autoencoder (``AUTOENCODERS``): ``vae`` is the pipeline's frozen ``AutoencoderKL`` (4 latent channels, 8x
smaller in SD); ``pixel`` is :class:`PixelAutoencoder`, the identity: the latents are the image itself, RGB in
[-1, 1] at the model's image size (3 channels, scaling factor 1, no weights), so the UNet denoises pixels and no
``vae/`` folder is read or written. A pixel-space UNet takes 2 x 3 inputs (noisy + reference image) and predicts 3
channels; built from scratch (``build_scratch_components(autoencoder="pixel", ...)``) it comes with a noise schedule
meant for pixels (:func:`pixel_scheduler`).

Example:
    >>> import tempfile
    >>> d = make_tiny_pipeline_folder(tempfile.mkdtemp())
    >>> c = load_pipeline_components(d)
    >>> c.unet.config.in_channels, c.image_embed_dim
    (8, 16)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from geometry.files import make_tree_readable
from lightning_modules.artifacts import pickled_weights

log = logging.getLogger("mvlift.diffusion")

COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")
OPTIONAL_COMPONENTS = ("image_normalizer", "image_noising_scheduler")
PLAIN_UNET_CLASS = "UNet2DConditionModel"
AUTOENCODERS = ("vae", "pixel")


def check_autoencoder(name: str) -> str:
    """Return ``name`` if it is a known autoencoder (``AUTOENCODERS``), else raise ValueError."""
    if name not in AUTOENCODERS:
        raise ValueError(f"autoencoder must be one of {AUTOENCODERS}, got {name!r}")
    return name


def latent_channels_of(autoencoder: str) -> int:
    """Latent channels of an autoencoder kind: 4 for SD's VAE, 3 (RGB) for ``pixel``."""
    return PixelAutoencoder.latent_channels if check_autoencoder(autoencoder) == "pixel" else 4


CAMERA_RAY_CHANNELS = 6  # Plücker rays (direction, moment) per pixel


def unet_in_channels(autoencoder: str, camera_rays: bool = False) -> int:
    """Input channels of the multi-view UNet: noisy + reference latents, plus 6 ray channels with ``camera_rays``.

    >>> unet_in_channels("vae"), unet_in_channels("pixel", camera_rays=True)
    (8, 12)
    """
    return 2 * latent_channels_of(autoencoder) + (CAMERA_RAY_CHANNELS if camera_rays else 0)


class PixelAutoencoder(nn.Module):
    """The identity autoencoder of pixel-space diffusion: latents = the image at ``size`` px, RGB in [-1, 1].

    ``encode(images [N, 3, H, W] in [0, 1]) -> [N, 3, size, size]`` (resized with antialiasing when H, W differ
    from ``size``, then ``2x - 1``); ``decode(latents) -> [N, 3, size, size]`` in [0, 1] (``(z + 1) / 2``, clamped).
    Encoding then decoding gives the image back exactly (at ``size``). No parameters and no state: a checkpoint or
    export records only that the model is pixel-space (``autoencoder: pixel``) and its image size.

    Example:
        >>> ae = PixelAutoencoder(8)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> torch.equal(ae.decode(ae.encode(x)), x), tuple(ae.encode(torch.rand(1, 3, 16, 16)).shape)
        (True, (1, 3, 8, 8))
    """

    latent_channels = 3
    scaling_factor = 1.0
    downsample_factor = 1

    def __init__(self, size: int) -> None:
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"PixelAutoencoder size must be >= 1, got {size}")
        self.size = int(size)

    def encode(self, images: Tensor) -> Tensor:
        x = images.float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0

    def decode(self, latents: Tensor) -> Tensor:
        return ((latents.float() + 1.0) / 2.0).clamp(0, 1)

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---- UNet configs ------------------------------------------------------------------------------------------------
def sd21_unclip_unet_config(in_channels: int = 8, sample_size: int = 64) -> dict[str, Any]:
    """UNet2DConditionModel config of SD 2.1 unCLIP as FaceLift uses it (8 inputs = noisy + reference latent;
    class projection 2048 = CLIP image embedding 1024 + noise-level embedding 1024; cross-attention 1024)."""
    return {
        "sample_size": sample_size, "in_channels": in_channels, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024, "use_linear_projection": True, "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 2048, "flip_sin_to_cos": True, "freq_shift": 0,
        "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "upcast_attention": False,
    }


def plain_block_name(name: str) -> str:
    """FaceLift's multi-view block class name -> the plain diffusers block with the same parameters
    (``CrossAttnDownBlockMV2D`` -> ``CrossAttnDownBlock2D``, ``UNetMidBlockMV2DCrossAttn`` ->
    ``UNetMidBlock2DCrossAttn``); other names pass through."""
    return name.replace("MV2D", "2D") if name and "MV2D" in name else name


def plain_unet_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config for the plain UNet2DConditionModel, upstream-only keys that were dropped)."""
    cfg = dict(config)
    cfg["down_block_types"] = [plain_block_name(b) for b in cfg.get("down_block_types", [])]
    cfg["up_block_types"] = [plain_block_name(b) for b in cfg.get("up_block_types", [])]
    if cfg.get("mid_block_type"):
        cfg["mid_block_type"] = plain_block_name(cfg["mid_block_type"])
    known = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    dropped = {k: v for k, v in cfg.items() if k not in known and not k.startswith("_")}
    cfg = {k: v for k, v in cfg.items() if k in known}
    return cfg, dropped


def is_facelift_unet_config(config: dict[str, Any]) -> bool:
    blocks = [*config.get("down_block_types", []), *config.get("up_block_types", []),
              config.get("mid_block_type") or ""]
    return any("MV2D" in b for b in blocks) or config.get("_class_name", PLAIN_UNET_CLASS) != PLAIN_UNET_CLASS


def load_unet(folder: str | Path, torch_dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """A UNet folder (config.json + weights) -> plain diffusers UNet2DConditionModel, FaceLift class names mapped."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"UNet folder {folder} has no config.json")
    config = json.loads(cfg_path.read_text())
    overrides: dict[str, Any] = {}
    if is_facelift_unet_config(config):
        plain, dropped = plain_unet_config(config)
        overrides = {k: plain[k] for k in ("down_block_types", "up_block_types", "mid_block_type") if k in plain}
        log.info("%s: FaceLift UNet config (%s) mapped to %s; upstream-only keys ignored: %s", cfg_path,
                 config.get("_class_name"), PLAIN_UNET_CLASS, sorted(dropped))
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True, **overrides, **kwargs)
    return unet


def expand_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Widen ``conv_in`` to ``in_channels`` (e.g. 4 -> 8 for the reference latent): the pretrained input weights
    are kept and the new input channels start at zero, so the output is unchanged at first. In place."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"conv_in has {old.in_channels} inputs; this model gives it {in_channels}, and inputs are "
                         f"never dropped (a UNet trained with camera rays needs camera_rays: true)")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


# ---- whole pipeline folders --------------------------------------------------------------------------------------
@dataclasses.dataclass
class PipelineComponents:
    """Everything the diffusion stage needs besides the view embeddings."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL | PixelAutoencoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler_config: dict[str, Any]
    image_normalizer: StableUnCLIPImageNormalizer
    image_noising_scheduler: DDPMScheduler
    notes: list[str] = dataclasses.field(default_factory=list)
    upstream_unet_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # FaceLift-only keys, unused

    @property
    def image_embed_dim(self) -> int:
        return int(self.image_encoder.config.projection_dim)

    @property
    def autoencoder(self) -> str:
        """``"pixel"`` for a :class:`PixelAutoencoder`, else ``"vae"``."""
        return "pixel" if isinstance(self.vae, PixelAutoencoder) else "vae"


def default_image_noising_scheduler() -> DDPMScheduler:
    """SD 2.1 unCLIP's image-embedding noise schedule (1000 steps, squared cosine)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def _check_folder(folder: Path, autoencoder: str = "vae") -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrained pipeline folder not found: {folder}")
    needed = [c for c in COMPONENTS if not (c == "vae" and autoencoder == "pixel")]
    missing = [c for c in needed if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: not a pipeline folder — missing {missing} (expected {needed}, FaceLift's "
            "pipeckpts/ or SD 2.1 unCLIP layout)"
        )


def load_pipeline_components(folder: str | Path, unet_subfolder: str = "unet", in_channels: int | None = None,
                             autoencoder: str = "vae", image_size: int | None = None) -> PipelineComponents:
    """Read a local pipeline folder (see module docstring); a UNet with fewer inputs is widened to ``in_channels``
    (default: 2 x the autoencoder's latent channels, noisy + reference latent). ``autoencoder="pixel"``: no
    ``vae/`` is read (a :class:`PixelAutoencoder` at ``image_size``, default the UNet's sample size) and the UNet
    must predict 3 channels. Pickled ``.bin`` weights that ask for more than tensors are refused naming the file and
    the types (``lightning_modules.artifacts.pickled_weights``; ``--trust-checkpoint`` loads them)."""
    with pickled_weights(folder):
        return _read_pipeline_components(Path(folder), unet_subfolder, in_channels, autoencoder, image_size)


def _read_pipeline_components(folder: Path, unet_subfolder: str, in_channels: int | None, autoencoder: str,
                              image_size: int | None) -> PipelineComponents:
    check_autoencoder(autoencoder)
    _check_folder(folder, autoencoder)
    latent_channels = latent_channels_of(autoencoder)
    in_channels = 2 * latent_channels if in_channels is None else int(in_channels)
    notes: list[str] = []
    unet = load_unet(folder / unet_subfolder)
    raw_cfg = json.loads((folder / unet_subfolder / "config.json").read_text())
    upstream = plain_unet_config(raw_cfg)[1] if is_facelift_unet_config(raw_cfg) else {}
    if autoencoder == "pixel" and unet.config.out_channels != latent_channels:
        raise ValueError(f"{folder / unet_subfolder}: the UNet predicts {unet.config.out_channels} channels; a "
                         f"pixel-space model (autoencoder: pixel) needs {latent_channels} (RGB) — a latent-space "
                         "pipeline's UNet cannot be used in pixel space")
    if unet.config.in_channels != in_channels:
        notes.append(f"conv_in widened {unet.config.in_channels} -> {in_channels} (new inputs zero)")
        expand_conv_in(unet, in_channels)
    if autoencoder == "pixel":
        vae = PixelAutoencoder(int(image_size or unet.config.sample_size))
    else:
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder / "image_encoder"), local_files_only=True)
    feature_extractor = CLIPImageProcessor.from_pretrained(str(folder / "feature_extractor"), local_files_only=True)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise FileNotFoundError(f"{sched_path} missing")
    scheduler_config = json.loads(sched_path.read_text())
    embed_dim = int(image_encoder.config.projection_dim)
    if (folder / "image_normalizer").is_dir():
        normalizer = StableUnCLIPImageNormalizer.from_pretrained(str(folder / "image_normalizer"),
                                                                 local_files_only=True)
    else:
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
        notes.append("no image_normalizer/: identity normalizer (mean 0, std 1)")
    if (folder / "image_noising_scheduler").is_dir():
        noising = DDPMScheduler.from_pretrained(str(folder / "image_noising_scheduler"), local_files_only=True)
    else:
        noising = default_image_noising_scheduler()
        notes.append("no image_noising_scheduler/: squared-cosine 1000-step schedule")
    expected = 2 * embed_dim
    got = unet.config.projection_class_embeddings_input_dim
    if unet.config.class_embed_type != "projection" or got != expected:
        raise ValueError(
            f"{folder / unet_subfolder}: UNet needs class_embed_type 'projection' with "
            f"projection_class_embeddings_input_dim = 2 x image embedding ({expected}); got "
            f"{unet.config.class_embed_type!r} / {got}"
        )
    for n in notes:
        log.info("%s: %s", folder, n)
    return PipelineComponents(unet, vae, image_encoder, feature_extractor, scheduler_config, normalizer, noising,
                              notes, upstream)


# ---- components built from scratch -----------------------------------------------------------------------------------
def scratch_unet_config(in_channels: int = 8, sample_size: int = 16, cross_attention_dim: int = 32,
                     image_embed_dim: int = 16, width: int = 32, out_channels: int = 4,
                     channels: Sequence[int] | None = None, layers_per_block: int = 1,
                     attention_levels: Sequence[bool] | None = None, head_dim: int = 16) -> dict[str, Any]:
    """A small SD-2.1-unCLIP-shaped UNet (linear projections, class projection) built from scratch.

    Default: 2 levels (``width``, 2 x ``width``), 1 layer each, 2 / 4 attention heads. ``channels`` sets the
    levels' widths (``block_out_channels``; heads = width // ``head_dim``); ``attention_levels`` says which levels
    have transformer blocks (multi-view self-attention + view cross-attention), default all but the last (SD's
    layout; the mid block always has one); ``layers_per_block`` as in diffusers.

    Example:
        >>> cfg = scratch_unet_config(6, 64, out_channels=3, channels=(64, 128, 256), attention_levels=(False, True, True),
        ...                        head_dim=32)
        >>> cfg["down_block_types"], cfg["attention_head_dim"]
        (['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'], [2, 4, 8])
        >>> cfg["up_block_types"]
        ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D']
    """
    if channels is None:
        widths, heads = [width, 2 * width], [2, 4]
    else:
        widths = [int(c) for c in channels]
        if not widths or head_dim < 1 or any(c < head_dim for c in widths):
            raise ValueError(f"UNet channels {widths} must be a non-empty list of widths >= head_dim ({head_dim})")
        heads = [c // head_dim for c in widths]
    attn = [i < len(widths) - 1 for i in range(len(widths))] if attention_levels is None else \
        [bool(a) for a in attention_levels]
    if len(attn) != len(widths):
        raise ValueError(f"attention_levels {attn} must name each of the {len(widths)} UNet levels")
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    return {
        "sample_size": sample_size, "in_channels": in_channels, "out_channels": out_channels,
        "down_block_types": down, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": up, "block_out_channels": widths,
        "layers_per_block": int(layers_per_block), "attention_head_dim": heads,
        "cross_attention_dim": cross_attention_dim,
        "use_linear_projection": True, "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 2 * image_embed_dim, "norm_num_groups": 8,
        "flip_sin_to_cos": True, "freq_shift": 0,
    }


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """SD-style scaled-linear schedule (1000 steps) in a DDIM config."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type)


def pixel_scheduler(prediction_type: str = "v_prediction") -> DDIMScheduler:
    """The noise schedule of a pixel-space model (1000 steps, in a DDIM config): cosine (``squaredcos_cap_v2``,
    Nichol & Dhariwal's choice for 64 px images: the scaled-linear latent schedule leaves a 64 px image visible at
    its last step, a linear one destroys it early), sampled with ``trailing`` timesteps so the first sampling step is
    the last training step (signal ~0, matching the pure noise sampling starts from), and predicted images clipped to
    [-1, 1] (``clip_sample``: pixels have a known range)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                         clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing",
                         prediction_type=prediction_type)


def build_scratch_components(image_size: int = 32, in_channels: int | None = None, cross_attention_dim: int = 32,
                          image_embed_dim: int = 16, width: int = 32, prediction_type: str = "epsilon",
                          seed: int = 0, autoencoder: str = "vae", unet_channels: Sequence[int] | None = None,
                          layers_per_block: int = 1, attention_levels: Sequence[bool] | None = None,
                          head_dim: int = 16) -> PipelineComponents:
    """Random components built from scratch (deterministic for a seed): the UNet (``scratch_unet_config``; inputs
    default to 2 x the latent channels), a tiny VAE with 2x downsampling (``autoencoder="vae"``) or the
    :class:`PixelAutoencoder` (``"pixel"``: the UNet works on the ``image_size`` image, with
    :func:`pixel_scheduler`), and a 2-layer CLIP vision encoder (the frozen image embedding of the reference)."""
    check_autoencoder(autoencoder)
    pixel = autoencoder == "pixel"
    latent_channels = latent_channels_of(autoencoder)
    in_channels = 2 * latent_channels if in_channels is None else int(in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**scratch_unet_config(
            in_channels, image_size if pixel else image_size // 2, cross_attention_dim, image_embed_dim, width,
            out_channels=latent_channels, channels=unet_channels, layers_per_block=layers_per_block,
            attention_levels=attention_levels, head_dim=head_dim))
        if pixel:
            vae = PixelAutoencoder(image_size)
        else:
            vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32],
                                latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=image_size)
        clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=image_embed_dim,
                                    num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=8)
        image_encoder = CLIPVisionModelWithProjection(clip_cfg)
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=image_embed_dim)
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size})
    scheduler = pixel_scheduler(prediction_type) if pixel else tiny_scheduler(prediction_type)
    return PipelineComponents(unet, vae.eval(), image_encoder.eval(), feature_extractor, dict(scheduler.config),
                              normalizer, default_image_noising_scheduler())


def save_pipeline_components(c: PipelineComponents, folder: str | Path, unet: nn.Module | None = None,
                             unet_subfolder: str = "unet") -> Path:
    """Write components in the pipeline-folder layout (``unet`` overrides ``c.unet``, e.g. EMA weights); no
    ``vae/`` for a pixel-space model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (unet if unet is not None else c.unet).save_pretrained(str(folder / unet_subfolder))
    if c.autoencoder == "vae":  # a PixelAutoencoder has nothing to save
        c.vae.save_pretrained(str(folder / "vae"))
    c.image_encoder.save_pretrained(str(folder / "image_encoder"))
    c.feature_extractor.save_pretrained(str(folder / "feature_extractor"))
    DDIMScheduler.from_config(c.scheduler_config).save_pretrained(str(folder / "scheduler"))
    c.image_normalizer.save_pretrained(str(folder / "image_normalizer"))
    c.image_noising_scheduler.save_pretrained(str(folder / "image_noising_scheduler"))
    make_tree_readable(folder)  # diffusers' safetensors files are 0600 whatever the umask
    return folder


def facelift_style_unet_config(config: dict[str, Any], num_views: int = 6) -> dict[str, Any]:
    """Rewrite a plain UNet config.json the way FaceLift's reads: custom class names and upstream-only keys."""
    cfg = dict(config)
    cfg["_class_name"] = "UNetMV2DConditionModel"
    cfg["down_block_types"] = [b.replace("2D", "MV2D") if b.startswith("CrossAttn") else b
                               for b in cfg["down_block_types"]]
    cfg["up_block_types"] = [b.replace("2D", "MV2D") if b.startswith("CrossAttn") else b
                             for b in cfg["up_block_types"]]
    cfg["mid_block_type"] = "UNetMidBlockMV2DCrossAttn"
    cfg.update({"num_views": num_views, "multiview_attention": True, "sparse_mv_attention": True,
                "cd_attention_last": False, "cd_attention_mid": False, "selfattn_block": "custom"})
    return cfg


def make_tiny_pipeline_folder(path: str | Path, image_size: int = 32, unet_in_channels: int = 8,
                              cross_attention_dim: int = 32, image_embed_dim: int = 16, width: int = 32,
                              prediction_type: str = "epsilon", facelift_layout: bool = False, seed: int = 0,
                              text_encoder: bool = False, text_dim: int | None = None) -> Path:
    """Write tiny random pipeline components to ``path`` (FaceLift/SD-2.1-unCLIP layout). ``unet_in_channels=4``
    makes an SD-style 4-input UNet; ``facelift_layout`` writes FaceLift's custom class names into unet/config.json;
    ``text_encoder`` adds ``text_encoder/`` (hidden size ``text_dim``, default the UNet's cross-attention dim) and
    ``tokenizer/`` (:func:`tiny_clip_tokenizer`)."""
    c = build_scratch_components(image_size, unet_in_channels, cross_attention_dim, image_embed_dim, width,
                              prediction_type, seed)
    folder = save_pipeline_components(c, path)
    if text_encoder:
        tokenizer = tiny_clip_tokenizer()
        build_tiny_text_encoder(text_dim or cross_attention_dim, vocab_size=len(tokenizer),
                                seed=seed).save_pretrained(str(folder / "text_encoder"))
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        make_tree_readable(folder)
    if facelift_layout:
        cfg_path = folder / "unet" / "config.json"
        cfg_path.write_text(json.dumps(facelift_style_unet_config(json.loads(cfg_path.read_text())), indent=2))
    return folder


# ---- text encoder (view embeddings from text) ------------------------------------------------------------------------
TINY_WORDS = ("a", "rendering", "image", "of", "3d", "model", "models", "view", "color", "map", "front", "right", "left",
              "back", "from", "above", "below", "at", "an", "angle", "eye", "level", "slightly", "high", "directly")


def tiny_clip_tokenizer(words: Sequence[str] = TINY_WORDS, model_max_length: int = 77) -> Any:
    """A CLIP tokenizer built offline: every byte-level character (alone and word-final) plus merges that make each
    of ``words`` one token, so SD-style prompts fit in ``model_max_length`` tokens. Deterministic."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    for c in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:
        parts = [*w[:-1], w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tiny_text_encoder(hidden_size: int = 32, vocab_size: int = 600, max_positions: int = 77, seed: int = 0
                            ) -> Any:
    """A 2-layer random CLIP text model (``hidden_size`` = the embeddings' dim), deterministic for a seed."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_positions,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(cfg).eval()


def load_text_encoder(folder: str | Path) -> tuple[Any, Any]:
    """(CLIP text model, tokenizer) of a pipeline folder's ``text_encoder/`` and ``tokenizer/``, local files only."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    missing = [c for c in ("text_encoder", "tokenizer") if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {' / '.join(m + '/' for m in missing)} — view embeddings from text "
                                "need the pipeline's own text encoder and tokenizer (SD 2.1 unCLIP layout)")
    with pickled_weights(folder / "text_encoder"):  # a .bin asking for more than tensors: named, not a raw trace
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return text_encoder, tokenizer


def unet_cross_attention_dim(folder: str | Path, unet_subfolder: str = "unet") -> int:
    """The cross-attention dim of a pipeline folder's UNet, from its config.json (no weights read)."""
    path = Path(folder) / unet_subfolder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: not a pipeline folder")
    dim = json.loads(path.read_text()).get("cross_attention_dim")
    if isinstance(dim, (list, tuple)):  # per-block dims (diffusers allows it): all must agree
        if len(set(dim)) != 1:
            raise ValueError(f"{path}: per-block cross_attention_dim {dim}; view embeddings need one dim")
        dim = dim[0]
    return int(dim if dim is not None else 1280)  # diffusers' default


def text_context_tokens(folder: str | Path) -> int:
    """Tokens of the pipeline's text context: its tokenizer's ``model_max_length`` when it has ``tokenizer/``, else
    77 (CLIP's, SD's and FaceLift's)."""
    cfg = Path(folder) / "tokenizer" / "tokenizer_config.json"
    if cfg.is_file():
        n = json.loads(cfg.read_text()).get("model_max_length")
        if isinstance(n, int) and 0 < n < 100_000:
            return n
    return 77


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_modules.diffusion.pretrained make-tiny PATH [--image-size N] [--facelift-layout]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lightning_modules.diffusion.pretrained")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("make-tiny", help="write tiny random pipeline components (demo / tests)")
    t.add_argument("path")
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    t.add_argument("--facelift-layout", action="store_true", help="FaceLift's custom class names in unet/config.json")
    args = p.parse_args(argv)
    folder = make_tiny_pipeline_folder(args.path, image_size=args.image_size, prediction_type=args.prediction_type,
                                       facelift_layout=args.facelift_layout)
    print(folder)


if __name__ == "__main__":
    main()


__all__ = [
    "AUTOENCODERS",
    "COMPONENTS",
    "PipelineComponents",
    "PixelAutoencoder",
    "build_scratch_components",
    "build_tiny_text_encoder",
    "check_autoencoder",
    "default_image_noising_scheduler",
    "expand_conv_in",
    "facelift_style_unet_config",
    "is_facelift_unet_config",
    "latent_channels_of",
    "load_pipeline_components",
    "load_text_encoder",
    "load_unet",
    "make_tiny_pipeline_folder",
    "pixel_scheduler",
    "plain_block_name",
    "plain_unet_config",
    "save_pipeline_components",
    "scratch_unet_config",
    "sd21_unclip_unet_config",
    "text_context_tokens",
    "tiny_clip_tokenizer",
    "unet_cross_attention_dim",
]
