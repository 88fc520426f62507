"""Optimisation shared by both stages: layer-wise freezing, per-group learning rates, AdamW (torch or 8-bit),
warmup + decay.

Patterns name parameters by prefix, with an integer range allowed in one dotted component:
``patch_embed`` (everything under that prefix), ``blocks.0-11`` (blocks 0..11 inclusive),
``transformer_layers.3`` (block 3 only), ``*`` (everything). A name matches when its leading components match the
pattern's components (``blocks.1`` does not match ``blocks.10``).

Example:
    >>> import torch
    >>> m = torch.nn.ModuleDict({"embed": torch.nn.Linear(2, 2), "blocks": torch.nn.ModuleList(
    ...     torch.nn.Linear(2, 2) for _ in range(3))})
    >>> groups = build_param_groups(m, freeze=["embed"], lr_groups={"blocks.2": 1e-3}, base_lr=1e-4,
    ...                             weight_decay=0.05)
    >>> sorted((g["lr"], len(g["params"])) for g in groups)
    [(0.0001, 2), (0.0001, 2), (0.001, 1), (0.001, 1)]
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

log = logging.getLogger("mvlift.optim")

OPTIMIZERS = ("adamw", "adamw8bit", "auto")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def _component_matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    m = _RANGE.match(pattern)
    if m and name.isdigit():
        return int(m.group(1)) <= int(name) <= int(m.group(2))
    return pattern == name


def name_matches(pattern: str, param_name: str) -> bool:
    """True when ``param_name`` lies under ``pattern`` (see module docstring)."""
    pat = pattern.strip().strip(".").split(".")
    parts = param_name.split(".")
    if pat == ["*"]:
        return True
    return len(parts) >= len(pat) and all(_component_matches(p, n) for p, n in zip(pat, parts))


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "norm" in name or name.endswith(("embeddings", ".bias"))


def freeze_parameters(module: nn.Module, freeze: Iterable[str]) -> list[str]:
    """Set requires_grad=False on parameters named by ``freeze``; returns their names. Unknown patterns raise."""
    patterns = list(freeze or [])
    names = [n for n, _ in module.named_parameters()]
    for pat in patterns:
        if not any(name_matches(pat, n) for n in names):
            raise ValueError(f"freeze pattern {pat!r} matches no parameter (e.g. {names[:3]})")
    frozen = []
    for n, p in module.named_parameters():
        if any(name_matches(pat, n) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def build_param_groups(
    module: nn.Module,
    freeze: list[str] | None = None,
    lr_groups: dict[str, float] | None = None,
    base_lr: float = 1e-4,
    weight_decay: float = 0.0,
) -> list[dict]:
    """AdamW parameter groups: frozen parameters excluded (and requires_grad=False), the first matching
    ``lr_groups`` pattern sets a parameter's lr (else ``base_lr``), and norms/biases/embeddings get no weight decay.
    Groups carry ``initial_lr``-free plain dicts: {"params", "lr", "weight_decay", "name"}."""
    freeze_parameters(module, freeze or [])
    lr_groups = dict(lr_groups or {})
    names = [n for n, _ in module.named_parameters()]
    for pat in lr_groups:
        if not any(name_matches(pat, n) for n in names):
            raise ValueError(f"lr_groups pattern {pat!r} matches no parameter")
    buckets: dict[tuple[str, bool], dict] = {}
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        pat = next((k for k in lr_groups if name_matches(k, n)), None)
        lr = float(lr_groups[pat]) if pat is not None else float(base_lr)
        nd = _no_decay(n, p)
        key = (pat or "base", nd)
        g = buckets.setdefault(key, {"params": [], "lr": lr, "weight_decay": 0.0 if nd else float(weight_decay),
                                     "name": f"{pat or 'base'}{'/no_decay' if nd else ''}"})
        g["params"].append(p)
    return list(buckets.values())


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay: str = "cosine", min_factor: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from 0, then cosine to ``min_factor`` or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay != "cosine":
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: str = "cosine",
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR applying ``lr_factor`` to every group's lr."""
    if decay not in ("cosine", "constant"):
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, decay, min_factor)
    )


