"""StageModule: what the diffusion and reconstruction LightningModules share.

Both keep a record of the training samples' backgrounds (``train_background``, merged over ranks before a checkpoint
or an export is written), log ``train/loss`` as the mean over the steps since the last logged point and over all
ranks (an :class:`IntervalMean` that checkpoints carry, so a resumed run logs what the uninterrupted one would), and
log ``train/grad_norm`` on logging steps only. A subclass calls :meth:`log_train_loss` in ``training_step``, provides
``mvlift_metadata()`` (``checkpoint["mvlift"]``, docs/ARCHITECTURE.md) and extends the checkpoint hooks through
``super()``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_modules.metrics import IntervalMean, logs_this_step
from lightning_modules.optim import total_grad_norm
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

    def log_train_loss(self, loss: Tensor, batch_size: int) -> bool:
        """Add this step's loss to the interval; on the steps Lightning writes, log its mean over the interval and
        over all ranks as ``train/loss`` and return True (the caller logs its other terms then)."""
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
