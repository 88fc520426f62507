"""ReconstructionModule: the GS-LRM stage as a LightningModule (posed views -> 3D Gaussians -> rendered views).

Batches follow docs/ARCHITECTURE.md: ``images`` [B, V, 3, H, W] (the first ``num_input_views`` are inputs),
``alpha``, ``c2w``, ``fxfycxcy``, ``index`` [B, V, 2] = (view_idx, scene_idx), ``background`` [B, 3], ``kind``.
Augmented inputs, when the DataModule made them, come as ``input_images`` / ``input_c2w``.

Resume: the module draws no random numbers in training (no dropout, no random view choice: the DataModule picks the
views), so a resumed run repeats the uninterrupted one given the same batches. The training batches' backgrounds are
recorded (``lightning_modules.training_background``: ``checkpoint["mvlift"]["background"]``, the export's metadata).

Example (tiny, CPU):
    >>> m = ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32, depth=1,
    ...                          head_dim=16)
    >>> m.net.config.width
    32
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from geometry.files import make_readable
from geometry.render import Gaussians, rasterize
from geometry.rig import Rig, load_rig
from lightning_modules.artifacts import EMA_WEIGHTS, WEIGHTS, MissingMetadataError, checkpoint_metadata
from lightning_modules.metrics import (
    KINDS,
    KindMetrics,
    batch_kinds,
    per_view_iou,
    per_view_psnr,
    view_metrics,
)
from lightning_modules.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    check_optimizer,
    trainer_clips_scaled_gradients,
)
from lightning_modules.reconstruction.gslrm import GSLRM, GSLRMConfig, check_state_dict
from lightning_modules.reconstruction.losses import (
    alpha_loss,
    load_lpips,
    load_perceptual,
    masked_mse_loss,
    masked_ssim_loss,
    mse_loss,
    ssim_loss,
)
from lightning_modules.sdpa import attention_backend, check_attention_backend
from lightning_modules.stage import StageModule

log = logging.getLogger("mvlift.reconstruction")
# Lightning warns whenever a module's batch hook runs beside a DataModule; ours is meant to (the DataModule leaves
# on_before_batch_transfer to the module: the checks below are the model's contract with any data)
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")

# the GS-LRM head's activation constants (GSLRMConfig fields; constructor arguments that resolve None once: the
# init_from weights' own, else the default_activation)
ACTIVATION_ARGUMENTS = ("scale_bias", "scale_max_log", "opacity_bias", "depth_range", "depth_preact_bias")
# the constructor arguments that are GSLRMConfig fields: what a converted export stores (config_arguments) and what
# from_export takes from an export's model_config, the network the weights ran in
MODEL_CONFIG_ARGUMENTS = ("image_size", "width", "depth", "head_dim", "patch_size", "num_global_tokens", "mlp_ratio",
                          "sh_degree", "clip_xyz", *ACTIVATION_ARGUMENTS)


def check_index(index: Tensor, where: str = "batch") -> None:
    """Check that ``index`` [B, V, 2] is (view_idx, scene_idx), view first.

    The scene column must be constant over a scene's views; the view column must differ between its views.
    A swapped order (scene first) breaks both and raises ValueError naming ``where``.
    """
    if index.ndim != 3 or index.shape[-1] != 2:
        raise ValueError(f"{where}: index must be [B, V, 2] (view_idx, scene_idx), got {tuple(index.shape)}")
    if index.shape[1] < 2:
        return
    scene_constant = (index[..., 1] == index[:, :1, 1]).all(dim=1)  # [B]
    views_sorted = index[..., 0].sort(dim=1).values
    views_distinct = (views_sorted[:, 1:] != views_sorted[:, :-1]).all(dim=1)  # [B]
    bad = (~scene_constant | ~views_distinct).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        hint = ""
        if bool((index[i, :, 0] == index[i, 0, 0]).all()) and not bool(scene_constant[i]):
            hint = " — the columns look swapped (scene first); mvlift's order is (view_idx, scene_idx)"
        raise ValueError(
            f"{where}: index [B, V, 2] must be (view_idx, scene_idx): the scene column (1) must be constant within "
            f"a scene and the view column (0) distinct per view; got index[{i}] = {index[i].tolist()} "
            f"({len(bad)} of {index.shape[0]} scenes wrong){hint}"
        )


def pixel_scale_bias(rig: Rig, image_size: int, pixels: float = 0.7) -> float:
    """log of the world size of ``pixels`` pixels at the rig's radius: a scale_bias that starts every Gaussian at
    about that footprint (-3.6 at 64 px, -4.3 at 128 px, -5.7 at 512 px on a 50-degree rig at radius 2.7)."""
    return round(math.log(pixels * rig.radius / rig.focal(image_size)), 2)


def default_activation(name: str, rig: Rig, image_size: int) -> float:
    """The value of an activation constant (``ACTIVATION_ARGUMENTS``) for new weights: ``pixel_scale_bias`` for
    ``scale_bias``, GSLRMConfig's (FaceLift's) for the others."""
    return pixel_scale_bias(rig, image_size) if name == "scale_bias" else getattr(GSLRMConfig, name)


def stored_activations(path: str | Path) -> dict[str, float]:
    """The activation constants an export folder's weights were trained with, as its metadata's ``model_config``
    records them; none for a bare ``.safetensors`` file or a folder without metadata."""
    mc: dict[str, Any] = {}
    if Path(path).is_dir():
        try:
            mc = checkpoint_metadata(path).get("model_config") or {}
        except MissingMetadataError:
            pass
    return {k: float(mc[k]) for k in ACTIVATION_ARGUMENTS if k in mc}


def config_arguments(config: GSLRMConfig) -> dict[str, Any]:
    """The constructor arguments (``MODEL_CONFIG_ARGUMENTS``) that rebuild the network ``config`` describes, its
    activation constants included.

    >>> config_arguments(GSLRMConfig(width=64))["width"], config_arguments(GSLRMConfig())["scale_bias"]
    (64, -2.3)
    """
    return {k: getattr(config, k) for k in MODEL_CONFIG_ARGUMENTS}


class ReconstructionModule(StageModule):
    """GS-LRM training, evaluation and export. Constructor arguments are plain types (LightningCLI / YAML;
    ``python -m tools.fit --model.help lightning_modules.reconstruction.ReconstructionModule`` prints them).

    Args:
        rig: the rig (name or path) the model is trained on; set in the data section (shared setting).
        image_size: square view size in pixels; set in the data section.
        num_input_views: posed input views per scene; set in the data section.
        width: transformer width (FaceLift: 1024).
        depth: transformer layers (FaceLift: 24).
        head_dim: attention head size (FaceLift: 64).
        patch_size: image patch side in pixels (FaceLift: 8).
        num_global_tokens: learned tokens shared by all views (FaceLift: 2).
        mlp_ratio: MLP hidden size over width.
        sh_degree: colour spherical-harmonics degree; only 0 (one RGB colour per Gaussian, as FaceLift renders).
        clip_xyz: clamp of Gaussian centres (world units); None for none.
        scale_bias: added to the scale pre-activation, exp(min(s + scale_bias, scale_max_log)); None: the
            init_from weights' own, else a Gaussian of 0.7 px at the rig's radius (pixel_scale_bias).
        scale_max_log: cap of the log scale; None: the weights' own, else FaceLift's.
        opacity_bias: opacity = sigmoid(a + opacity_bias); None: the weights' own, else FaceLift's -2.0.
        depth_range: depth = (2 sigmoid(z + depth_preact_bias) - 1) * depth_range about each ray's point nearest
            the origin; None: the weights' own, else FaceLift's 1.8.
        depth_preact_bias: see depth_range; None: the weights' own, else 0.
        mse_weight: weight of the pixel MSE loss.
        ssim_weight: weight of the (1 - SSIM) loss.
        perceptual_weight: weight of the VGG perceptual loss (needs vgg_weights).
        lpips_weight: weight of the LPIPS loss (needs vgg_weights).
        opacity_weight: weight of the rendered-alpha loss against the masks.
        masked: compute the image losses inside the masks only.
        vgg_weights: local VGG-16 weights file for the perceptual / LPIPS losses.
        lpips_weights: local LPIPS head weights (default: torchmetrics' shipped heads).
        supervise_inputs: supervise the input views too (FaceLift's GS-LRM trains so); set in the data section.
        lr: peak learning rate.
        weight_decay: AdamW weight decay (none on norms, biases, embeddings).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        max_steps: schedule length when the trainer sets none.
        decay: "cosine" | "constant" after warm-up.
        freeze: parameter-name patterns whose parameters are frozen (an unknown pattern is an error).
        lr_groups: parameter-name pattern -> learning rate for the matching parameters.
        optimizer: "adamw" | "adamw8bit" | "auto".
        rasterizer: "auto" (gsplat on CUDA, else torch) | "torch" | "gsplat".
        attention_backend: the SDPA kernel tried first ("auto", "flash", "cudnn", "efficient", "math").
        grad_checkpointing: recompute transformer activations in the backward pass (less memory).
        compile: torch.compile each transformer block.
        init_from: an export folder (or converted FaceLift GS-LRM) whose weights start the model.
    """

    stage = "reconstruction"
    pipeline_tag = "image-to-3d"  # posed views -> 3D Gaussians (model card metadata)
    card_tags = ("gaussian-splatting", "gs-lrm", "3d-reconstruction")
    ema_target = "net"  # the EMA callback keeps a shadow of self.net and calls export(..., ema_weights=...)
    export_drops = ("init_from",)

    def __init__(
        self,
        rig: str = "facelift_6view",
        image_size: int = 512,
        num_input_views: int = 4,
        # network size (FaceLift: 1024 / 24 / 64 / 8 / 2)
        width: int = 1024,
        depth: int = 24,
        head_dim: int = 64,
        patch_size: int = 8,
        num_global_tokens: int = 2,
        mlp_ratio: int = 4,
        sh_degree: int = 0,
        clip_xyz: float | None = 1.0,
        # Gaussian activations (GSLRMConfig): scale exp(min(s + scale_bias, scale_max_log)), opacity
        # sigmoid(a + opacity_bias), depth (2 sigmoid(z + depth_preact_bias) - 1) * depth_range about the ray's point
        # nearest the origin. None: the init_from weights' own (FaceLift's when they record none), else
        # default_activation: pixel_scale_bias(rig, image_size) (a Gaussian of 0.7 px at the rig's radius;
        # FaceLift's -2.3 is ~5 px at 128 px and trains to a haze) and FaceLift's -1.2 / -2.0 / 1.8 / 0.0
        scale_bias: float | None = None,
        scale_max_log: float | None = None,
        opacity_bias: float | None = None,
        depth_range: float | None = None,
        depth_preact_bias: float | None = None,
        # losses
        mse_weight: float = 1.0,
        ssim_weight: float = 0.0,
        perceptual_weight: float = 0.0,
        lpips_weight: float = 0.0,
        opacity_weight: float = 0.0,
        masked: bool = False,
        vgg_weights: str | None = None,
        lpips_weights: str | None = None,
        supervise_inputs: bool = False,
        # optimisation (grad clipping is the Trainer's)
        lr: float = 4e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        max_steps: int = 100_000,
        decay: str = "cosine",
        freeze: list[str] | None = None,
        lr_groups: dict[str, float] | None = None,
        optimizer: str = "adamw",
        # runtime
        rasterizer: str = "auto",
        attention_backend: str = "auto",
        grad_checkpointing: bool = False,
        compile: bool = False,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if rasterizer not in ("auto", "torch", "gsplat"):
            raise ValueError(f"rasterizer must be auto|torch|gsplat, got {rasterizer!r}")
        if decay not in ("cosine", "constant"):
            raise ValueError(f"decay must be cosine|constant, got {decay!r}")
        check_optimizer(optimizer)
        self.attention_backend = check_attention_backend(attention_backend)
        self.rig: Rig = load_rig(rig)
        self.resolve_activations(init_from)
        if not 1 <= num_input_views:
            raise ValueError(f"num_input_views must be >= 1, got {num_input_views}")
        self.net = GSLRM(self.model_config())
        if init_from:
            self.load_weights(init_from)
        if compile:
            for block in self.net.transformer_layers:
                block.compile()
        self.perceptual = load_perceptual(vgg_weights) if perceptual_weight > 0 else None
        self.lpips = load_lpips(vgg_weights, lpips_weights) if (lpips_weight > 0 or lpips_weights) else None
        self.val_metrics = KindMetrics(("psnr", "ssim", "lpips", "psnr_fg", "iou"))

    # ---- configuration ------------------------------------------------------------------------------------------
    def resolve_activations(self, init_from: str | None) -> None:
        """Resolve the activation constants left None, once, so that checkpoints and exports record the values the
        weights run and train with: the ``init_from`` weights' own (FaceLift's, GSLRMConfig's, when they record
        none), else :func:`default_activation`. ``self.derived_activations`` names the resolved ones (a checkpoint's
        own values replace them on load: :meth:`on_load_checkpoint`). An explicit value that differs from what the
        ``init_from`` weights were trained with is kept, with a warning."""
        stored = stored_activations(init_from) if init_from else {}
        self.derived_activations = {k for k in ACTIVATION_ARGUMENTS if self.hparams[k] is None}
        for name in ACTIVATION_ARGUMENTS:
            if name in self.derived_activations:
                fallback = getattr(GSLRMConfig, name) if init_from else default_activation(name, self.rig,
                                                                                         self.hparams.image_size)
                self.hparams[name] = stored.get(name, fallback)
            elif name in stored and float(self.hparams[name]) != stored[name]:
                log.warning("init_from %s: its weights were trained with %s=%g; this module uses %g (as configured)",
                            init_from, name, stored[name], self.hparams[name])

    def model_config(self) -> GSLRMConfig:
        h = self.hparams
        return GSLRMConfig(**{k: h[k] for k in MODEL_CONFIG_ARGUMENTS}, grad_checkpointing=h.grad_checkpointing)

    def load_weights(self, path: str | Path, ema: bool = False) -> None:
        """Load GS-LRM weights from an export folder (model.safetensors / model_ema.safetensors) or a .safetensors
        file; strict."""
        path = Path(path)
        if path.is_dir():
            path = path / (EMA_WEIGHTS if ema else WEIGHTS)[self.stage]
        if not path.is_file():
            raise FileNotFoundError(f"GS-LRM weights not found: {path}")
        state = load_file(str(path))
        expected = {k: tuple(v.shape) for k, v in self.net.state_dict().items()}
        check_state_dict(expected, state, str(path))
        self.net.load_state_dict(state, strict=True)

    # ---- model ----------------------------------------------------------------------------------------------------
    def reconstruct(self, images: Tensor, c2w: Tensor, fxfycxcy: Tensor) -> Gaussians:
        """images [B, Vin, 3, H, W] in [0, 1], c2w [B, Vin, 4, 4], fxfycxcy [B, Vin, 4] -> Gaussians."""
        with attention_backend(self.attention_backend):
            return self.net(images, c2w, fxfycxcy)

    def _backend(self) -> str:
        if self.hparams.rasterizer != "auto":
            return self.hparams.rasterizer
        return "auto"

    def render(self, gaussians: Gaussians, c2w: Tensor, fxfycxcy: Tensor, height: int, width: int,
               background: Tensor | None = None) -> dict[str, Tensor]:
        """Rasterize (fp32, outside autocast) -> {"rgb" [B, V, 3, H, W], "alpha" [B, V, 1, H, W], "depth"}."""
        if background is None:
            background = torch.ones(3, device=c2w.device)
        with torch.autocast(device_type=c2w.device.type, enabled=False):
            return rasterize(gaussians, c2w.float(), fxfycxcy.float(), height, width, background.float(),
                             backend=self._backend())

    def split_views(self, batch: dict, training: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(inputs, supervision) tensors of a batch: inputs = augmented inputs when present, else the first
        ``num_input_views`` clean views; supervision = the remaining views, or all views when the batch says so
        (``supervise_all_views``, set by the DataModule's ``supervise_inputs`` on training samples), when the module's
        ``supervise_inputs`` is on and ``training`` (the training step), or when there are no remaining views."""
        images, c2w, k = batch["images"], batch["c2w"], batch["fxfycxcy"]
        vin = self.input_views_of(batch)
        v = images.shape[1]
        if vin > v:
            raise ValueError(f"batch has {v} views but num_input_views is {vin}")
        inp = {
            "images": batch.get("input_images") if batch.get("input_images") is not None else images[:, :vin],
            "c2w": batch.get("input_c2w") if batch.get("input_c2w") is not None else c2w[:, :vin],
            "fxfycxcy": k[:, :vin],
        }
        flag = batch.get("supervise_all_views")  # the DataModule's supervise_inputs, one per scene
        from_data = flag if isinstance(flag, bool) else flag is not None and bool(torch.as_tensor(flag).all())
        all_views = from_data or (training and self.hparams.supervise_inputs) or vin == v
        sel = slice(0, v) if all_views else slice(vin, v)
        alpha = batch.get("alpha")
        sup = {"images": images[:, sel], "c2w": c2w[:, sel], "fxfycxcy": k[:, sel],
               "alpha": alpha[:, sel] if alpha is not None else None}
        return inp, sup

    def input_views_of(self, batch: dict) -> int:
        """How many of the batch's views are inputs: its ``num_input_views`` (a tensor from the loader, an int once
        ``on_before_batch_transfer`` ran), else the module's setting."""
        n = batch.get("num_input_views")
        if n is None:
            return int(self.hparams.num_input_views)
        if isinstance(n, Tensor):
            n = int(n.reshape(-1)[0]) if n.numel() else self.hparams.num_input_views
        return int(n)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The checks that read values, done on the host batch before it moves to the GPU (on the GPU each read
        would stall the host until the previous step's work is done): the index order, and ``num_input_views`` /
        ``supervise_all_views`` made Python values. ``checked_on_host`` tells predict_views not to check again."""
        if not isinstance(batch, dict):
            return batch
        if batch.get("index") is not None:
            check_index(batch["index"], "batch['index']")
        if isinstance(batch.get("num_input_views"), Tensor):
            batch["num_input_views"] = self.input_views_of(batch)
        if isinstance(batch.get("supervise_all_views"), Tensor):
            batch["supervise_all_views"] = bool(batch["supervise_all_views"].all())
        batch["checked_on_host"] = True
        return batch

    def predict_views(self, batch: dict, training: bool = False) -> dict[str, Any]:
        """Reconstruct from the input views and render the supervision views (``training``: see split_views).

        Returns {"pred" [B, Vs, 3, H, W], "pred_alpha" [B, Vs, 1, H, W], "target", "target_alpha" (or None),
        "gaussians"}."""
        if batch.get("index") is not None and not batch.get("checked_on_host"):
            check_index(batch["index"], "batch['index']")
        inp, sup = self.split_views(batch, training)
        gaussians = self.reconstruct(inp["images"], inp["c2w"], inp["fxfycxcy"])
        h, w = sup["images"].shape[-2:]
        out = self.render(gaussians, sup["c2w"], sup["fxfycxcy"], h, w, batch.get("background"))
        return {"pred": out["rgb"], "pred_alpha": out["alpha"], "target": sup["images"],
                "target_alpha": sup["alpha"], "gaussians": gaussians}

    # ---- losses ---------------------------------------------------------------------------------------------------
    def compute_loss(self, out: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted loss and its terms from ``predict_views`` output."""
        h = self.hparams
        pred, target, mask = out["pred"], out["target"], out.get("target_alpha")
        use_mask = h.masked and mask is not None
        if h.masked and mask is None:
            raise ValueError("masked=True needs batch['alpha']")
        terms: dict[str, Tensor] = {}
        terms["mse"] = masked_mse_loss(pred, target, mask) if use_mask else mse_loss(pred, target)
        total = h.mse_weight * terms["mse"]
        if h.ssim_weight > 0:
            terms["ssim_loss"] = masked_ssim_loss(pred, target, mask) if use_mask else ssim_loss(pred, target)
            total = total + h.ssim_weight * terms["ssim_loss"]
        if h.perceptual_weight > 0 and self.perceptual is not None:
            terms["perceptual_loss"] = self.perceptual(pred, target)
            total = total + h.perceptual_weight * terms["perceptual_loss"]
        if h.lpips_weight > 0 and self.lpips is not None:
            terms["lpips_loss"] = self.lpips(pred.flatten(0, 1), target.flatten(0, 1)).mean()
            total = total + h.lpips_weight * terms["lpips_loss"]
        if h.opacity_weight > 0:
            if mask is None:
                raise ValueError("opacity_weight > 0 needs batch['alpha']")
            terms["opacity_loss"] = alpha_loss(out["pred_alpha"], mask)
            total = total + h.opacity_weight * terms["opacity_loss"]
        terms["loss"] = total
        return terms

    # ---- Lightning hooks ------------------------------------------------------------------------------------------
    def _log_per_kind_psnr(self, prefix: str, out: dict[str, Any], batch: dict) -> None:
        psnr = per_view_psnr(out["pred"], out["target"]).mean(-1)  # [B], stays on device
        kinds = batch_kinds(batch, psnr.shape[0])
        b = len(kinds)
        self.log(f"{prefix}/psnr", psnr.mean(), batch_size=b, prog_bar=True)
        for kind in KINDS:
            n = sum(k == kind for k in kinds)
            if n:  # the weights go to the GPU from page-locked memory: no wait for the queued work
                w = torch.tensor([float(k == kind) for k in kinds])
                w = (w.pin_memory() if psnr.is_cuda else w).to(psnr.device, non_blocking=True)
                self.log(f"{prefix}/psnr/{kind}", (psnr * w).sum() / n, batch_size=n)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self.train_background.update(batch.get("background"))
        out = self.predict_views(batch, training=True)
        terms = self.compute_loss(out)
        b = out["pred"].shape[0]
        if self.log_train_loss(terms["loss"], b):
            for k, v in terms.items():
                if k != "loss":
                    self.log(f"train/{k}", v, batch_size=b)
            self._log_per_kind_psnr("train", out, batch)
        return terms["loss"]

    @torch.no_grad()
    def evaluate_batch(self, batch: dict) -> dict[str, Any]:
        """Per-view metrics of the supervision views: {"psnr", "ssim"[, "lpips"][, "psnr_fg"]} [B, Vs] (psnr_fg with
        the batch's alpha), plus "pred" and "target" images [B, Vs, 3, H, W] and their alpha ("pred_alpha",
        "target_alpha" or None) for the evaluate tool."""
        out = self.predict_views(batch)
        metrics: dict[str, Any] = view_metrics(out["pred"], out["target"], self.lpips, alpha=out["target_alpha"])
        metrics["pred"], metrics["target"] = out["pred"], out["target"]
        metrics["pred_alpha"], metrics["target_alpha"] = out["pred_alpha"], out["target_alpha"]
        return metrics

    @torch.no_grad()
    def validation_images(self, batch: dict, max_scenes: int = 4) -> dict[str, Any]:
        """What a validation shows (logged by ``callbacks.image_log.ImageLogger``): per scene a row of rendered
        supervision views over a row of their ground truth, each tile labelled with its rig view
        (``batch["index"][b, v, 0]``: the views differ between scenes)."""
        out = self.predict_views(batch)
        pred, target = out["pred"][:max_scenes].float(), out["target"][:max_scenes].float()
        v_sup, v_all = pred.shape[1], batch["images"].shape[1]
        names = list(self.rig.view_names)
        index = batch.get("index")
        tiles = []  # each scene's own supervision views (random inputs: they differ between scenes)
        for b in range(pred.shape[0]):
            views = index[b, v_all - v_sup:, 0].tolist() if index is not None else list(range(v_sup))
            tiles += [[names[i] if 0 <= i < len(names) else f"view_{i}" for i in views]] * 2
        rows = torch.stack([pred, target], dim=1).flatten(0, 1).clamp(0, 1)  # [2B, Vs, 3, H, W]
        return {"tag": "novel_views", "images": rows, "columns": [f"view {j + 1}" for j in range(v_sup)],
                "rows": [label for i in range(pred.shape[0]) for label in (f"{i} pred", f"{i} gt")], "tiles": tiles}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.predict_views(batch)
        terms = self.compute_loss(out)
        b = out["pred"].shape[0]
        self.log("val/loss", terms["loss"], batch_size=b, sync_dist=True)
        metrics = view_metrics(out["pred"], out["target"], self.lpips, alpha=out["target_alpha"])
        if out["target_alpha"] is not None:  # a model that paints the whole view opaque scores ~ the subject's area
            metrics["iou"] = per_view_iou(out["pred_alpha"], out["target_alpha"])
        self.val_metrics.update(metrics, batch_kinds(batch, b))

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self) -> dict:
        h = self.hparams
        groups = build_param_groups(self.net, h.freeze, h.lr_groups, h.lr, h.weight_decay)
        opt = build_optimizer(h.optimizer, groups, tuple(h.betas), trainer_clips_scaled_gradients(self))
        sched = build_scheduler(opt, h.warmup_steps, self.schedule_steps(), h.decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints and export -----------------------------------------------------------------------------------
    def stage_metadata(self) -> dict[str, Any]:
        return {"model_config": self.net.config.to_dict()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict):  # the checkpoint holds the weights; don't re-read init_from when restoring
            hp["init_from"] = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's activation constants (``checkpoint["mvlift"]["model_config"]``) are the ones its weights
        were trained with: they replace values this module derived (arguments left None); a value given explicitly
        that differs is an error naming both."""
        super().on_load_checkpoint(checkpoint)
        stored = (checkpoint.get("mvlift") or {}).get("model_config") or {}
        for name in ACTIVATION_ARGUMENTS:
            if name not in stored or stored[name] == getattr(self.net.config, name):
                continue
            if name not in self.derived_activations:
                raise ValueError(f"the checkpoint's weights were trained with {name}={stored[name]}, this module was "
                                 f"built with {name}={getattr(self.net.config, name)}; leave {name} unset to use "
                                 "the checkpoint's")
            setattr(self.net.config, name, stored[name])
            self.hparams[name] = stored[name]

    def card_details(self) -> list[tuple[str, Any]]:
        h = self.hparams
        size = sum(p.numel() for p in self.net.parameters()) / 1e6
        return [("image size", f"{int(h.image_size)} px"), ("input views", int(h.num_input_views)),
                ("GS-LRM", f"{size:.1f} M parameters ({WEIGHTS[self.stage]})")]

    def card_loading(self) -> list[str]:
        return ["Photo -> views -> 3D Gaussians, with a diffusion export of the same rig:", "",
                "    python -m tools.infer photo.png --diffusion DIFFUSION_EXPORT --reconstruction EXPORT --out out/",
                "", "In Python:", "",
                "    from lightning_modules.reconstruction.module import ReconstructionModule",
                "    module = ReconstructionModule.from_export(EXPORT)  # ema=True: the EMA weights"]

    def save_weights(self, out: Path) -> None:
        self._save_net(out / WEIGHTS[self.stage], self._net_state())

    def save_ema_weights(self, out: Path, ema_weights: dict[str, Tensor]) -> None:
        ema = {k.removeprefix("net."): v.detach().cpu().contiguous() for k, v in ema_weights.items()}
        check_state_dict({k: tuple(v.shape) for k, v in self.net.state_dict().items()}, ema, "ema_weights")
        self._save_net(out / EMA_WEIGHTS[self.stage], ema)

    def _net_state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}

    @staticmethod
    def _save_net(path: Path, state: dict[str, Tensor]) -> None:
        save_file(state, str(path))
        make_readable(path)  # safetensors writes 0600 whatever the umask

    @classmethod
    def export_arguments(cls, path: Path, meta: dict[str, Any], hparams: dict[str, Any], ema: bool) -> dict[str, Any]:
        """The stored constructor arguments, with the network's size and activation constants from the export's
        ``model_config`` (the network the weights ran in): an export whose arguments leave one out (those of
        converted FaceLift checkpoints before every constant was stored) never gets a re-derived value."""
        mc = meta.get("model_config") or {}
        return {**hparams, **{k: mc[k] for k in MODEL_CONFIG_ARGUMENTS if k in mc}}

    def load_export_weights(self, path: Path, meta: dict[str, Any], ema: bool) -> None:
        self.load_weights(path, ema=ema)


__all__ = ["ACTIVATION_ARGUMENTS", "MODEL_CONFIG_ARGUMENTS", "ReconstructionModule", "check_index", "config_arguments",
           "default_activation", "pixel_scale_bias", "stored_activations"]
