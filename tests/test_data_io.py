"""Pixel I/O and the transforms that must move intrinsics together with pixels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from datamodules.io import (
    SampleError,
    center_views,
    centering_box,
    composite,
    decode_png,
    normalize_scene_cameras,
    resize_views,
    validate_cameras,
    validate_pixels,
)
from geometry.cameras import look_at, project_points
from geometry.rig import load_rig


def test_16bit_png_decodes_with_all_16_bits(tmp_path):
    import kornia_rs

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(9, 7, 4), dtype=np.uint16)
    kornia_rs.io.write_image_png_u16(str(tmp_path / "a.png"), arr, "rgba")
    out = decode_png((tmp_path / "a.png").read_bytes(), "a.png")
    assert out.dtype == np.uint16 and np.array_equal(out, arr)


def test_bad_png_error_names_the_file():
    with pytest.raises(SampleError, match="views/cam_003.png: not a PNG"):
        decode_png(b"garbage" * 10, "views/cam_003.png")


def test_bad_camera_error_names_scene_and_view():
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 0] = 3.0
    with pytest.raises(SampleError, match=r"sample_7 view 1: camera rotation is not orthonormal"):
        validate_cameras(c2w, torch.tensor([[50.0, 50, 32, 32]] * 2), "sample_7")


def test_image_size_differing_from_the_camera_file_names_the_sample_and_both_sizes(tmp_path):
    from datamodules.dataset import SceneBuilder
    from datamodules.sources import FaceLiftFolderSource
    from tests.test_data_sources import _write_scene

    _write_scene(tmp_path / "data" / "sample_a", 4, 16, 0, 8)  # FaceLift layout: 4 views of 16x16 px
    cam_file = tmp_path / "data" / "sample_a" / "opencv_cameras.json"
    meta = json.loads(cam_file.read_text())
    meta["frames"][2]["h"] = 20  # declare view 2 as 20 (H) x 16 (W)
    cam_file.write_text(json.dumps(meta))
    src = FaceLiftFolderSource("f", "real", path=str(tmp_path / "data"))
    builder = SceneBuilder("reconstruction", load_rig("facelift_6view"), 16, num_views=4, num_input_views=2)
    with pytest.raises(SampleError, match=r"sample_a view 2: image is \(16, 16\) \(H, W\) but the camera file "
                                          r"declares \(20, 16\)"):
        builder.build(src, 0, np.random.default_rng(0))
    meta["frames"][2]["h"] = 16
    cam_file.write_text(json.dumps(meta))
    assert builder.build(src, 0, np.random.default_rng(0))["images"].shape == (4, 3, 16, 16)  # declared = decoded


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_name_the_sample(bad):
    rgb, alpha = torch.rand(3, 3, 8, 8), torch.ones(3, 1, 8, 8)
    validate_pixels(rgb, alpha, "sample_9", 3, [(8, 8)] * 3)  # finite: accepted
    rgb[1, 0, 4, 4] = bad
    with pytest.raises(SampleError, match=r"^sample_9: images have non-finite values"):
        validate_pixels(rgb, alpha, "sample_9", 3, [(8, 8)] * 3)
    rgb[1, 0, 4, 4] = 0.5
    alpha[2, 0, 0, 0] = bad  # a non-finite alpha is as bad
    with pytest.raises(SampleError, match=r"^sample_9: images have non-finite values"):
        validate_pixels(rgb, alpha, "sample_9", 3, None)


def _dot_scene(size: int = 96):
    """Two views of a world point P: a red Gaussian dot centred at P's projection inside an off-centre alpha disk."""
    rig = load_rig("facelift_6view")
    c2w, k = rig.cameras(size)
    c2w, k = c2w[:2], k[:2]
    point = torch.tensor([[0.35, -0.2, 0.3]])
    uv, _ = project_points(point, c2w, k)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rgb = torch.zeros(2, 3, size, size)
    alpha = torch.zeros(2, 1, size, size)
    for v in range(2):
        u0, v0 = uv[v, 0]
        alpha[v, 0] = (((xx - u0) ** 2 + (yy - v0) ** 2) < 12**2).float()
        rgb[v, 0] = torch.exp(-((xx - u0) ** 2 + (yy - v0) ** 2) / (2 * 2.0**2))
    return c2w, k, point, rgb, alpha


