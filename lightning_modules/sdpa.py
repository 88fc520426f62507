"""Which kernel runs ``F.scaled_dot_product_attention``: one setting (``attention_backend``) for both stages.

torch picks an SDPA kernel itself (``auto``). On Hopper GPUs at head dim 64 (every attention of the SD 2.1 UNet and
of GS-LRM) cuDNN's kernel is about 1.5x faster than FlashAttention-2, and the device's torch 2.11 already picks it
there (docs/benchmarks.md: the profiled kernels are cuDNN's under ``auto``); the priority list torch reports still
ranks cuDNN last, and other torch versions or GPUs choose differently. ``attention_backend`` pins the choice — for
speed where ``auto`` picks a slower kernel, or to rule a kernel out when chasing a numerical difference. It names
the kernel to try first:

- ``auto``: torch's own order, unchanged;
- ``cudnn`` / ``flash`` / ``efficient`` / ``math``: that kernel first, then torch's order for inputs it cannot take
  (a CPU tensor, an unsupported head dim), so a setting never makes a model fail where ``auto`` runs.

The modules enter :func:`attention_backend` around their network's forward; the backward runs the kernel the forward
chose. Under ``torch.compile`` the choice is made when the graph is traced, inside the same context.

    >>> import torch
    >>> with attention_backend("cudnn"):
    ...     torch._C._get_sdp_priority_order()[0] == BACKENDS["cudnn"].value
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
NAMES = ("auto", *BACKENDS)


def check_attention_backend(name: str) -> str:
    """Return ``name`` if it is a known ``attention_backend``, else raise ValueError."""
    if name not in NAMES:
        raise ValueError(f"attention_backend must be one of {NAMES}, got {name!r}")
    return name


def _torch_order() -> list[SDPBackend]:
    by_value = {b.value: b for b in BACKENDS.values()}
    return [by_value[v] for v in torch._C._get_sdp_priority_order() if v in by_value]


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Within the block, SDPA tries ``name``'s kernel first and then torch's order (module docstring)."""
    if check_attention_backend(name) == "auto":
        yield
        return
    first = BACKENDS[name]
    order = [first] + [b for b in _torch_order() if b != first]
    with sdpa_kernel(order, set_priority=True):
        yield


__all__ = ["BACKENDS", "NAMES", "attention_backend", "check_attention_backend"]
