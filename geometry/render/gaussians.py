"""The Gaussians container and its quaternion helpers.

A :class:`Gaussians` holds tensors with a leading batch dim:
``means`` [B, N, 3], ``quats`` [B, N, 4] (w, x, y, z; not necessarily normalized), ``scales`` [B, N, 3] (linear),
``opacities`` [B, N] in [0, 1], ``colors`` [B, N, 3] in [0, 1] (:meth:`Gaussians.from_sh0` takes SH degree-0
coefficients instead).

Example:
    >>> g = Gaussians.unbatched(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.1),
    ...                         torch.full((2,), 0.5), torch.ones(2, 3))
    >>> g.batch_size, g.num_gaussians, g.select(0).means.shape
    (1, 2, torch.Size([1, 2, 3]))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from kornia.geometry.conversions import quaternion_to_rotation_matrix
from torch import Tensor

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic; 3DGS stores f_dc = (rgb - 0.5) / SH_C0


@dataclasses.dataclass
class Gaussians:
    """A batch of 3D Gaussian scenes (shapes in the module docstring). Fields are plain tensors (autograd-friendly)."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> Gaussians:
        """Same as ``Tensor.to`` on every field (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def select(self, b: int) -> Gaussians:
        """Scene ``b`` keeping a batch dim of 1."""
        return self._map(lambda t: t[b: b + 1])

    def subset(self, index: Tensor) -> Gaussians:
        """Gaussians ``index`` (a [N] bool mask or [K] long indices) of every scene."""
        return self._map(lambda t: t[:, index])

    @staticmethod
    def cat(items: Sequence[Gaussians], dim: int = 1) -> Gaussians:
        """Concatenate scenes (dim=0, same N) or the Gaussians of each scene (dim=1, same B)."""
        if not items:
            raise ValueError("Gaussians.cat needs at least one item")
        if dim not in (0, 1):
            raise ValueError(f"Gaussians.cat: dim must be 0 (scenes) or 1 (Gaussians), got {dim}")
        names = [f.name for f in dataclasses.fields(Gaussians)]
        return Gaussians(**{n: torch.cat([getattr(g, n) for g in items], dim=dim) for n in names})

    @classmethod
    def from_sh0(cls, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, sh0: Tensor) -> Gaussians:
        """Build from degree-0 spherical-harmonic colour coefficients ``sh0`` [B, N, 3] instead of RGB.

        ``colors = clamp(sh0 * SH_C0 + 0.5, 0, 1)`` (view-independent 3DGS colour, clamped like GS-LRM's head), so the
        rasterizer and every other consumer keep seeing RGB in [0, 1].
        """
        return cls(means, quats, scales, opacities, (sh0 * SH_C0 + 0.5).clamp(0.0, 1.0))

    @staticmethod
    def unbatched(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor) -> Gaussians:
        """Build a B=1 batch from per-scene tensors ([N, 3], [N, 4], [N, 3], [N], [N, 3])."""
        return Gaussians(means[None], quats[None], scales[None], opacities[None], colors[None])

    def validate(self, where: str = "gaussians") -> None:
        """Raise ValueError naming ``where`` when shapes disagree with the contract."""
        if self.means.dim() != 3 or self.means.shape[-1] != 3:
            raise ValueError(f"{where}: means must be [B, N, 3], got {tuple(self.means.shape)}")
        b, n = self.means.shape[:2]
        want = {"quats": (b, n, 4), "scales": (b, n, 3), "opacities": (b, n), "colors": (b, n, 3)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{where}: {name} must be {list(shape)} to match means {[b, n, 3]}, got {list(got)}")


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z), normalized first
    (``kornia.geometry.conversions.quaternion_to_rotation_matrix``)."""
    return quaternion_to_rotation_matrix(torch.nn.functional.normalize(quats, dim=-1))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S^T R^T [..., 3, 3] of quaternions [..., 4] and linear scales [..., 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


__all__ = ["SH_C0", "Gaussians", "covariance_3d", "quat_to_rotmat"]
