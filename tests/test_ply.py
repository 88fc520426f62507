"""PLY for every common viewer: Inria 3DGS's vertex layout with f_rest_* padded to the SH degree, read back with
``plyfile`` (the reader Inria's ``GaussianModel.load_ply`` uses), and Inria's model folder."""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
import torch

from geometry.render import Gaussians, load_ply, ply_properties, save_inria_model, save_ply
from geometry.render.gaussians import SH_C0

plyfile = pytest.importorskip("plyfile", reason="plyfile (the `dev` extra) reads the PLY as Inria's loader does")


def _scene(n: int = 7, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    return Gaussians.unbatched(torch.randn(n, 3, generator=gen), quats, torch.rand(n, 3, generator=gen) * 0.1 + 0.01,
                               torch.rand(n, generator=gen) * 0.9 + 0.05, torch.rand(n, 3, generator=gen))


def _inria_sh_rest(vertex, degree: int) -> np.ndarray:
    """Inria 3DGS's GaussianModel.load_ply, re-stated: f_rest_* sorted by index, reshaped to [N, 3, K]."""
    names = sorted((p.name for p in vertex.properties if p.name.startswith("f_rest_")),
                   key=lambda x: int(x.split("_")[-1]))
    assert len(names) == 3 * (degree + 1) ** 2 - 3  # Inria asserts exactly this
    rest = np.stack([np.asarray(vertex[n]) for n in names], axis=1)
    return rest.reshape(rest.shape[0], 3, (degree + 1) ** 2 - 1)


def test_default_ply_has_inria_degree_3_layout_and_encodings(tmp_path):
    g = _scene()
    path = save_ply(tmp_path / "g.ply", g)
    ply = plyfile.PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"] and ply.elements[0].count == 7
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + \
        [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"] + \
        ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == list(ply_properties(3))
    assert all(p.val_dtype in ("f4", "float32") for p in vertex.properties)
    col = {n: np.asarray(vertex[n], dtype=np.float64) for n in names}
    np.testing.assert_allclose(np.stack([col["x"], col["y"], col["z"]], 1), g.means[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(col["f_dc_1"], (g.colors[0, :, 1].numpy() - 0.5) / SH_C0, rtol=1e-5, atol=1e-6)
    o = g.opacities[0].double().numpy()
    np.testing.assert_allclose(col["opacity"], np.log(o / (1 - o)), rtol=1e-5, atol=1e-6)  # logit
    np.testing.assert_allclose(col["scale_2"], np.log(g.scales[0, :, 2].double().numpy()), rtol=1e-5)  # log
    np.testing.assert_allclose(np.stack([col[f"rot_{i}"] for i in range(4)], 1), g.quats[0].numpy(), atol=1e-6)
    assert not _inria_sh_rest(vertex, 3).any()  # padding: zeros
    back = load_ply(path)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(back, name), getattr(g, name), atol=1e-5), name


@pytest.mark.parametrize("model_degree,file_degree", [(1, 3), (2, 2), (3, 3), (1, 1)])
def test_predicted_sh_bands_are_kept_in_inria_order_and_padded(tmp_path, model_degree, file_degree):
    g = _scene(5, seed=model_degree)
    k = (model_degree + 1) ** 2 - 1
    rest = torch.randn(5, k, 3, generator=torch.Generator().manual_seed(3))  # [N, K, 3] as gsplat holds them
    path = save_ply(tmp_path / "sh.ply", g, sh_degree=file_degree, sh_rest=rest)
    inria = _inria_sh_rest(plyfile.PlyData.read(str(path))["vertex"], file_degree)  # [N, 3, K_file]
    np.testing.assert_allclose(inria[:, :, :k], rest.transpose(1, 2).numpy(), rtol=1e-6)  # coefficient k of channel c
    assert not inria[:, :, k:].any()  # higher bands padded with zeros
    back, back_rest = load_ply(path, with_sh_rest=True)
    assert back_rest.shape == (1, 5, (file_degree + 1) ** 2 - 1, 3)
    assert torch.allclose(back_rest[0, :, :k], rest, atol=1e-6) and not back_rest[0, :, k:].any()
    assert torch.allclose(back.colors, g.colors, atol=1e-5)


def test_sh_degree_below_the_model_is_refused_and_zero_padding_loads_as_none(tmp_path):
    g = _scene(3)
    with pytest.raises(ValueError, match="drop bands"):
        save_ply(tmp_path / "x.ply", g, sh_degree=1, sh_rest=torch.zeros(3, 8, 3))
    with pytest.raises(ValueError, match=r"sh_rest must be \[N=3"):
        save_ply(tmp_path / "x.ply", g, sh_rest=torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match="SH degree must be in 0..3"):
        save_ply(tmp_path / "x.ply", g, sh_degree=4)
    assert load_ply(save_ply(tmp_path / "z.ply", g), with_sh_rest=True)[1] is None
    assert load_ply(save_ply(tmp_path / "d0.ply", g, sh_degree=0), with_sh_rest=True)[1] is None


def test_swapped_arguments_are_an_error_not_a_guess(tmp_path):
    with pytest.raises(TypeError, match="path comes first"):
        save_ply(_scene(2), tmp_path / "g.ply")


def test_inria_model_folder_layout(tmp_path):
    g = _scene(4)
    folder = save_inria_model(tmp_path / "model", g, iteration=7000)
    ply = folder / "point_cloud" / "iteration_7000" / "point_cloud.ply"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["cfg_args", "point_cloud/iteration_7000/point_cloud.ply"]
    text = (folder / "cfg_args").read_text()
    assert text.startswith("Namespace(")
    call = ast.parse(text, mode="eval").body  # Inria's render.py eval()s it into a Namespace
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert kwargs["sh_degree"] == 3 and kwargs["model_path"] == str(folder.resolve())
    assert kwargs["white_background"] is True
    vertex = plyfile.PlyData.read(str(ply))["vertex"]
    assert vertex.count == 4 and _inria_sh_rest(vertex, 3).shape == (4, 3, 15)
    assert math.isclose(load_ply(ply).scales[0, 0, 0].item(), g.scales[0, 0, 0].item(), rel_tol=1e-5)
