"""Exponential moving average of a module's weights, kept by a callback and saved in its checkpoints.

Why not Lightning's ``WeightAveraging`` / diffusers' ``EMAModel``: this one averages only the trained sub-module
(``ema_target``: not the frozen VAE / image encoder), checkpoints and resumes with the run, and hands its shadow to
the exports (``ema_weights``, the ``*_ema`` weight files) that tools.infer / evaluate load with ``--ema``.

The target is ``getattr(pl_module, pl_module.ema_target)`` (DiffusionModule: ``"unet"``; ReconstructionModule:
``"net"``). After every optimizer step ``t`` with ``t >= start_step`` and ``t % every_n_steps == 0``, the ``n``-th update (n = 0, 1, ...) is::

    d_n = min(decay, (1 + n) / (10 + n))     with warmup (default; decay alone without)
    shadow <- d_n * shadow + (1 - d_n) * weights          (fp32, every floating tensor of target.state_dict())

The warm-up (diffusers' ``EMAModel`` caps its decay the same way) lets the average forget the random initial weights
in a short run: without it, 500 steps at decay 0.999 leave 61 % of the initialisation in the shadow, and a validation
or export with the EMA weights of such a run shows noise.

Before ``start_step`` the shadow is a copy of the weights. Non-floating buffers are copied. The shadow lives on the
module's device, is saved/restored through the callback's ``state_dict`` (so ``resume`` continues it), is swapped
into the module for validation when ``use_for_validation``, and is what exports get as ``ema_weights`` (keys of
``target.state_dict()``, no prefix).

Example:
    >>> ema = EMA(decay=0.999)
    >>> trainer = pl.Trainer(callbacks=[ema])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

log = logging.getLogger("mvlift.ema")


def ema_target(pl_module: pl.LightningModule) -> nn.Module:
    """The sub-module named by ``pl_module.ema_target`` (error naming the class when it has none)."""
    name = getattr(pl_module, "ema_target", None)
    if not name:
        raise AttributeError(f"{type(pl_module).__name__} has no `ema_target` attribute naming the sub-module "
                             "the EMA callback should average (e.g. ema_target = 'unet')")
    target = getattr(pl_module, name, None)
    if not isinstance(target, nn.Module):
        raise AttributeError(  # noqa: TRY004 - a wrong attribute, reported as one
            f"{type(pl_module).__name__}.ema_target = {name!r} does not name a sub-module")
    return target


@torch.no_grad()
def ema_update(shadow: dict[str, Tensor], weights: dict[str, Tensor], decay: float) -> None:
    """In place: shadow[k] = decay * shadow[k] + (1 - decay) * weights[k] for floating tensors, copy otherwise."""
    floats = [k for k, v in shadow.items() if v.is_floating_point()]
    if floats:
        s = [shadow[k] for k in floats]
        w = [weights[k].detach().to(dtype=torch.float32) for k in floats]
        torch._foreach_mul_(s, decay)
        torch._foreach_add_(s, w, alpha=1.0 - decay)
    for k, v in shadow.items():
        if not v.is_floating_point():
            v.copy_(weights[k])


class EMA(Callback):
    """EMA of ``pl_module.<ema_target>`` (see module docstring).

    Args:
        decay: EMA decay per update, in [0, 1).
        every_n_steps: update every N optimizer steps.
        start_step: before this global step the shadow just copies the weights.
        use_for_validation: validate with the EMA weights (swapped in and back out).
        warmup: cap the decay of the n-th update at (1 + n) / (10 + n) (module docstring).
    """

    def __init__(self, decay: float = 0.9999, every_n_steps: int = 1, start_step: int = 0,
                 use_for_validation: bool = True, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if every_n_steps < 1 or start_step < 0:
            raise ValueError(f"EMA needs every_n_steps >= 1 and start_step >= 0, got {every_n_steps}, {start_step}")
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.start_step = int(start_step)
        self.use_for_validation = use_for_validation
        self.warmup = bool(warmup)
        self.shadow: dict[str, Tensor] | None = None
        self.num_updates = 0
        self._last_step: int | None = None
        self._backup: dict[str, Tensor] | None = None

    # ---- state --------------------------------------------------------------------------------------------------
    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """The EMA weights (keys of ``target.state_dict()``), or None before the shadow exists."""
        return None if self.shadow is None else dict(self.shadow)

    def _init_shadow(self, target: nn.Module) -> None:
        self.shadow = {k: v.detach().to(dtype=torch.float32 if v.is_floating_point() else v.dtype).clone()
                       for k, v in target.state_dict().items()}

    def _check_keys(self, target: nn.Module) -> None:
        assert self.shadow is not None
        mine, theirs = set(self.shadow), set(target.state_dict())
        if mine != theirs:
            raise ValueError(f"EMA shadow does not match the module's {len(theirs)} tensors: missing "
                             f"{sorted(theirs - mine)[:5]}, unexpected {sorted(mine - theirs)[:5]}")

    def state_dict(self) -> dict[str, Any]:
        shadow = None if self.shadow is None else {k: v.detach().cpu() for k, v in self.shadow.items()}
        return {"shadow": shadow, "num_updates": self.num_updates, "last_step": self._last_step, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = state_dict.get("shadow")
        self.num_updates = int(state_dict.get("num_updates", 0))
        self._last_step = state_dict.get("last_step")

    # ---- training -----------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = ema_target(pl_module)
        if self.shadow is None:
            if trainer.ckpt_path is not None:
                log.warning("EMA: checkpoint %s holds no EMA state; starting the shadow from its weights",
                            trainer.ckpt_path)
            self._init_shadow(target)
        else:
            self._check_keys(target)
        device = next(iter(target.state_dict().values())).device
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or self.shadow is None:  # no optimizer step this batch (accumulation)
            return
        self._last_step = step
        weights = ema_target(pl_module).state_dict()
        if step < self.start_step:
            for k, v in self.shadow.items():
                v.copy_(weights[k])
            return
        if step % self.every_n_steps == 0:
            ema_update(self.shadow, weights, self.current_decay())
            self.num_updates += 1

    def current_decay(self) -> float:
        """The decay of the next update (module docstring)."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    # ---- validation with EMA weights ------------------------------------------------------------------------------
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if not self.use_for_validation or self.shadow is None or self._backup is not None:
            return
        target = ema_target(pl_module)
        self._backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
        target.load_state_dict(self.shadow, strict=True)

    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        if self._backup is None:
            return
        ema_target(pl_module).load_state_dict(self._backup, strict=True)
        self._backup = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._swap_in(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._backup is not None:  # never save EMA weights as the model's own weights
            state = checkpoint.get("state_dict", {})
            prefix = f"{pl_module.ema_target}."
            for k, v in self._backup.items():
                if prefix + k in state:
                    state[prefix + k] = v

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._swap_out(pl_module)


__all__ = ["EMA", "ema_target", "ema_update"]
