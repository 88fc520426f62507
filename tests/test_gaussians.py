"""The torch rasterizer against analytic cases and finite differences; the Gaussians container; PLY I/O; turntables."""

from __future__ import annotations

import ast
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.cameras import look_at, project_points
from geometry.render import (
    PLY_PROPERTIES,
    SH_C0,
    Gaussians,
    gsplat_available,
    load_ply,
    rasterize,
    render_turntable,
    resolve_backend,
    save_ply,
    save_scene_ply,
    turntable_cameras,
    write_gif,
)
from geometry.render.torch_rasterizer import ALPHA_MAX, EPS2D
from geometry.rig import load_rig

FRONT = torch.tensor([0.0, -2.7, 0.0])
Z_UP = torch.tensor([0.0, 0.0, 1.0])


def front_camera(size: int, focal: float, dtype=torch.float64, offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A camera at (0, -2.7, 0) looking at the origin: (c2w [1, 1, 4, 4], fxfycxcy [1, 1, 4]).

    With ``offset`` 0.5 the origin projects onto the centre of pixel (size/2, size/2)."""
    c2w = look_at(FRONT.to(dtype), torch.zeros(3, dtype=dtype), Z_UP.to(dtype))
    k = torch.tensor([focal, focal, size / 2 + offset, size / 2 + offset], dtype=dtype)
    return c2w[None, None], k[None, None]


def make_gaussians(means, scales, opacities, colors, quats=None, dtype=torch.float64) -> Gaussians:
    means = torch.as_tensor(means, dtype=dtype).reshape(1, -1, 3)
    n = means.shape[1]
    scales = torch.as_tensor(scales, dtype=dtype).reshape(1, n, -1).expand(1, n, 3).clone()
    quats = torch.tensor([1.0, 0, 0, 0], dtype=dtype).expand(1, n, 4).clone() if quats is None else \
        torch.as_tensor(quats, dtype=dtype).reshape(1, n, 4)
    return Gaussians(means, quats, scales, torch.as_tensor(opacities, dtype=dtype).reshape(1, n),
                     torch.as_tensor(colors, dtype=dtype).reshape(1, n, 3))


def random_gaussians(b: int, n: int, seed: int = 0, dtype=torch.float32, spread: float = 0.4) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(b, n, 3, generator=g, dtype=dtype) * spread,
        quats=torch.randn(b, n, 4, generator=g, dtype=dtype),
        scales=torch.rand(b, n, 3, generator=g, dtype=dtype) * 0.05 + 0.01,
        opacities=torch.rand(b, n, generator=g, dtype=dtype) * 0.9 + 0.05,
        colors=torch.rand(b, n, 3, generator=g, dtype=dtype),
    )


# ---- analytic cases -------------------------------------------------------------------------------------------------
def test_isotropic_gaussian_peaks_at_projected_mean_with_opacity_and_projected_width():
    size, focal, s, opac = 32, 40.0, 0.1, 0.7
    c2w, k = front_camera(size, focal)
    g = make_gaussians([0.0, 0.0, 0.0], [s], [opac], [1.0, 0.5, 0.25])
    out = rasterize(g, c2w, k, size, size, torch.zeros(3, dtype=torch.float64), backend="torch")
    alpha = out["alpha"][0, 0, 0]
    peak = torch.nonzero(alpha == alpha.max())
    assert peak.tolist() == [[size // 2, size // 2]]
    assert alpha.max().item() == pytest.approx(opac, abs=1e-9)
    # EWA: projected std = f * s / z, plus the 0.3 px^2 low-pass, in both image directions
    var = (focal * s / 2.7) ** 2 + EPS2D
    for d in (1, 2, 3):
        expect = opac * math.exp(-0.5 * d * d / var)
        assert alpha[size // 2, size // 2 + d].item() == pytest.approx(expect, rel=1e-6)
        assert alpha[size // 2 + d, size // 2].item() == pytest.approx(expect, rel=1e-6)
    # straight colour where the Gaussian is, black background elsewhere
    rgb = out["rgb"][0, 0]
    assert torch.allclose(rgb[:, size // 2, size // 2], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) * opac)


def test_footprint_centroid_is_the_projected_mean_of_an_off_centre_gaussian():
    size, focal = 48, 50.0
    c2w, k = front_camera(size, focal, offset=0.0)
    mean = torch.tensor([[0.31, 0.2, -0.17]], dtype=torch.float64)
    g = make_gaussians(mean, [0.08], [0.9], [1.0, 1.0, 1.0])
    alpha = rasterize(g, c2w, k, size, size, None, backend="torch")["alpha"][0, 0, 0]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                            torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
    centroid = torch.stack([(alpha * xs).sum(), (alpha * ys).sum()]) / alpha.sum()
    uv, depth = project_points(mean, c2w[0, 0], k[0, 0])
    assert torch.allclose(centroid, uv[0], atol=0.02), (centroid, uv)
    assert 2.7 < depth.item() < 2.95


def test_anisotropic_gaussian_is_elongated_along_its_rotated_axis():
    size, focal = 32, 40.0
    c2w, k = front_camera(size, focal)
    half = math.sqrt(0.5)  # 90 degrees about the camera's optical axis (world y): x-long becomes z-long
    wide = make_gaussians([0.0, 0.0, 0.0], [[0.3, 0.02, 0.02]], [0.9], [1.0, 1.0, 1.0])
    tall = make_gaussians([0.0, 0.0, 0.0], [[0.3, 0.02, 0.02]], [0.9], [1.0, 1.0, 1.0], quats=[half, 0, half, 0])
    a_wide = rasterize(wide, c2w, k, size, size, None, backend="torch")["alpha"][0, 0, 0]
    a_tall = rasterize(tall, c2w, k, size, size, None, backend="torch")["alpha"][0, 0, 0]
    assert (a_wide[size // 2] > 0.1).sum() > 3 * (a_wide[:, size // 2] > 0.1).sum()  # wide along image rows
    assert torch.allclose(a_tall, a_wide.T, atol=1e-6)


def test_front_gaussian_occludes_back_one_whatever_their_order():
    size, focal = 16, 30.0
    c2w, k = front_camera(size, focal)
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    front = ([0.0, -0.5, 0.0], red)  # nearer the camera at y = -2.7
    back = ([0.0, 0.5, 0.0], blue)
    bg = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    for order in ((front, back), (back, front)):
        g = make_gaussians([m for m, _ in order], [0.2, 0.2], [0.95, 0.95], [c for _, c in order])
        out = rasterize(g, c2w, k, size, size, bg, backend="torch")
        pix = out["rgb"][0, 0, :, size // 2, size // 2]
        a = 0.95
        expect = a * torch.tensor(red, dtype=torch.float64) + (1 - a) * a * torch.tensor(blue, dtype=torch.float64) \
            + (1 - a) ** 2 * bg
        assert torch.allclose(pix, expect, atol=1e-9), (order, pix)
        assert out["alpha"][0, 0, 0, size // 2, size // 2].item() == pytest.approx(1 - (1 - a) ** 2)
        # expected depth: weights a and (1 - a) a on depths 2.2 and 3.2
        depth = (a * 2.2 + (1 - a) * a * 3.2) / (a + (1 - a) * a)
        assert out["depth"][0, 0, 0, size // 2, size // 2].item() == pytest.approx(depth, rel=1e-6)


def test_background_shows_where_nothing_is_and_depth_is_zero_there():
    size = 32
    c2w, k = front_camera(size, 40.0)
    g = make_gaussians([0.0, 0.0, 0.0], [0.05], [0.9], [1.0, 0.0, 0.0])
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    out = rasterize(g, c2w, k, size, size, bg, backend="torch")
    corner = (slice(0, 6), slice(0, 6))
    assert torch.equal(out["alpha"][0, 0, 0][corner], torch.zeros(6, 6, dtype=torch.float64))
    assert torch.allclose(out["rgb"][0, 0][(slice(None),) + corner], bg[:, None, None].expand(3, 6, 6))
    assert torch.equal(out["depth"][0, 0, 0][corner], torch.zeros(6, 6, dtype=torch.float64))
    assert out["depth"][0, 0, 0, size // 2, size // 2].item() == pytest.approx(2.7)


def test_gaussians_behind_the_near_plane_are_not_drawn():
    size = 16
    c2w, k = front_camera(size, 20.0)
    g = make_gaussians([[0.0, -3.0, 0.0], [0.0, -2.695, 0.0]], [0.1, 0.1], [0.9, 0.9], [[1.0, 1, 1]] * 2)
    out = rasterize(g, c2w, k, size, size, None, backend="torch", near=0.01)
    assert out["alpha"].abs().max().item() == 0.0


def test_opacity_is_clamped_and_compositing_stops_at_low_transmittance():
    size = 8
    c2w, k = front_camera(size, 10.0)
    g = make_gaussians([[0.0, 0.0, 0.0]], [0.5], [1.0], [[1.0, 1.0, 1.0]])
    out = rasterize(g, c2w, k, size, size, None, backend="torch")
    assert out["alpha"][0, 0, 0, size // 2, size // 2].item() == pytest.approx(ALPHA_MAX)
    stack = make_gaussians([[0.0, 0.1 * i, 0.0] for i in range(4)], [0.5] * 4, [1.0] * 4, [[1.0, 1.0, 1.0]] * 4)
    alpha = rasterize(stack, c2w, k, size, size, None, backend="torch")["alpha"][0, 0, 0, size // 2, size // 2]
    # 0.999 then 0.999 * 0.001 ... the second brings T to 1e-6 <= 1e-4, so it and all behind are skipped
    assert alpha.item() == pytest.approx(ALPHA_MAX)


def test_batches_views_and_per_scene_backgrounds_render_independently():
    size = 16
    c2w1, k1 = front_camera(size, 20.0, dtype=torch.float32)
    side = look_at(torch.tensor([2.7, 0.0, 0.0]), torch.zeros(3), Z_UP)
    c2w = torch.cat([c2w1, side[None, None]], 1).expand(2, 2, 4, 4).clone()
    k = k1.expand(2, 2, 4).clone()
    g = random_gaussians(2, 40, spread=0.2)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = rasterize(g, c2w, k, size, size, bg, backend="torch")
    assert out["rgb"].shape == (2, 2, 3, size, size) and out["alpha"].shape == (2, 2, 1, size, size)
    for b in range(2):
        for v in range(2):
            one = rasterize(g.select(b), c2w[b: b + 1, v: v + 1], k[b: b + 1, v: v + 1], size, size, bg[b],
                            backend="torch")
            for key in ("rgb", "alpha", "depth"):
                assert torch.allclose(out[key][b, v], one[key][0, 0], atol=1e-6)
    assert not torch.allclose(out["rgb"][0, 0], out["rgb"][1, 0])


def test_gradients_match_finite_differences():
    size = 8
    c2w, k = front_camera(size, 12.0)
    g = make_gaussians([[0.05, -0.1, 0.02], [-0.1, 0.2, 0.1], [0.15, 0.0, -0.12]],
                       [[0.12, 0.2, 0.15], [0.25, 0.2, 0.2], [0.18, 0.1, 0.22]], [0.6, 0.7, 0.5],
                       [[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.3, 0.3, 0.9]],
                       quats=[[0.9, 0.1, 0.3, -0.2], [1.0, 0.0, 0.0, 0.0], [0.7, -0.4, 0.2, 0.5]])
    bg = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)]
    gen = torch.Generator().manual_seed(0)
    weights = [torch.rand(1, 1, c, size, size, generator=gen, dtype=torch.float64) for c in (3, 1, 1)]

    def render(means, quats, scales, opacities, colors):  # fixed random projections of every pixel's outputs
        out = rasterize(Gaussians(means, quats, scales, opacities, colors), c2w, k, size, size, bg, backend="torch")
        return tuple((out[key] * w).sum() for key, w in zip(("rgb", "alpha", "depth"), weights))

    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_per_pixel_gaussians_of_a_small_gslrm_render_with_bounded_memory():
    from geometry.rig import load_rig

    c2w, k = load_rig("facelift_6view").cameras(32)
    g = random_gaussians(1, 4 * 32 * 32, seed=3)
    for name in ("means", "scales", "opacities", "colors"):
        getattr(g, name).requires_grad_(True)
    out = rasterize(g, c2w[None, :4], k[None, :4], 32, 32, torch.ones(3), backend="torch")
    (out["rgb"].mean() + out["alpha"].mean()).backward()
    assert out["rgb"].shape == (1, 4, 3, 32, 32)
    assert 0.2 < out["alpha"].mean().item() < 1.0
    assert torch.isfinite(g.means.grad).all() and g.means.grad.abs().sum() > 0


# ---- backends -------------------------------------------------------------------------------------------------------
def test_auto_backend_is_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("cuda", torch.device("cpu"))


def test_gsplat_backend_without_gsplat_gives_a_clear_error():
    if gsplat_available():
        pytest.skip("gsplat is installed here; the error path cannot be exercised")
    c2w, k = front_camera(8, 10.0, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="needs the gsplat package"):
        rasterize(random_gaussians(1, 3), c2w, k, 8, 8, None, backend="gsplat")


def test_bad_shapes_are_reported_by_name():
    c2w, k = front_camera(8, 10.0, dtype=torch.float32)
    g = random_gaussians(1, 3)
    with pytest.raises(ValueError, match="c2w must be"):
        rasterize(g, c2w[0], k, 8, 8)
    with pytest.raises(ValueError, match="fxfycxcy must be"):
        rasterize(g, c2w, k[..., :3], 8, 8)
    bad = Gaussians(g.means, g.quats, g.scales, g.opacities[:, :2], g.colors)
    with pytest.raises(ValueError, match="opacities must be"):
        rasterize(bad, c2w, k, 8, 8)


# ---- container ----------------------------------------------------------------------------------------------------
def test_gaussians_select_cat_detach_and_to():
    g = random_gaussians(3, 5)
    assert g.select(1).batch_size == 1 and torch.equal(g.select(1).means[0], g.means[1])
    both = Gaussians.cat([g, g], dim=1)
    assert both.num_gaussians == 10 and torch.equal(both.colors[:, 5:], g.colors)
    assert Gaussians.cat([g.select(0), g.select(2)], dim=0).batch_size == 2
    d = g.to(torch.float64).detach()
    assert d.dtype == torch.float64 and not d.means.requires_grad
    assert g.subset(torch.tensor([0, 4])).num_gaussians == 2


def test_sh0_colours_render_like_the_same_rgb():
    g = random_gaussians(2, 40, seed=3, dtype=torch.float64)
    sh0 = (g.colors - 0.5) / SH_C0  # 3DGS's f_dc of these colours
    from_sh = Gaussians.from_sh0(g.means, g.quats, g.scales, g.opacities, sh0)
    assert torch.allclose(from_sh.colors, g.colors, atol=1e-12)
    c2w, k = front_camera(24, 30.0)
    c2w, k = c2w.expand(2, 1, 4, 4), k.expand(2, 1, 4)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    want = rasterize(g, c2w, k, 24, 24, bg, backend="torch")
    got = rasterize(from_sh, c2w, k, 24, 24, bg, backend="torch")
    assert want["alpha"].max() > 0.5  # the scene is in view
    for key in ("rgb", "alpha", "depth"):
        assert torch.allclose(got[key], want[key], atol=1e-10), key
    assert torch.equal(Gaussians.from_sh0(g.means, g.quats, g.scales, g.opacities, torch.full_like(sh0, 5.0)).colors,
                       torch.ones_like(sh0))  # out-of-range SH is clamped to valid RGB


# ---- PLY --------------------------------------------------------------------------------------------------------
def test_ply_round_trip_keeps_every_attribute(tmp_path):
    g = random_gaussians(1, 50, seed=7)
    g = Gaussians(g.means, torch.nn.functional.normalize(g.quats, dim=-1), g.scales, g.opacities, g.colors)
    path = save_ply(tmp_path / "scene.ply", g)
    back = load_ply(path)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(back, name), getattr(g, name), atol=1e-5, rtol=1e-5), name
    assert not list(tmp_path.glob(".*.tmp"))  # written via a temporary file, nothing left behind


def test_ply_header_is_the_standard_3dgs_layout(tmp_path):
    g = random_gaussians(1, 4)
    path = save_ply(tmp_path / "s.ply", g, sh_degree=0)  # no f_rest (tests/test_ply.py: the padded default)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 4"]
    assert [ln.split()[-1] for ln in lines[3:]] == list(PLY_PROPERTIES)
    assert all(ln.startswith("property float ") for ln in lines[3:])
    assert len(body) == 4 * 17 * 4
    first = struct.unpack("<17f", body[:68])
    assert first[6] == pytest.approx((g.colors[0, 0, 0].item() - 0.5) / SH_C0, rel=1e-5)  # f_dc_0
    o = g.opacities[0, 0].item()
    assert first[9] == pytest.approx(math.log(o / (1 - o)), rel=1e-4)  # opacity as logit
    assert first[10] == pytest.approx(math.log(g.scales[0, 0, 0].item()), rel=1e-5)  # scale as log


def test_ply_with_extra_attributes_from_a_3dgs_trainer_loads(tmp_path):
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3)] + \
        ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    header = "ply\nformat binary_little_endian 1.0\ncomment from a trainer\nelement vertex 2\n" + \
        "".join(f"property float {n}\n" for n in names) + "end_header\n"
    row = [0.1, 0.2, 0.3, 0, 0, 0, 0.0, 0.0, 0.0, 9, 9, 9, 0.0, math.log(0.05), math.log(0.05), math.log(0.05),
           1.0, 0.0, 0.0, 0.0]
    path = tmp_path / "trainer.ply"
    path.write_bytes(header.encode() + struct.pack("<20f", *row) * 2)
    g = load_ply(path)
    assert g.means.shape == (1, 2, 3)
    assert torch.allclose(g.colors, torch.full((1, 2, 3), 0.5))
    assert torch.allclose(g.opacities, torch.full((1, 2), 0.5))
    assert torch.allclose(g.scales, torch.full((1, 2, 3), 0.05))


def test_bad_ply_files_are_named_in_the_error(tmp_path):
    path = tmp_path / "broken.ply"
    path.write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="broken.ply"):
        load_ply(path)
    good = save_ply(tmp_path / "cut.ply", random_gaussians(1, 5))
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="cut.ply.*truncated"):
        load_ply(good)
    with pytest.raises(ValueError, match="one scene"):
        save_ply(tmp_path / "two.ply", random_gaussians(2, 5))


def test_non_square_images_of_any_size_are_crops_of_a_larger_render():
    g = random_gaussians(1, 60, seed=5, spread=0.25)
    c2w, k = front_camera(30, 36.0, dtype=torch.float32, offset=0.0)
    full = rasterize(g, c2w, k, 30, 30, torch.ones(3), backend="torch")
    k_crop = k.clone()
    k_crop[..., 2] -= 3.0  # crop columns 3..22 (width 19)
    k_crop[..., 3] -= 7.0  # and rows 7..19 (height 13)
    crop = rasterize(g, c2w, k_crop, 13, 19, torch.ones(3), backend="torch")
    for key in ("rgb", "alpha", "depth"):
        assert torch.allclose(crop[key], full[key][..., 7:20, 3:22], atol=1e-5), key


# ---- turntable ----------------------------------------------------------------------------------------------------
def test_turntable_circles_the_rig_up_axis_and_writes_gif_and_ply(tmp_path):
    rig = load_rig("mouse_oblique20_6view")
    c2w, _ = turntable_cameras(rig, 8, 32)
    centres = c2w[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((8,), rig.radius), atol=1e-4)
    assert torch.allclose(centres[:, 2], centres[:1, 2].expand(8), atol=1e-5)  # constant height on a Z-up rig
    g = Gaussians(means=torch.randn(1, 64, 3) * 0.3, quats=torch.tensor([1.0, 0, 0, 0]).expand(1, 64, 4),
                  scales=torch.full((1, 64, 3), 0.05), opacities=torch.full((1, 64), 0.8),
                  colors=torch.rand(1, 64, 3))
    frames = render_turntable(g, rig, num_frames=4, size=24, backend="torch")
    assert frames.shape == (4, 24, 24, 3) and frames.dtype == np.uint8
    assert frames.min() < 255  # something was drawn over the white background
    assert write_gif(frames, tmp_path / "t.gif").stat().st_size > 0
    back = load_ply(save_scene_ply(g, tmp_path / "g.ply"))  # save_ply(path, gaussians), the documented order
    assert torch.allclose(back.means.reshape(-1, 3), g.means[0], atol=1e-6)


# ---- package --------------------------------------------------------------------------------------------------------
def test_render_imports_only_geometry_of_this_code_base():
    """Data (the procedural generator) and models (GS-LRM) both import geometry.render, so it imports neither."""
    ours = {"lightning_modules", "datamodules", "callbacks", "tools", "bench", "configs"}
    for path in sorted((Path(__file__).resolve().parents[1] / "geometry" / "render").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ours], f"{path.name} imports {names}"


def test_the_turntable_render_shows_a_progress_bar_on_a_terminal_only(monkeypatch, capsys):
    """issue 27: the turntable is most of a CPU inference's time and drew no bar."""
    g = Gaussians(means=torch.randn(1, 16, 3) * 0.3, quats=torch.tensor([1.0, 0, 0, 0]).expand(1, 16, 4),
                  scales=torch.full((1, 16, 3), 0.05), opacities=torch.full((1, 16), 0.8), colors=torch.rand(1, 16, 3))
    monkeypatch.setenv("MVLIFT_PROGRESS", "1")  # as on a terminal
    frames = render_turntable(g, "facelift_6view", num_frames=5, size=16, backend="torch", chunk=2)
    err = capsys.readouterr().err
    assert frames.shape[0] == 5 and "turntable" in err and "/5 " in err and "frame" in err
    monkeypatch.setenv("MVLIFT_PROGRESS", "0")  # logs, pipes, CI
    render_turntable(g, "facelift_6view", num_frames=5, size=16, backend="torch", chunk=2)
    assert capsys.readouterr().err == ""