def build_adamw(groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), fused: bool | None = None,
                clips_scaled_gradients: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups``: the fused kernel on CUDA when every parameter lives there, unless the trainer clips
    gradients that a GradScaler scales (``clips_scaled_gradients``, fp16-mixed: clipping needs the gradients
    unscaled first, which a fused optimizer only does inside its step), then the multi-tensor ``foreach`` kernel.
    Clipping under bf16-mixed (``StageModule.configure_gradient_clipping``, ``stage_clips_fused``) or fp32 (Lightning's
    own) goes with the fused kernel."""
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("no trainable parameters: every parameter is frozen")
    on_cuda = all(p.is_cuda for p in params)
    if fused is None:
        fused = on_cuda and not clips_scaled_gradients
    return torch.optim.AdamW(groups, betas=betas, fused=fused, foreach=None if fused else on_cuda or None)


def check_optimizer(name: str) -> str:
    """``name`` when it is one of ``OPTIMIZERS``, else ValueError."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be {'|'.join(OPTIMIZERS)}, got {name!r}")
    return name


def build_optimizer(name: str, groups: list[dict], betas: tuple[float, float] = (0.9, 0.95),
                    clips_scaled_gradients: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``groups``: ``adamw`` (torch, ``build_adamw``), ``adamw8bit`` (bitsandbytes'
    AdamW8bit; ImportError when bitsandbytes is missing) or ``auto`` (8-bit when bitsandbytes is installed, else
    torch AdamW with a warning)."""
    check_optimizer(name)
    if name in ("adamw8bit", "auto"):
        try:
            import bitsandbytes as bnb  # optional dependency
        except ImportError:
            if name == "adamw8bit":
                raise ImportError("optimizer='adamw8bit' needs bitsandbytes (pip install bitsandbytes)") from None
            log.warning("optimizer='auto': bitsandbytes not installed, using torch AdamW")
        else:
            return bnb.optim.AdamW8bit(groups, betas=betas)
    return build_adamw(groups, betas=betas, clips_scaled_gradients=clips_scaled_gradients)


def stage_clips_fused(trainer: Any) -> bool:
    """Whether ``StageModule.configure_gradient_clipping`` clips for a fused optimizer itself: under Lightning's
    MixedPrecision plugin without a GradScaler (bf16-mixed; DDP or one device), which refuses any fused optimizer
    although only fp16's scaler (unscaling inside the fused step) needs that."""
    plugin = getattr(trainer, "precision_plugin", None)
    return type(plugin) is MixedPrecision and getattr(plugin, "scaler", None) is None


def trainer_clips_scaled_gradients(module: torch.nn.Module) -> bool:
    """Whether the Lightning trainer attached to ``module`` (if any) clips gradients that a fused optimizer cannot
    take: under Lightning's MixedPrecision plugin where the stage modules do not clip themselves (a GradScaler,
    fp16-mixed: see ``stage_clips_fused``)."""
    trainer = getattr(module, "_trainer", None)
    return bool(trainer is not None and trainer.gradient_clip_val
                and isinstance(trainer.precision_plugin, MixedPrecision) and not stage_clips_fused(trainer))


def total_grad_norm(parameters) -> torch.Tensor | None:
    """L2 norm of all gradients seen as one vector, as a device tensor (None when no parameter has a gradient).

    Stays on the device: no host sync per parameter (Lightning's ``grad_norm`` builds its total with
    ``torch.tensor(list_of_device_scalars)``, one device-to-host copy per parameter, every step)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


__all__ = [
    "OPTIMIZERS",
    "build_adamw",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "check_optimizer",
    "freeze_parameters",
    "lr_factor",
    "name_matches",
    "stage_clips_fused",
    "total_grad_norm",
    "trainer_clips_scaled_gradients",
]
