"""Per-view conditioning embeddings (the UNet's cross-attention context) tied to a camera rig.

FaceLift conditions each generated view on a fixed "prompt embedding" [6, 77, 1024]: the tensor silently encodes
FaceLift's horizontal 6-view rig. Here the embeddings carry the rig they belong to (name + fingerprint) everywhere
they go: in the module's state dict (extra state), in Lightning checkpoints and in exports
(``view_embeddings.safetensors`` with the rig in its metadata). Loading embeddings into a module for another rig
raises an error naming both rigs.

Sources:
- ``facelift``: FaceLift's fixed file (a raw [6, 77, 1024] tensor, rows in FaceLift's view order
  ``FACELIFT_VIEW_ORDER`` = front, front_right, right, back, left, front_left — the order of ``facelift_6view``;
  measured on the released file: rows 0, 1, 5 share the prompt up to "front", rows 1 and 5 then read "right" /
  "left") -> the ``facelift_6view`` rig (or any rig with the same six camera directions, rows mapped by direction:
  :func:`views_by_direction`); fixed (not trained).
- ``learned``: a learnable [V, T, D] tensor for any rig, initialised from the FaceLift view nearest in azimuth
  (``init="nearest_facelift"``) or from scratch (``init="scratch"``, N(0, 0.02²)).
- ``text``: made from one prompt per rig view with a pipeline's own text encoder (:func:`view_prompts`,
  :func:`text_view_embeddings`, ``python -m tools.view_embeddings``); learnable, the prompts in the file's ``info``.

A file's embeddings must fit the UNet they condition: [V, tokens, cross_attention_dim]
(:func:`check_embeddings_fit`, :class:`ViewEmbeddingShapeError` naming the file, the shape and the UNet's).

Example:
    >>> from geometry.rig import load_rig
    >>> e = ViewEmbeddings.from_scratch(load_rig("mouse_oblique20_6view"), tokens=4, dim=8)
    >>> e.rig_name, tuple(e().shape)
    ('mouse_oblique20_6view', (6, 4, 8))
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from geometry.files import make_readable
from geometry.rig import Rig, load_rig
from lightning_modules.artifacts import load_checkpoint

FACELIFT_RIG = "facelift_6view"
FACELIFT_EMBEDS_SHAPE = (6, 77, 1024)
FACELIFT_VIEW_ORDER = ("front", "front_right", "right", "back", "left", "front_left")  # rows of FaceLift's file
EXPORT_NAME = "view_embeddings.safetensors"
SOURCES = ("facelift", "learned", "text")
DEFAULT_TEMPLATE = "a rendering image of a 3D model, {view} view, {elevation words}, color map."
TEMPLATE_FIELDS = ("view", "elevation words", "azimuth", "elevation")


class ViewEmbeddingShapeError(ValueError):
    """View embeddings whose shape does not fit the UNet (views, tokens, cross-attention dim)."""


def check_embeddings_fit(shape: tuple[int, ...] | list[int], views: int, dim: int, where: str,
                         tokens: int | None = None) -> None:
    """Raise :class:`ViewEmbeddingShapeError` unless ``shape`` is [views, tokens, dim] (``tokens=None``: any)."""
    shape = tuple(int(x) for x in shape)
    want = [views, tokens if tokens is not None else "T", dim]
    bad = len(shape) != 3 or shape[0] != views or shape[2] != dim or (tokens is not None and shape[1] != tokens)
    if bad:
        why = []
        if len(shape) == 3 and shape[2] != dim:
            why.append(f"{shape[2]}-dim embeddings for a UNet whose cross-attention is {dim}-dim (made with another "
                       "text encoder than the pipeline's?)")
        if len(shape) == 3 and tokens is not None and shape[1] != tokens:
            why.append(f"{shape[1]} tokens where the pipeline's text context has {tokens}")
        if len(shape) != 3 or shape[0] != views:
            why.append(f"{shape[0] if shape else 0} views for {views}" if len(shape) == 3 else "not [V, T, D]")
        raise ViewEmbeddingShapeError(f"{where}: view embeddings {list(shape)} do not fit the UNet, which needs "
                                      f"{want}: {'; '.join(why)}")


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
    """FaceLift's fixed prompt embeddings file -> float32 [6, T, D] in FaceLift's view order
    (``FACELIFT_VIEW_ORDER``; FaceLift's own file is [6, 77, 1024], whether it fits a UNet is
    :func:`check_embeddings_fit`'s); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FaceLift view embeddings file not found: {path}")
    obj = load_checkpoint(path)  # weights_only: a file asking for more is refused by name (--trust-checkpoint)
    if isinstance(obj, dict):  # tolerate {"prompt_embeds": tensor}-style wrappers with a single tensor
        tensors = [v for v in obj.values() if isinstance(v, Tensor)]
        if len(tensors) != 1:
            raise ValueError(f"{path}: expected one tensor [6, 77, 1024], got a dict with keys {sorted(obj)}")
        obj = tensors[0]
    if not isinstance(obj, Tensor) or obj.ndim != 3 or obj.shape[0] != len(FACELIFT_VIEW_ORDER):
        shape = list(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__
        raise ViewEmbeddingShapeError(
            f"{path}: FaceLift view embeddings must be a tensor [6, T, D] (FaceLift's: "
            f"{list(FACELIFT_EMBEDS_SHAPE)}), got {shape}")
    return obj.float()


def views_by_direction(source: Rig, target: Rig, angle_tol_deg: float = 1.0, where: str = "view embeddings"
                       ) -> list[int]:
    """For each view of ``target``, the index of the ``source`` view looking from the same direction (azimuth and
    elevation within ``angle_tol_deg``); a target view without one is a ValueError naming it: per-view
    conditioning belongs to its camera directions, never to the nearest other one."""
    out, missing = [], []
    for name, az, el in zip(target.view_names, target.azimuths_deg, target.elevations_deg):
        found = [i for i, (a, e) in enumerate(zip(source.azimuths_deg, source.elevations_deg))
                 if abs((az - a + 180.0) % 360.0 - 180.0) <= angle_tol_deg and abs(el - e) <= angle_tol_deg]
        if found:
            out.append(found[0])
        else:
            missing.append(f"{name} (azimuth {az:g}, elevation {el:g})")
    if missing:
        have = ", ".join(f"{n} ({a:g}, {e:g})" for n, a, e in
                         zip(source.view_names, source.azimuths_deg, source.elevations_deg))
        raise ValueError(f"{where} were made for rig {source.name!r} ({have}); rig {target.name!r} has views no "
                         f"embedding was made for: {', '.join(missing)}. Make embeddings for that rig "
                         "(python -m tools.view_embeddings) or learn them (view_embeddings: learned)")
    return out


def facelift_source_rig(file_order: tuple[str, ...] | list[str] = FACELIFT_VIEW_ORDER) -> Rig:
    """``facelift_6view`` with its views listed in ``file_order`` (a FaceLift embedding file's row order)."""
    base = load_rig(FACELIFT_RIG)
    order = [str(v) for v in file_order]
    if sorted(order) != sorted(base.view_names):
        raise ValueError(f"a FaceLift embedding file's view order must list {list(base.view_names)} once each, "
                         f"got {order}")
    idx = [base.view_names.index(v) for v in order]
    d = base.to_dict()
    d.update(view_names=order, azimuths_deg=[base.azimuths_deg[i] for i in idx],
             elevations_deg=[base.elevations_deg[i] for i in idx])
    d.pop("fingerprint", None)
    return Rig.from_dict(d)


# ---- prompts and text-built embeddings ------------------------------------------------------------------------------
def elevation_words(elevation_deg: float) -> str:
    """Words for a view's elevation: ``at eye level`` (|e| < 5), ``from slightly above`` (< 15), ``from above at an
    angle`` (< 60, the oblique rigs), ``from high above`` (< 85), ``from directly above``; the same ``below``.

    >>> [elevation_words(e) for e in (0, 10, 20, -20)]
    ['at eye level', 'from slightly above', 'from above at an angle', 'from below at an angle']
    """
    e = float(elevation_deg)
    side = "above" if e > 0 else "below"
    a = abs(e)
    if a < 5:
        return "at eye level"
    if a < 15:
        return f"from slightly {side}"
    if a < 60:
        return f"from {side} at an angle"
    if a < 85:
        return f"from high {side}"
    return f"from directly {side}"


def view_prompts(rig: Rig | str, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per rig view, in rig order: ``template`` with ``{view}`` (the view's name), ``{elevation words}``
    (:func:`elevation_words`), ``{azimuth}`` and ``{elevation}`` (degrees) filled in; any other ``{field}`` is an
    error naming it.

    >>> view_prompts("mouse_oblique20_6view")[1]
    'a rendering image of a 3D model, front_right view, from above at an angle, color map.'
    """

    rig = load_rig(rig)
    unknown = sorted(set(re.findall(r"\{([^{}]*)\}", template)) - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"prompt template {template!r}: unknown field(s) {unknown}; known: "
                         f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    out = []
    for name, az, el in zip(rig.view_names, rig.azimuths_deg, rig.elevations_deg):
        values = {"view": name, "elevation words": elevation_words(el), "azimuth": f"{az:g}", "elevation": f"{el:g}"}
        text = template
        for k, v in values.items():
            text = text.replace("{" + k + "}", v)
        out.append(text)
    return out


@torch.no_grad()
def encode_prompts(prompts: list[str], text_encoder: Any, tokenizer: Any) -> Tensor:
    """[len(prompts), tokens, hidden] float32: the text encoder's last hidden state of each prompt padded to the
    tokenizer's ``model_max_length`` (as Stable Diffusion pipelines encode prompts); deterministic."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    text_encoder.eval()
    return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


def text_view_embeddings(pipeline: str | Path, rig: Rig | str, template: str = DEFAULT_TEMPLATE) -> ViewEmbeddings:
    """View embeddings for ``rig`` from text: :func:`view_prompts` encoded with the pipeline folder's own
    ``text_encoder/`` and ``tokenizer/`` (local files only), checked against its UNet's cross-attention dim
    (:class:`ViewEmbeddingShapeError`); source ``text``, learnable, the prompts and template in ``info``."""
    from lightning_modules.diffusion.pretrained import load_text_encoder, unet_cross_attention_dim

    rig = load_rig(rig)
    pipeline = Path(pipeline)
    text_encoder, tokenizer = load_text_encoder(pipeline)
    prompts = view_prompts(rig, template)
    embeds = encode_prompts(prompts, text_encoder, tokenizer)
    check_embeddings_fit(tuple(embeds.shape), rig.num_views, unet_cross_attention_dim(pipeline),
                         f"{pipeline / 'text_encoder'} (text-built for rig {rig.name!r})")
    info = {"prompts": prompts, "template": template, "text_encoder": str(pipeline.resolve() / "text_encoder"),
            "tokens": int(embeds.shape[1]), "dim": int(embeds.shape[2])}
    return ViewEmbeddings(embeds, rig, source="text", learnable=True, info=info)


def is_embeddings_file(spec: Any) -> bool:
    """Whether a ``view_embeddings`` setting names a file (.safetensors / .pt) rather than a source."""
    return isinstance(spec, (str, Path)) and Path(str(spec)).suffix in (".safetensors", ".pt")


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

    def __init__(self, embeds: Tensor, rig: Rig, source: str, learnable: bool, info: dict[str, Any] | None = None):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"view embeddings source must be one of {SOURCES}, got {source!r}")
        if embeds.ndim != 3 or embeds.shape[0] != rig.num_views:
            raise ValueError(f"view embeddings for rig {rig.name!r} must be [{rig.num_views}, T, D], "
                             f"got {list(embeds.shape)}")
        self.rig = rig
        self.source = source
        self.learnable = bool(learnable)
        self.info: dict[str, Any] = dict(info or {})  # where they came from (prompts, a file's view order), JSON
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
        info = json.loads(meta["info"]) if "info" in meta else None
        return cls(embeds, stored, source, is_learnable, info)

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
                "learnable": "true" if self.learnable else "false", "view_names": json.dumps(list(self.rig.view_names)),
                **({"info": json.dumps(self.info)} if self.info else {})}

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
    "DEFAULT_TEMPLATE",
    "EXPORT_NAME",
    "FACELIFT_EMBEDS_SHAPE",
    "FACELIFT_RIG",
    "FACELIFT_VIEW_ORDER",
    "SOURCES",
    "TEMPLATE_FIELDS",
    "ViewEmbeddingShapeError",
    "ViewEmbeddings",
    "check_embeddings_fit",
    "check_same_rig",
    "elevation_words",
    "encode_prompts",
    "facelift_source_rig",
    "is_embeddings_file",
    "load_facelift_embeds",
    "nearest_views_by_azimuth",
    "text_view_embeddings",
    "view_prompts",
    "views_by_direction",
]
