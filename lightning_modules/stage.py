"""StageModule: what the diffusion and reconstruction LightningModules share.

Both keep a record of the training samples' backgrounds (``train_background``, merged over ranks before a checkpoint
or an export is written), log ``train/loss`` as the mean over the steps since the last logged point and over all
ranks (an :class:`IntervalMean` that checkpoints carry, so a resumed run logs what the uninterrupted one would), and
log ``train/grad_norm`` on logging steps only. They clip gradients (``trainer.gradient_clip_val``) also with a fused
optimizer under bf16-mixed precision (:meth:`StageModule.configure_gradient_clipping`). A subclass calls
:meth:`log_train_loss` in ``training_step``, provides ``mvlift_metadata()`` (``checkpoint["mvlift"]``,
docs/ARCHITECTURE.md) and extends the checkpoint hooks through ``super()``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_modules.metrics import IntervalMean, logs_this_step
from lightning_modules.optim import stage_clips_fused, total_grad_norm
from lightning_modules.training_background import TrainingBackground


class StageModule(pl.LightningModule):
    """Base class of :class:`~lightning_modules.diffusion.DiffusionModule` and
    :class:`~lightning_modules.reconstruction.ReconstructionModule` (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_background = TrainingBackground()
        self._train_loss = IntervalMean()

    def mvlift_metadata(self) -> dict[str, Any]:
        raise NotImplementedError

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
        """Collective: every rank calls it before rank 0 exports (callbacks.paths.CheckpointPaths.export)."""
        self.train_background.merge_ranks()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_background.merge_ranks()  # every rank saves (rank 0 writes): the record covers all ranks
        checkpoint["mvlift"] = self.mvlift_metadata()
        checkpoint["train_loss_interval"] = self._train_loss.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_background.load((checkpoint.get("mvlift") or {}).get("background"))
        self._train_loss.load_state_dict(checkpoint.get("train_loss_interval"))


__all__ = ["StageModule"]