def _peak(img: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre (u, v) of the red channel [H, W] in pixel-centre coordinates."""
    h, w = img.shape
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    wgt = img * (img > 0.2 * img.max())
    return torch.stack([(wgt * xx).sum() / wgt.sum(), (wgt * yy).sum() / wgt.sum()])


def test_center_crop_keeps_a_3d_point_on_its_object_pixel():
    c2w, k, point, rgb, alpha = _dot_scene()
    box = centering_box(alpha[0], 0.6)
    side = box[2] - box[0]
    assert math.isclose(side, 24 / 0.6, rel_tol=0.1)  # the object (24 px disk) fills ~0.6 of the crop
    out_rgb, out_alpha, k2 = center_views(rgb * alpha, alpha, k, 64, 0.6)
    uv2, _ = project_points(point, c2w, k2)
    for v in range(2):
        assert torch.allclose(_peak(out_rgb[v, 0]), uv2[v, 0], atol=0.6), v
    # the object is centred in view 0
    ys, xs = torch.nonzero(out_alpha[0, 0] > 0.5, as_tuple=True)
    assert abs((xs.float().mean() + 0.5) - 32) < 1.5 and abs((ys.float().mean() + 0.5) - 32) < 1.5


def test_resize_keeps_a_3d_point_on_its_object_pixel():
    c2w, k, point, rgb, alpha = _dot_scene()
    out_rgb, _, k2 = resize_views(rgb, alpha, k, 48)
    uv2, _ = project_points(point, c2w, k2)
    for v in range(2):
        assert torch.allclose(_peak(out_rgb[v, 0]), uv2[v, 0], atol=0.6)


def test_camera_normalization_keeps_projections_and_sets_radius():
    g = torch.Generator().manual_seed(0)
    eyes = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.4 + torch.tensor([0.0, -3.0, 1.0], dtype=torch.float64)
    eyes[:, :2] = torch.stack([3.1 * torch.cos(torch.arange(5.0)), 2.2 * torch.sin(torch.arange(5.0))], -1)
    center = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    c2w = look_at(eyes, center.expand(5, 3), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(5, 3))
    k = torch.tensor([[60.0, 60.0, 32.0, 32.0]], dtype=torch.float64).expand(5, 4)
    point = center[None] + torch.tensor([[0.1, 0.05, -0.1]], dtype=torch.float64)
    uv, _ = project_points(point, c2w, k)
    c2w_n, found, scale = normalize_scene_cameras(c2w, 2.7)
    assert torch.allclose(found, center, atol=1e-6)
    assert torch.allclose(c2w_n[:, :3, 3].norm(dim=-1).mean(), torch.tensor(2.7, dtype=torch.float64))
    uv_n, _ = project_points((point - found) * scale, c2w_n, k)
    assert torch.allclose(uv, uv_n, atol=1e-6)


def test_composite_uses_alpha_and_background():
    premult = torch.full((1, 3, 2, 2), 0.25)
    alpha = torch.tensor([[[[0.5, 0.0], [1.0, 0.5]]]])
    out = composite(premult, alpha, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([1.0, 0.25, 0.25]))  # alpha 0: background + premult
    assert torch.allclose(out[0, 1, 0, 0], torch.tensor(0.25))


def test_size_errors_name_the_scene_view_number_not_the_position_among_decoded_views():
    import torch

    from datamodules.io import SampleError, validate_pixels

    rgb = torch.zeros(2, 3, 16, 16)
    with pytest.raises(SampleError, match=r"sample_x view 5: image is \(16, 16\).*declares \(20, 16\)"):
        validate_pixels(rgb, None, "sample_x", 2, [(16, 16), (20, 16)], views=[0, 5])
