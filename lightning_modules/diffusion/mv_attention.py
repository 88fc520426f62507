"""Multi-view self-attention as diffusers attention processors (SDPA, no xformers).

The views of a scene are folded into the batch in rig order: hidden states arrive as [(B V), N, C] with the V views
of scene b at rows b*V .. b*V+V-1. Two modes, chosen explicitly and never switched behind the caller's back:

- ``sparse``: every view's queries attend to keys/values = [first view's tokens, own tokens] ([(B V), 2N, C]).
  This is the layout FaceLift's released weights were trained and sampled with (for the first view the two halves
  are the same tokens, which leaves softmax attention unchanged).
- ``joint``: every view attends to all V views' tokens (keys/values [B, V*N, C]); computed as one attention over
  the scene's V*N tokens, without repeating keys per view.

Only the self-attention (``attn1``) of each transformer block is replaced; cross-attention keeps diffusers' SDPA
processor.

Example:
    >>> import torch
    >>> from diffusers.models.attention_processor import Attention
    >>> attn = Attention(query_dim=16, heads=2, dim_head=8)
    >>> attn.set_processor(MultiViewAttnProcessor(num_views=3, mode="joint"))
    >>> attn(torch.randn(6, 5, 16)).shape  # 2 scenes x 3 views, 5 tokens each
    torch.Size([6, 5, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

MODES = ("sparse", "joint")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known multi-view attention mode, else raise ValueError."""
    if mode not in MODES:
        raise ValueError(f"multi-view attention mode must be one of {MODES}, got {mode!r}")
    return mode


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[N, L, heads*d] -> [N, heads, L, d]."""
    n, length, inner = x.shape
    return x.view(n, length, heads, inner // heads).transpose(1, 2)


def sparse_keys(x: Tensor, num_views: int) -> Tensor:
    """Keys/values of the ``sparse`` mode: x [(B V), H, N, d] -> [(B V), H, 2N, d] = [first view of the scene, own]."""
    bv, h, n, d = x.shape
    scenes = x.view(bv // num_views, num_views, h, n, d)
    first = scenes[:, :1].expand(-1, num_views, -1, -1, -1)  # a view: the cat below is the only copy
    return torch.cat([first, scenes], dim=3).view(bv, h, 2 * n, d)


def multiview_sdpa(query: Tensor, key: Tensor, value: Tensor, num_views: int, mode: str,
                   scale: float | None = None) -> Tensor:
    """Attention over the views of each scene.

    query, key, value: [(B V), H, N, d] (views folded in the batch, rig order) -> [(B V), H, N, d].
    """
    bv, h, n, d = query.shape
    if bv % num_views:
        raise ValueError(f"multi-view attention: batch {bv} is not a multiple of num_views={num_views} "
                         "(views must be folded into the batch as (scene, view))")
    if mode == "sparse":
        return F.scaled_dot_product_attention(query, sparse_keys(key, num_views), sparse_keys(value, num_views),
                                              scale=scale)
    if mode == "joint":
        b = bv // num_views

        def scene_tokens(x: Tensor) -> Tensor:  # [(B V), H, N, d] -> [B, H, V*N, d]
            return x.view(b, num_views, h, n, d).permute(0, 2, 1, 3, 4).reshape(b, h, num_views * n, d)

        out = F.scaled_dot_product_attention(scene_tokens(query), scene_tokens(key), scene_tokens(value), scale=scale)
        return out.view(b, h, num_views, n, d).permute(0, 2, 1, 3, 4).reshape(bv, h, n, d)
    raise ValueError(f"multi-view attention mode must be one of {MODES}, got {mode!r}")


class MultiViewAttnProcessor:
    """diffusers attention processor for self-attention across the views of a scene (see module docstring).

    Call signature as diffusers' processors: hidden_states [(B V), N, C] or [(B V), C, H, W]. Attention masks and
    encoder hidden states are refused (this processor is for ``attn1`` self-attention only).
    """

    def __init__(self, num_views: int, mode: str = "sparse"):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.num_views = int(num_views)
        self.mode = check_mode(mode)

    def __repr__(self) -> str:
        return f"MultiViewAttnProcessor(num_views={self.num_views}, mode={self.mode!r})"

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("MultiViewAttnProcessor is for self-attention (attn1); got encoder_hidden_states")
        if attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor does not support attention masks")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(hidden_states), attn.heads)
        value = _split_heads(attn.to_v(hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = multiview_sdpa(query, key, value, self.num_views, self.mode, scale=attn.scale)
        bv, h, n, d = out.shape
        hidden_states = out.transpose(1, 2).reshape(bv, n, h * d).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def self_attention_names(model: nn.Module) -> list[str]:
    """Processor keys (``...attn1.processor``) of the self-attention layers of a diffusers model's
    transformer blocks."""
    return [k for k in model.attn_processors if k.endswith("attn1.processor")]


def install_multiview_attention(model: nn.Module, num_views: int, mode: str) -> int:
    """Make every transformer-block self-attention (attn1) of ``model`` (a diffusers UNet) multi-view; every other
    attention gets diffusers' SDPA processor. Returns the number of multi-view layers (0 raises)."""
    check_mode(mode)
    names = set(self_attention_names(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no transformer self-attention (attn1) layers")
    processors = {k: (MultiViewAttnProcessor(num_views, mode) if k in names else AttnProcessor2_0())
                  for k in model.attn_processors}
    model.set_attn_processor(processors)
    return len(names)


def remove_multiview_attention(model: nn.Module) -> None:
    """Give every attention layer of ``model`` diffusers' plain SDPA processor (views independent)."""
    model.set_attn_processor(AttnProcessor2_0())


def multiview_attention_mode(model: nn.Module) -> str | None:
    """The multi-view mode installed on ``model`` ("sparse" / "joint"), None when none is; mixed modes raise."""
    modes = {p.mode for p in model.attn_processors.values() if isinstance(p, MultiViewAttnProcessor)}
    if len(modes) > 1:
        raise ValueError(f"mixed multi-view attention modes installed: {sorted(modes)}")
    return modes.pop() if modes else None


__all__ = [
    "MODES", "MultiViewAttnProcessor", "check_mode", "install_multiview_attention", "multiview_attention_mode",
    "multiview_sdpa", "remove_multiview_attention", "self_attention_names", "sparse_keys",
]
