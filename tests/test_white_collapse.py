"""The white-background collapse of a GS-LRM (run F, 2026-12-07, H100: the Phase-2 GS-LRM's gradient norm fell to
exactly 0 at step ~250, just after its warm-up reached lr 4e-4, and it rendered every view white from then on).

FaceLift's colour head is ``clamp(C0 sh + 0.5, 0, 1)``. Gaussians whose colour is pushed past 1 are white and get no
colour gradient; over a white background a white Gaussian changes no pixel whatever its opacity, position or size,
so none of those get a gradient either: the state absorbs. Over any other background the same Gaussians are
visible, and their opacities, positions and sizes get gradients again (docs/results.md, run F)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.procedural import make_scene
from geometry.render import Gaussians, rasterize

RIG, SIZE = "mouse_oblique20_6view", 24


def _grads(background: torch.Tensor) -> dict[str, float]:
    """Largest gradient of each field of 256 white-saturated, opaque Gaussians spread over scene 0, against the scene's
    views composited over ``background`` [3], rendered over the same background."""
    s = make_scene(0, RIG, num_views=6, size=SIZE)
    target = s["images"] * s["alpha"] + (1.0 - s["alpha"]) * background[:, None, None]
    gen = torch.Generator().manual_seed(0)
    n = 256
    fields = {
        "means": ((torch.rand(1, n, 3, generator=gen) * 2 - 1) * 0.8),
        "log_scales": torch.full((1, n, 3), -2.0),
        "opacity_logits": torch.full((1, n), 1.0),
        "sh0": torch.full((1, n, 3), 3.0),  # C0 * 3 + 0.5 = 1.35: past the clamp, white
    }
    for t in fields.values():
        t.requires_grad_(True)
    quats = torch.nn.functional.normalize(torch.randn(1, n, 4, generator=gen), dim=-1)
    g = Gaussians.from_sh0(fields["means"], quats, fields["log_scales"].exp(), fields["opacity_logits"].sigmoid(),
                           fields["sh0"])
    out = rasterize(g, s["c2w"][None], s["fxfycxcy"][None], SIZE, SIZE, background=background, backend="torch")
    assert float(out["alpha"].detach().mean()) > 0.1  # the Gaussians cover much of every view
    loss = F.mse_loss(out["rgb"][0], target)
    assert float(loss.detach()) > 1e-3  # the mouse is not rendered: there is something to learn
    grads = torch.autograd.grad(loss, list(fields.values()))
    return {name: float(gr.abs().max()) for name, gr in zip(fields, grads)}


def test_white_gaussians_over_a_white_background_get_no_gradient_at_all():
    grads = _grads(torch.ones(3))
    assert max(grads.values()) < 1e-6, grads


def test_over_a_coloured_background_the_same_gaussians_get_gradients_except_their_clamped_colour():
    grads = _grads(torch.tensor([0.2, 0.5, 0.8]))
    assert grads["sh0"] == 0.0, grads  # the clamp still holds the colour
    for name in ("means", "log_scales", "opacity_logits"):
        assert grads[name] > 1e-4, grads
