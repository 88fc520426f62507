"""StageModule: what the diffusion and reconstruction LightningModules share.

Both keep a record of the training samples' backgrounds (``train_background``, merged over ranks before a checkpoint
or an export is written), log ``train/loss`` as the mean over the steps since the last logged point and over all
ranks (an :class:`IntervalMean` that checkpoints carry, so a resumed run logs what the uninterrupted one would), and
log ``train/grad_norm`` on logging steps only. They clip gradients (``trainer.gradient_clip_val``) also with a fused
optimizer under bf16-mixed precision (:meth:`StageModule.configure_gradient_clipping`). A subclass calls
:meth:`log_train_loss` in ``training_step`` and extends the checkpoint hooks through ``super()``.

Checkpoints and exports (the format: :mod:`lightning_modules.artifacts`). :meth:`StageModule.mvlift_metadata` is
``checkpoint["mvlift"]`` and an export's metadata: stage, rig, format version and training background, plus the
subclass's :meth:`~StageModule.stage_metadata`. :meth:`StageModule.export` writes the weights
(:meth:`~StageModule.save_weights`, the subclass's files), the EMA weights when given
(:meth:`~StageModule.save_ema_weights`), the rig, the metadata with the constructor arguments and a model card
(``README.md``, :meth:`~StageModule.model_card`: stage, rig cameras, training data and steps, last validation metrics,
how to load it; the subclass adds :meth:`~StageModule.card_details` and :meth:`~StageModule.card_loading`);
:meth:`StageModule.from_export` reads them back: the metadata (stage checked), the EMA weights' presence, the
constructor arguments (:meth:`~StageModule.export_arguments` adds the subclass's), the weights
(:meth:`~StageModule.load_export_weights`) and the background record — as diffusers' ``ConfigMixin`` does for
``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from huggingface_hub import ModelCard, ModelCardData
from torch import Tensor

from lightning_modules.artifacts import (
    EMA_HASH_KEY,
    EMA_WEIGHTS,
    FORMAT_VERSION,
    HASH_KEY,
    MODEL_CARD_FILE,
    RIG_FILE,
    check_state_sha256,
    export_metadata,
    has_ema_weights,
    state_sha256,
    verify_export_weights,
    write_export_metadata,
)
from lightning_modules.hparams import init_hparams
from lightning_modules.metrics import IntervalMean, logs_this_step
from lightning_modules.optim import stage_clips_fused, total_grad_norm
from lightning_modules.training_background import TrainingBackground, datamodule_backgrounds, describe


class StageModule(pl.LightningModule):
    """Base class of :class:`~lightning_modules.diffusion.DiffusionModule` and
    :class:`~lightning_modules.reconstruction.ReconstructionModule` (module docstring)."""

    stage: str  # "diffusion" | "reconstruction" (lightning_modules.artifacts.STAGES)
    pipeline_tag: str  # the Hugging Face Hub task of the model card's metadata (the subclass's)
    card_tags: tuple[str, ...] = ()  # the subclass's tags of the model card's metadata
    ema_target: str  # the attribute the EMA callback keeps a shadow of (and export(..., ema_weights=...) holds)
    export_drops: tuple[str, ...] = ()  # constructor arguments an export leaves out (paths of the training machine)
    rig: Any

    def __init__(self) -> None:
        super().__init__()
        self.train_background = TrainingBackground()
        self._train_loss = IntervalMean()
        self._last_val_step: int | None = None  # the optimizer step of the last validation (the model card's metrics)

    def on_validation_start(self) -> None:  # (callbacks' on_validation_end, e.g. an export, runs before the module's)
        if not self.trainer.sanity_checking:
            self._last_val_step = int(self.global_step)

    # ---- metadata ---------------------------------------------------------------------------------------------
    def mvlift_metadata(self) -> dict[str, Any]:
        """``checkpoint["mvlift"]`` and an export's metadata (docs/ARCHITECTURE.md, "Checkpoint metadata")."""
        return {"stage": self.stage, "rig": self.rig.to_dict(), "version": FORMAT_VERSION, **self.stage_metadata(),
                "background": self.train_background.to_dict(datamodule_backgrounds(self._trainer))}

    def stage_metadata(self) -> dict[str, Any]:
        """The subclass's own metadata keys."""
        return {}

    # ---- export -------------------------------------------------------------------------------------------------
    def export(self, out_dir: str | Path, ema_weights: dict[str, Tensor] | None = None,
               metadata: dict[str, Any] | None = None) -> Path:
        """Write an export folder: the weights, the EMA weights (``ema_weights``: the EMA callback's shadow of
        ``ema_target``, names with or without its prefix), the rig and the metadata with the constructor arguments
        (:func:`lightning_modules.artifacts.write_export_metadata`); ``metadata``: keys added to it (e.g.
        ``converted_from`` of ``lightning_modules.facelift.convert``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.save_weights(out)
        if ema_weights is not None:
            self.save_ema_weights(out, ema_weights)
        meta = {**self.mvlift_metadata(), **self.export_extras(), **(metadata or {})}
        write_export_metadata(out, meta, init_hparams(self.hparams, drop=self.export_drops), self.rig)
        self.model_card(meta, ema=ema_weights is not None).save(out / MODEL_CARD_FILE)
        return out

    @classmethod
    def from_export(cls, path: str | Path, ema: bool = False, **overrides: Any) -> StageModule:
        """Rebuild a module from an export folder (``ema``: its EMA weights); ``overrides`` change constructor
        arguments (e.g. runtime settings)."""
        path = Path(path)
        meta = export_metadata(path, cls.stage)
        if ema and not has_ema_weights(path, cls.stage):
            raise FileNotFoundError(f"{path}: no {EMA_WEIGHTS[cls.stage]} (exported without EMA weights)")
        verify_export_weights(path, meta, cls.stage, ema)  # the files are the ones exported (sha256), or an error
        hparams = cls.export_arguments(path, meta, init_hparams(meta.get("hparams") or {}), ema)
        if (path / RIG_FILE).is_file():
            hparams["rig"] = str(path / RIG_FILE)
        hparams.update(overrides)
        module = cls(**hparams)
        module.load_export_weights(path, meta, ema)
        module.train_background.load(meta.get("background"))
        return module

    # ---- model card --------------------------------------------------------------------------------------------
    def card_data(self, metadata: dict[str, Any]) -> ModelCardData:
        """The model card's metadata (the YAML front matter the Hugging Face Hub reads): ``library_name`` mvlift, the
        stage's ``pipeline_tag``, tags (mvlift, the stage, the rig, the subclass's), the license: Apache-2.0 (mvlift's)
        for weights mvlift trained, ``other`` for a conversion (``converted_from``: the original weights' terms
        apply) unless ``metadata["license"]`` says otherwise."""
        license_ = metadata.get("license") or ("other" if metadata.get("converted_from") else "apache-2.0")
        tags = ["mvlift", self.stage, f"rig:{self.rig.name}", "multi-view", "lab-animals", *self.card_tags]
        return ModelCardData(library_name="mvlift", pipeline_tag=self.pipeline_tag, license=license_, tags=tags)

    def model_card(self, metadata: dict[str, Any], ema: bool = False) -> ModelCard:
        """An export's ``README.md`` as a huggingface_hub ``ModelCard`` (``card.save(path)``, ``card.push_to_hub``):
        metadata (:meth:`card_data`) and Markdown: the stage and the subclass's :meth:`card_details`, the rig with its
        cameras, the training data and steps (from the trainer when exported during a run; ``converted_from`` of a
        conversion), the last validation metrics when known, and how to load it (:meth:`card_loading`)."""
        front = self.card_data(metadata).to_yaml()
        return ModelCard(f"---\n{front}\n---\n\n{self.card_text(metadata, ema)}")

    def card_text(self, metadata: dict[str, Any], ema: bool = False) -> str:
        """The model card's Markdown body (:meth:`model_card`)."""
        rig = self.rig
        lines = [f"# mvlift {self.stage} model: rig `{rig.name}` ({rig.num_views} views)", "",
                 f"An export folder of mvlift's {self.stage} stage (written by `{type(self).__name__}.export`).", "",
                 "## Model", "", f"- stage: {self.stage}"]
        lines += [f"- {key}: {value}" for key, value in self.card_details()]
        cameras = (f"`{rig.name}` (fingerprint `{rig.fingerprint}`, in `{RIG_FILE}`): {rig.num_views} cameras "
                   f"looking at {list(rig.target)}, field of view {rig.fov_deg:g} deg at {rig.image_size} px, up axis "
                   f"{rig.up_axis}.")
        lines += [f"- EMA weights: {'yes, `' + EMA_WEIGHTS[self.stage] + '`' if ema else 'no'}", "",
                  "## Rig", "", cameras, "",
                  "| # | view | azimuth (deg) | elevation (deg) | distance |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {name} | {az:g} | {el:g} | {rig.radius:g} |"
                  for i, (name, az, el) in enumerate(zip(rig.view_names, rig.azimuths_deg, rig.elevations_deg))]
        lines += ["", "## Training", "", *self._card_training(metadata), "", "## Metrics", "", *self._card_metrics(),
                  "", "## Loading", "", "`EXPORT` is this folder.", "", *self.card_loading(), ""]
        return "\n".join(lines)

    def _card_training(self, metadata: dict[str, Any]) -> list[str]:
        trainer = self._trainer
        lines = [f"- steps: {trainer.global_step}" if trainer is not None else
                 "- steps: not recorded (exported outside a training run)"]
        sources = getattr(getattr(trainer, "datamodule", None), "train_sources", None) if trainer is not None else None
        if sources:
            lines.append("- data sources:")
            lines += [f"  - `{s.name}`: kind {s.kind}, weight {s.weight:g}, background {s.background}"
                      for s in sources]
        else:
            lines.append("- data sources: not recorded")
        if metadata.get("converted_from"):
            lines.append(f"- converted from: `{json.dumps(metadata['converted_from'], default=str)}`")
        lines.append(f"- training background: {describe(metadata.get('background'))}")
        return lines

    def _card_metrics(self) -> list[str]:
        trainer = self._trainer
        metrics = {k: v for k, v in (trainer.callback_metrics.items() if trainer is not None else ())
                   if k.startswith("val/")}
        if not metrics:
            return ["None recorded (no validation before this export)."]
        at = f" (validation at step {self._last_val_step})" if self._last_val_step is not None else ""
        return [f"Last validation values{at}:", "", "| metric | value |", "|---|---|",
                *(f"| {k} | {float(v):.4g} |" for k, v in sorted(metrics.items()))]

    def card_details(self) -> list[tuple[str, Any]]:
        """(name, value) lines of the model card's "Model" section (the subclass's)."""
        return []

    def card_loading(self) -> list[str]:
        """The model card's "Loading" section: how to open the export (the subclass's)."""
        return ["    from lightning_modules.loading import load_stage", f"    module = load_stage(EXPORT, {self.stage!r})"]

    def save_weights(self, out: Path) -> None:
        """Write the module's weight files into the export folder ``out``."""
        raise NotImplementedError

    def save_ema_weights(self, out: Path, ema_weights: dict[str, Tensor]) -> None:
        """Write the EMA weights (lightning_modules.artifacts.EMA_WEIGHTS) into ``out``."""
        raise NotImplementedError

    def export_extras(self) -> dict[str, Any]:
        """Keys an export's metadata adds to :meth:`mvlift_metadata`."""
        return {}

    @classmethod
    def export_arguments(cls, path: Path, meta: dict[str, Any], hparams: dict[str, Any], ema: bool) -> dict[str, Any]:
        """The constructor arguments that rebuild the exported module (``hparams``: the stored ones)."""
        return hparams

    def load_export_weights(self, path: Path, meta: dict[str, Any], ema: bool) -> None:
        """Load the export's weights (or check what the constructor loaded)."""

    def schedule_steps(self) -> int:
        """The run length the learning-rate schedule spans: the trainer's ``max_steps`` (one run length for the loop
        and the schedule, so extending a finished run with a larger ``--trainer.max_steps`` continues the schedule
        over the new length), the module's ``max_steps`` only without a step-limited trainer."""
        trainer = self._trainer
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return int(self.hparams.max_steps)

    def log_train_loss(self, loss: Tensor, batch_size: int) -> bool:
        """Add this step's loss to the interval; on the steps Lightning writes, log its mean over the interval and
        over all ranks as ``train/loss`` and return True (the caller logs its other terms then)."""
        self.step_loss = loss.detach()  # this step's loss, for callbacks.nonfinite.NonFiniteGuard (no host read)
        self._train_loss.add(loss)
        if not logs_this_step(self):
            return False
        self.log("train/loss", self._train_loss.pop(), batch_size=batch_size, prog_bar=True, sync_dist=True)
        return True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if logs_this_step(self):  # a norm of every gradient is GPU work: only where it is written
            total = total_grad_norm(self.parameters())
            if total is not None:
                self.log("train/grad_norm", total)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, also for a fused optimizer under bf16-mixed precision (no GradScaler). Lightning's
        MixedPrecision refuses any fused optimizer because fp16's scaler would leave the gradients scaled until
        inside the fused step; without a scaler they are the true gradients here. Only for that plugin (DDP or one
        device): sharded strategies (FSDP, DeepSpeed) clip through their own plugins."""
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if not gradient_clip_val or not fused or not stage_clips_fused(self.trainer):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":  # Lightning passes its str enum
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_before_export(self) -> None:
        """Collective: every rank calls it before rank 0 exports (callbacks.run_exports)."""
        self.train_background.merge_ranks()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_background.merge_ranks()  # every rank saves (rank 0 writes): the record covers all ranks
        checkpoint["mvlift"] = self.mvlift_metadata()
        checkpoint["train_loss_interval"] = self._train_loss.state_dict()
        if self._trainer is None or self._trainer.is_global_zero:  # the rank that writes: sha256 of every tensor
            checkpoint["mvlift"][HASH_KEY] = state_sha256(checkpoint.get("state_dict") or {})
            shadows = [s["shadow"] for s in (checkpoint.get("callbacks") or {}).values()
                       if isinstance(s, dict) and isinstance(s.get("shadow"), dict)]
            if len(shadows) == 1:  # the EMA callback's weights (checkpoint_ema_state checks them)
                checkpoint["mvlift"][EMA_HASH_KEY] = state_sha256(shadows[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # before anything is restored: weights that changed since they were written are an error, never other numbers
        check_state_sha256(checkpoint.get("state_dict"), (checkpoint.get("mvlift") or {}).get(HASH_KEY),
                           "the checkpoint's weights")
        self.train_background.load((checkpoint.get("mvlift") or {}).get("background"))
        self._train_loss.load_state_dict(checkpoint.get("train_loss_interval"))


__all__ = ["StageModule"]
