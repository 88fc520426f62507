"""Stop (or skip) a training step whose loss or gradients are not finite, before the optimizer applies it.

Without it a NaN step is only visible as ``grad_norm=nan`` in the logs, the weights turn NaN at the update, and the
run dies later with an unrelated error (or trains on, writing NaN checkpoints). :class:`NonFiniteGuard` checks,
after the backward pass and before every optimizer step, that the step's loss (``StageModule.step_loss``, when the
module records one) and the L2 norm of all gradients are finite:

- default: raise :class:`NonFiniteError` at that step, naming the step, the batch's scenes and sources
  (``scene_id`` / ``source`` of every batch since the previous optimizer step) and the run's last checkpoint — which
  is finite, since no non-finite update was ever applied — with its checkpoints folder;
- a loss that does not depend on the parameters at all (no ``grad_fn``; e.g. every Gaussian culled after a diverged
  update, where the render is the constant background) stops the run the same way, before Lightning's backward
  fails with an autograd error, in either mode;
- ``skip=True``: drop the step's gradients (the optimizer leaves every parameter and its state as they were; the
  learning-rate schedule still advances), count it, log the count as ``train/nonfinite_skipped`` and a warning with
  the same details. The count is saved in checkpoints.

A gradient that stays exactly zero cannot train either: after ``zero_grad_steps`` consecutive optimizer steps whose
gradients are all 0 (default 100; 0 turns it off) the run stops with the same error, naming the step the gradient
died at and the last checkpoint. A GS-LRM that paints white Gaussians over a white background reaches such a state
and never leaves it (docs/results.md, run F: 1,000 steps of exactly zero gradient before its time ran out).

Under fp16 mixed precision the GradScaler already skips steps whose gradients overflow (and lowers its scale), so
there only a non-finite loss is acted on (and the zero-gradient check is off). Under DDP the ranks agree (the flag is
reduced over them), so all stop or skip together. The check costs one host read of a boolean per optimizer step (the
value must be known before the update); ``enabled=False`` removes it. ``tools.fit`` adds the guard to every run:
``--nonfinite.skip true``, ``--nonfinite.zero_grad_steps N``, ``--nonfinite.enabled false``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

from callbacks.paths import run_paths
from lightning_modules.optim import total_grad_norm

log = logging.getLogger("mvlift.nonfinite")

MAX_SCENES_NAMED = 16


class NonFiniteError(RuntimeError):
    """A training step cannot be applied: its loss or gradients are not finite, its loss has no gradient, or its
    gradients have been exactly zero for ``zero_grad_steps`` steps (the message names the step and the last
    checkpoint)."""


class NonFiniteGuard(pl.Callback):
    """Stop or skip non-finite training steps (module docstring)."""

    def __init__(self, skip: bool = False, enabled: bool = True, zero_grad_steps: int = 100) -> None:
        if zero_grad_steps < 0:
            raise ValueError(f"zero_grad_steps={zero_grad_steps}: a number of steps, or 0 to turn the check off")
        self.skip = skip
        self.enabled = enabled
        self.zero_grad_steps = zero_grad_steps
        self.skipped = 0
        self.zero_run = 0  # consecutive optimizer steps, up to the last one, whose gradients were all exactly 0
        self._scenes: list[str] = []

    # ---- what the step trained on -----------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.enabled or not isinstance(batch, dict):
            return
        ids, sources = batch.get("scene_id"), batch.get("source")
        if isinstance(ids, (list, tuple)):
            srcs = sources if isinstance(sources, (list, tuple)) and len(sources) == len(ids) else ["?"] * len(ids)
            self._scenes += [f"{src}/{sid}" for src, sid in zip(srcs, ids)]

    # ---- the checks -------------------------------------------------------------------------------------------------
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """A loss that does not depend on the parameters (no grad_fn: host metadata, no read) cannot train: after a
        diverged update every Gaussian can be culled and the render is the constant background."""
        if self.enabled and isinstance(loss, torch.Tensor) and not loss.requires_grad:
            raise NonFiniteError(self._message(trainer, "loss without gradient (it does not depend on the parameters: "
                                               "the model's outputs were probably non-finite or all culled after a "
                                               "diverged update)", list(self._scenes), skippable=False))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.enabled:
            return
        scenes, self._scenes = self._scenes, []
        loss = getattr(pl_module, "step_loss", None)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        norm = None if scaler is not None else total_grad_norm(pl_module.parameters())
        flags = []
        if isinstance(loss, torch.Tensor):
            flags.append(~torch.isfinite(loss.detach().float()).all())
        if norm is not None:
            flags.append(~torch.isfinite(norm))
        watch_zero = norm is not None and self.zero_grad_steps > 0
        if watch_zero:
            flags.append(norm == 0)
        if not flags:
            return
        bad = torch.stack(flags).to(torch.float32)  # [loss bad, grads bad, grads zero] (any may be absent)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        bad = bad.cpu().tolist()  # the one host read per step: the decision is needed before the update
        if watch_zero:
            zero = bad.pop() > 0  # DDP: the gradients are all-reduced, so every rank sees the same norm
            self.zero_run = self.zero_run + 1 if zero else 0
            if self.zero_run >= self.zero_grad_steps:
                raise NonFiniteError(self._zero_message(trainer))
        if not any(bad):
            return
        what = " and ".join(name for name, b in zip(self._names(loss, norm), bad) if b)
        message = self._message(trainer, what, scenes)
        if not self.skip:
            raise NonFiniteError(message)
        for p in pl_module.parameters():
            p.grad = None  # optimizers leave parameters without a gradient (and their state) untouched
        self.skipped += 1
        log.warning("skipped: %s", message)
        pl_module.log("train/nonfinite_skipped", float(self.skipped))

    @staticmethod
    def _names(loss: Any, norm: Any) -> list[str]:
        return [n for n, present in (("loss", isinstance(loss, torch.Tensor)), ("gradient", norm is not None))
                if present]

    def _message(self, trainer: pl.Trainer, what: str, scenes: list[str], skippable: bool = True) -> str:
        step = trainer.global_step + 1
        named = ", ".join(scenes[:MAX_SCENES_NAMED]) + (f" (+{len(scenes) - MAX_SCENES_NAMED} more)"
                                                        if len(scenes) > MAX_SCENES_NAMED else "")
        return (f"non-finite {what} at training step {step} (epoch {trainer.current_epoch}); the batch's scenes "
                f"(source/scene_id): {named or 'not recorded'}; {self._last_checkpoint(trainer)}. No update of this "
                "step was applied. Lower the learning rate or check these scenes"
                + ("; or skip such steps (NonFiniteGuard(skip=True); tools.fit: --nonfinite.skip true)." if skippable
                   else "."))

    def _zero_message(self, trainer: pl.Trainer) -> str:
        step = trainer.global_step + 1
        return (f"the gradient has been exactly 0 for {self.zero_run} steps (training steps {step - self.zero_run + 1}"
                f"-{step}, epoch {trainer.current_epoch}): the model cannot learn from here. A GS-LRM rendering white "
                "Gaussians over a white background gets no gradient at all (docs/results.md, run F): train it over "
                "random backgrounds (a source's background: random) or with a lower peak learning rate; "
                f"{self._last_checkpoint(trainer)}. To train on regardless: --nonfinite.zero_grad_steps 0.")

    @staticmethod
    def _last_checkpoint(trainer: pl.Trainer) -> str:

        paths = run_paths(trainer)
        if paths is not None:
            latest, folder = paths.latest_checkpoint(), paths.checkpoint_dir
            return (f"last finite checkpoint: {latest}" if latest else
                    f"no checkpoint yet in {folder}") + f" (the run's checkpoints folder: {folder})"
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
        return f"last finite checkpoint: {ckpt}" if ckpt else "no checkpoint written yet"

    # ---- the count travels with checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "zero_run": self.zero_run}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.zero_run = int(state_dict.get("zero_run", 0))


__all__ = ["NonFiniteError", "NonFiniteGuard"]
