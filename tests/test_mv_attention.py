"""Multi-view attention processors: views really talk, in exactly the pattern each mode promises."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from lightning_modules.diffusion.mv_attention import (
    MultiViewAttnProcessor,
    install_multiview_attention,
    multiview_attention_mode,
    remove_multiview_attention,
)
from lightning_modules.diffusion.pretrained import scratch_unet_config

V, N, C = 4, 5, 16  # views, tokens per view, channels


def _attention(processor) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=C, heads=2, dim_head=8)
    attn.set_processor(processor)
    return attn.eval()


def _views_changed(attn: Attention, changed_view: int, scenes: int = 2) -> torch.Tensor:
    """Which views of scene 1 change their output when ``changed_view``'s input of scene 1 changes -> [V] bool."""
    torch.manual_seed(1)
    x = torch.randn(scenes * V, N, C)
    y = x.clone()
    y[V + changed_view] += torch.randn(N, C)  # scene 1, one view
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert torch.equal(a[:V], b[:V]), "another scene's output changed: scenes must never attend to each other"
    return (a[V:] - b[V:]).abs().amax(dim=(1, 2)) > 1e-6


def _reference_attention(attn: Attention, x: torch.Tensor, keys_of) -> torch.Tensor:
    """Naive softmax attention where view i of a scene attends to the concatenation of views keys_of(i)."""
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    h, d = attn.heads, C // attn.heads
    out = torch.empty_like(q)
    for s in range(x.shape[0] // V):
        for i in range(V):
            idx = [s * V + j for j in keys_of(i)]
            qi = q[s * V + i].view(N, h, d).transpose(0, 1)
            ki = torch.cat([k[j] for j in idx]).view(-1, h, d).transpose(0, 1)
            vi = torch.cat([v[j] for j in idx]).view(-1, h, d).transpose(0, 1)
            w = torch.softmax(qi @ ki.transpose(-1, -2) * d**-0.5, dim=-1)
            out[s * V + i] = (w @ vi).transpose(0, 1).reshape(N, C)
    return attn.to_out[1](attn.to_out[0](out))


def test_views_are_independent_without_the_multiview_processor():
    attn = _attention(AttnProcessor2_0())
    changed = _views_changed(attn, changed_view=2)
    assert changed.tolist() == [False, False, True, False]


def test_joint_mode_lets_every_view_see_every_other_view():
    attn = _attention(MultiViewAttnProcessor(V, "joint"))
    for view in range(V):
        assert _views_changed(attn, view).all()


def test_sparse_mode_links_each_view_to_the_first_view_only():
    attn = _attention(MultiViewAttnProcessor(V, "sparse"))
    assert _views_changed(attn, changed_view=0).all()  # the first view reaches everyone
    # a non-first view changes only itself: view 2's input does not reach views 1 or 3
    assert _views_changed(attn, changed_view=2).tolist() == [False, False, True, False]


@pytest.mark.parametrize("mode,keys_of", [
    ("joint", lambda i: list(range(V))),
    ("sparse", lambda i: [0, i]),  # keys/values = [first view, own view] (FaceLift's layout)
])
def test_processor_matches_naive_attention_over_the_promised_views(mode, keys_of):
    attn = _attention(MultiViewAttnProcessor(V, mode))
    x = torch.randn(2 * V, N, C)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference_attention(attn, x, keys_of), rtol=1e-4, atol=1e-5)


def test_batch_not_a_multiple_of_num_views_is_refused():
    attn = _attention(MultiViewAttnProcessor(V, "joint"))
    with pytest.raises(ValueError, match="multiple of num_views"):
        attn(torch.randn(V + 1, N, C))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="sparse"):
        MultiViewAttnProcessor(V, "full")


def test_install_replaces_only_self_attention_of_the_unet_and_views_talk_through_it():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**scratch_unet_config(in_channels=8, sample_size=8, cross_attention_dim=8,
                                                   image_embed_dim=4, width=16)).eval()
    n = install_multiview_attention(unet, num_views=3, mode="sparse")
    procs = unet.attn_processors
    assert n == sum(k.endswith("attn1.processor") for k in procs) > 0
    assert all(isinstance(p, MultiViewAttnProcessor) == k.endswith("attn1.processor") for k, p in procs.items())
    assert multiview_attention_mode(unet) == "sparse"

    x = torch.randn(3, 8, 8, 8)
    y = x.clone()
    y[0] += 1.0  # change the first view only
    ctx, cls = torch.randn(3, 2, 8), torch.randn(3, 8)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return unet(x, 10, ctx, class_labels=cls).sample, unet(y, 10, ctx, class_labels=cls).sample

    a, b = run()
    assert (a[2] - b[2]).abs().max() > 1e-5  # view 2 sees view 0
    remove_multiview_attention(unet)
    assert multiview_attention_mode(unet) is None
    a, b = run()
    torch.testing.assert_close(a[1:], b[1:])  # processor off: views independent


def test_sparse_keys_are_the_first_view_then_the_own_view_of_each_scene():
    from lightning_modules.diffusion.mv_attention import sparse_keys

    v, n = 3, 4
    x = torch.randn(2 * v, n, 2, 5).transpose(1, 2)  # [(B V), H, N, d] as the processor makes it (not contiguous)
    keys = sparse_keys(x, v)
    assert keys.shape == (2 * v, 2, 2 * n, 5)
    for row in range(2 * v):
        first = (row // v) * v
        assert torch.equal(keys[row], torch.cat([x[first], x[row]], dim=1)), row
