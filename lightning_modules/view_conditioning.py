"""Per-view conditioning embeddings (the UNet's cross-attention context) tied to a camera rig.

FaceLift conditions each generated view on a fixed "prompt embedding" [6, 77, 1024]: the tensor silently encodes
FaceLift's horizontal 6-view rig. Here the embeddings carry the rig they belong to (name + fingerprint) everywhere
they go: in the module's state dict (extra state), in Lightning checkpoints and in exports
(``view_embeddings.safetensors`` with the rig in its metadata). Loading embeddings into a module for another rig
raises an error naming both rigs.

Sources:
- ``facelift``: FaceLift's fixed file (a raw [6, 77, 1024] tensor, rig order front, front_right, right, back, left,
  front_left) -> the ``facelift_6view`` rig; fixed (not trained).
- ``learned``: a learnable [V, T, D] tensor for any rig, initialised from the FaceLift view nearest in azimuth
  (``init="nearest_facelift"``) or from scratch (``init="scratch"``, N(0, 0.02²)).

Example:
    >>> from geometry.rig import load_rig
    >>> e = ViewEmbeddings.from_scratch(load_rig("mouse_oblique20_6view"), tokens=4, dim=8)
    >>> e.rig_name, tuple(e().shape)
    ('mouse_oblique20_6view', (6, 4, 8))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from geometry.files import make_readable
from geometry.rig import Rig, load_rig

FACELIFT_RIG = "facelift_6view"
FACELIFT_EMBEDS_SHAPE = (6, 77, 1024)
EXPORT_NAME = "view_embeddings.safetensors"
SOURCES = ("facelift", "learned")


def _rig_label(name: str, fingerprint: str) -> str:
    return f"{name!r} (fingerprint {fingerprint})"


def check_same_rig(embeds_rig: tuple[str, str], module_rig: Rig, where: str) -> None:
    """Raise ValueError naming both rigs when embeddings made for (name, fingerprint) meet another rig."""
    name, fp = embeds_rig
    if fp != module_rig.fingerprint:
        raise ValueError(
            f"{where}: view embeddings belong to rig {_rig_label(name, fp)} but the model's rig is "
            f"{_rig_label(module_rig.name, module_rig.fingerprint)}; view conditioning is tied to the rig — use "
            "embeddings made for this rig (or view_embeddings='learned' to learn new ones)"
        )


def load_facelift_embeds(path: str | Path) -> Tensor:
    """FaceLift's fixed prompt embeddings file -> float32 [6, 77, 1024] in rig order; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FaceLift view embeddings file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):  # tolerate {"prompt_embeds": tensor}-style wrappers with a single tensor
        tensors = [v for v in obj.values() if isinstance(v, Tensor)]
        if len(tensors) != 1:
            raise ValueError(f"{path}: expected one tensor [6, 77, 1024], got a dict with keys {sorted(obj)}")
        obj = tensors[0]
    if not isinstance(obj, Tensor) or tuple(obj.shape) != FACELIFT_EMBEDS_SHAPE:
        shape = tuple(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__
        raise ValueError(
            f"{path}: FaceLift view embeddings must be a tensor {list(FACELIFT_EMBEDS_SHAPE)}, got {shape}")
    return obj.float()


def nearest_views_by_azimuth(rig: Rig, reference: Rig) -> list[int]:
    """For each view of ``rig``, the index of the ``reference`` view nearest in azimuth (circular distance)."""
    out = []
    for az in rig.azimuths_deg:
        dist = [abs((az - r + 180.0) % 360.0 - 180.0) for r in reference.azimuths_deg]
        out.append(min(range(len(dist)), key=dist.__getitem__))
    return out


class ViewEmbeddings(nn.Module):
    """Per-view cross-attention context [V, T, D] for one rig.

    ``forward() -> [V, T, D]``; ``for_batch(b) -> [(B V), T, D]`` (views folded in the batch, rig order).
    ``learnable`` embeddings are an nn.Parameter, fixed ones a buffer; both are in ``state_dict`` together with the
    rig (extra state), so loading a state dict made for another rig raises.
    """

    def __init__(self, embeds: Tensor, rig: Rig, source: str, learnable: bool):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"view embeddings source must be one of {SOURCES}, got {source!r}")
        if embeds.ndim != 3 or embeds.shape[0] != rig.num_views:
            raise ValueError(f"view embeddings for rig {rig.name!r} must be [{rig.num_views}, T, D], "
                             f"got {list(embeds.shape)}")
        self.rig = rig
        self.source = source
        self.learnable = bool(learnable)
        data = embeds.detach().clone().float()
        if self.learnable:
            self.embeds = nn.Parameter(data)
        else:
            self.register_buffer("embeds", data)

    # ---- constructors ----------------------------------------------------------------------------------------------
    @classmethod
    def from_facelift(cls, path: str | Path, rig: Rig | str = FACELIFT_RIG) -> ViewEmbeddings:
        """FaceLift's fixed embeddings; they belong to ``facelift_6view``, so any other ``rig`` raises."""
        rig = load_rig(rig)
        facelift = load_rig(FACELIFT_RIG)
        check_same_rig((facelift.name, facelift.fingerprint), rig, f"FaceLift embeddings {path}")
        return cls(load_facelift_embeds(path), rig, source="facelift", learnable=False)

    @classmethod
    def from_scratch(cls, rig: Rig | str, tokens: int = 77, dim: int = 1024, std: float = 0.02,
                     seed: int = 0) -> ViewEmbeddings:
        """Learnable embeddings N(0, std²), seeded."""
        rig = load_rig(rig)
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(rig.num_views, tokens, dim, generator=g) * std, rig, "learned", learnable=True)

    @classmethod
    def from_nearest_facelift(cls, rig: Rig | str, facelift_path: str | Path) -> ViewEmbeddings:
        """Learnable embeddings for ``rig``, each view starting from the FaceLift view nearest in azimuth."""
        rig = load_rig(rig)
        src = load_facelift_embeds(facelift_path)
        idx = nearest_views_by_azimuth(rig, load_rig(FACELIFT_RIG))
        return cls(src[idx], rig, "learned", learnable=True)

    @classmethod
    def load(cls, path: str | Path, rig: Rig | str | None = None, learnable: bool | None = None) -> ViewEmbeddings:
        """Read ``view_embeddings.safetensors`` (an export) or FaceLift's raw ``.pt``; when ``rig`` is given it
        must be the embeddings' rig (error naming both otherwise)."""
        path = Path(path)
        if path.suffix == ".pt":
            return cls.from_facelift(path, rig if rig is not None else FACELIFT_RIG)
        if not path.is_file():
            raise FileNotFoundError(f"view embeddings file not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "embeds" not in set(f.keys()) or "rig" not in meta:
                raise ValueError(f"{path}: not an mvlift view embeddings file (needs tensor 'embeds' and rig metadata)")
            embeds = f.get_tensor("embeds")
        stored = Rig.from_dict(json.loads(meta["rig"]))
        if rig is not None:
            check_same_rig((stored.name, stored.fingerprint), load_rig(rig), str(path))
        source = meta.get("source", "learned")
        is_learnable = meta.get("learnable", "true") == "true" if learnable is None else learnable
        return cls(embeds, stored, source, is_learnable)

    # ---- use -------------------------------------------------------------------------------------------------------
    @property
    def rig_name(self) -> str:
        return self.rig.name

    @property
    def rig_fingerprint(self) -> str:
        return self.rig.fingerprint

    @property
    def num_views(self) -> int:
        return self.embeds.shape[0]

    @property
    def dim(self) -> int:
        return self.embeds.shape[-1]

    def forward(self) -> Tensor:
        """[V, T, D]."""
        return self.embeds

    def for_batch(self, batch_size: int, dtype: torch.dtype | None = None) -> Tensor:
        """[(B V), T, D]: the rig's views repeated for ``batch_size`` scenes, scene-major."""
        e = self.embeds if dtype is None else self.embeds.to(dtype)
        return e.unsqueeze(0).expand(batch_size, -1, -1, -1).reshape(-1, *e.shape[1:])

    def metadata(self) -> dict[str, str]:
        return {"rig": json.dumps(self.rig.to_dict()), "rig_name": self.rig.name,
                "rig_fingerprint": self.rig.fingerprint, "source": self.source,
                "learnable": "true" if self.learnable else "false", "view_names": json.dumps(list(self.rig.view_names))}

    def save(self, path: str | Path) -> Path:
        """Write ``embeds`` [V, T, D] float32 with the rig in the safetensors metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeds": self.embeds.detach().float().cpu().contiguous()}, str(path), metadata=self.metadata())
        make_readable(path)  # safetensors writes 0600 whatever the umask
        return path

    # the rig travels inside state_dict (and so inside Lightning checkpoints)
    def get_extra_state(self) -> dict[str, Any]:
        return {"rig": self.rig.to_dict(), "source": self.source}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        stored = Rig.from_dict(state["rig"])
        check_same_rig((stored.name, stored.fingerprint), self.rig, "state_dict")

    def extra_repr(self) -> str:
        return (f"rig={self.rig.name!r}, fingerprint={self.rig.fingerprint}, source={self.source!r}, "
                f"shape={list(self.embeds.shape)}, learnable={self.learnable}")


__all__ = [
    "EXPORT_NAME", "FACELIFT_EMBEDS_SHAPE", "FACELIFT_RIG", "SOURCES", "ViewEmbeddings", "check_same_rig",
    "load_facelift_embeds", "nearest_views_by_azimuth",
]
