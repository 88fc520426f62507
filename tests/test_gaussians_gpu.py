"""gsplat (CUDA) against the torch reference on the same scene: same image, finite gradients. Runs on the device."""

from __future__ import annotations

import pytest
import torch

from geometry.render import Gaussians, gsplat_available, rasterize, resolve_backend
from geometry.rig import load_rig

pytestmark = pytest.mark.gpu

needs_gsplat = pytest.mark.skipif(not torch.cuda.is_available() or not gsplat_available(),
                                  reason="needs CUDA and gsplat (pip install gsplat)")


def random_scene(n: int = 400, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.35,
        quats=torch.randn(1, n, 4, generator=g),
        scales=torch.rand(1, n, 3, generator=g) * 0.06 + 0.01,
        opacities=torch.rand(1, n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(1, n, 3, generator=g),
    ).to("cuda")


def render_both(g: Gaussians, size: int = 128, views: int = 2) -> tuple[dict, dict, Gaussians, Gaussians]:
    c2w, k = load_rig("mouse_oblique20_6view").cameras(size, device="cuda")
    c2w, k = c2w[None, :views], k[None, :views]
    bg = torch.tensor([0.2, 0.5, 0.8], device="cuda")
    leaves = []
    outs = []
    for backend in ("torch", "gsplat"):
        leaf = Gaussians(*(t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities,
                                                                    g.colors)))
        outs.append(rasterize(leaf, c2w, k, size, size, bg, backend=backend))
        leaves.append(leaf)
    return outs[0], outs[1], leaves[0], leaves[1]


@needs_gsplat
def test_auto_backend_picks_gsplat_for_cuda_tensors():
    assert resolve_backend("auto", torch.device("cuda")) == "gsplat"


@needs_gsplat
def test_gsplat_and_torch_backends_render_the_same_image():
    ref, gs, _, _ = render_both(random_scene())
    rgb_diff = (ref["rgb"] - gs["rgb"]).abs().mean().item()
    alpha_diff = (ref["alpha"] - gs["alpha"]).abs().mean().item()
    print(f"mean |torch - gsplat|: rgb {rgb_diff:.2e}, alpha {alpha_diff:.2e}")
    assert ref["alpha"].mean().item() > 0.05  # the scene is actually in view
    assert rgb_diff <= 1e-3 and alpha_diff <= 1e-3
    covered = (ref["alpha"] > 0.5) & (gs["alpha"] > 0.5)
    assert torch.allclose(ref["depth"][covered], gs["depth"][covered], atol=2e-2)


@needs_gsplat
def test_both_backends_give_finite_matching_gradients():
    ref, gs, leaf_t, leaf_g = render_both(random_scene(seed=1))
    target = torch.rand_like(ref["rgb"])
    for out in (ref, gs):
        ((out["rgb"] - target) ** 2).mean().add(out["alpha"].mean()).backward()
    for name in ("means", "quats", "scales", "opacities", "colors"):
        gt, gg = getattr(leaf_t, name).grad, getattr(leaf_g, name).grad
        assert gt is not None and gg is not None, name
        assert torch.isfinite(gt).all() and torch.isfinite(gg).all(), name
        cos = torch.nn.functional.cosine_similarity(gt.flatten(), gg.flatten(), dim=0).item()
        print(f"grad {name}: cosine(torch, gsplat) = {cos:.4f}")
        assert cos > 0.9, (name, cos)
