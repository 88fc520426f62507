"""Profiled CUDA kernel time by kind (attention, gemm, conv, rasterize, ...), for the step benchmarks.

    >>> kernel_kind("void pytorch_flash::flash_bwd_kernel<...>")
    'attention'
    >>> kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16", DIFFUSION_KINDS)
    'conv'
"""

from __future__ import annotations

import torch

ATTENTION = ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native"))
GEMM = ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "sm80_"))
OPTIMIZER = ("optimizer", ("adam", "multi_tensor"))
# (kind, substrings of the CUDA kernel name), first match wins; no match: "other"
RECONSTRUCTION_KINDS = (ATTENTION, ("rasterize", ("gsplat", "rasteriz", "projection", "isect", "intersect")),
                        GEMM, OPTIMIZER)
DIFFUSION_KINDS = (ATTENTION, ("conv", ("conv", "fprop", "dgrad", "wgrad", "implicit")), GEMM,
                   ("norm", ("norm",)), OPTIMIZER)


def kernel_kind(name: str, kinds=RECONSTRUCTION_KINDS) -> str:
    """Coarse kind of a CUDA kernel from its name (the first kind with a matching substring, else "other")."""
    low = name.lower()
    return next((kind for kind, keys in kinds if any(k in low for k in keys)), "other")


def kernel_times_us(prof, kinds=RECONSTRUCTION_KINDS) -> dict[str, float]:
    """Self time of a torch profiler's CUDA kernels summed by ``kernel_kind`` (CPU-side events are left out)."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            kind = kernel_kind(e.key, kinds)
            out[kind] = out.get(kind, 0.0) + e.self_device_time_total
    return out


def top_kernels(prof, kind: str, kinds=RECONSTRUCTION_KINDS, n: int = 3) -> list[list]:
    """The ``n`` CUDA kernels of ``kind`` with the most self time: [[name (first 90 characters), ms], ...] (which
    kernel an SDPA backend setting really ran, for example)."""
    rows = [(e.self_device_time_total, e.key) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and kernel_kind(e.key, kinds) == kind]
    return [[name[:90], round(us / 1e3, 2)] for us, name in sorted(rows, reverse=True)[:n]]
