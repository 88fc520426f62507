"""Files mvlift writes are readable by group / others as the umask allows (issue 16): camera files, PLYs,
tools.synthesize datasets, safetensors exports and pipeline folders were 0600 (mkstemp, safetensors' writer)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from geometry.camera_files import CameraFile, read_camera_file, write_camera_file
from geometry.files import current_umask, make_tree_readable, write_atomic
from geometry.render import Gaussians, save_ply
from geometry.rig import load_rig


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): _mode(p) for p in folder.rglob("*") if p.is_file()}


def test_umask_is_read_without_changing_it(umask022):
    assert current_umask() == 0o022
    os.umask(0o027)
    assert current_umask() == 0o027 and os.umask(0o022) == 0o027


def test_atomic_writes_get_the_umasks_mode(tmp_path, umask022):
    assert _mode(write_atomic(tmp_path / "a.json", "{}")) == 0o644
    os.umask(0o077)  # a private umask stays private
    assert _mode(write_atomic(tmp_path / "b.json", b"{}")) == 0o600
    os.umask(0o002)
    assert _mode(write_atomic(tmp_path / "c.json", b"{}")) == 0o664


def test_ply_and_camera_files_are_0644_under_umask_022(tmp_path, umask022):
    g = Gaussians(means=torch.zeros(1, 3, 3), quats=torch.tensor([[[1.0, 0, 0, 0]] * 3]), scales=torch.ones(1, 3, 3),
                  opacities=torch.full((1, 3), 0.5), colors=torch.full((1, 3, 3), 0.5))
    assert _mode(save_ply(tmp_path / "g.ply", g)) == 0o644
    rig = load_rig("facelift_6view")
    c2w, k = rig.cameras(16)

    write_camera_file(tmp_path / "cams.json", CameraFile("s", c2w, k, [(16, 16)] * len(c2w), [None] * len(c2w)))
    assert _mode(tmp_path / "cams.json") == 0o644
    assert read_camera_file(tmp_path / "cams.json").c2w.shape == c2w.shape


def test_synthesize_writes_a_dataset_others_can_read(tmp_path, umask022):
    from tools.synthesize import main

    assert main(["--out", str(tmp_path / "d"), "--scenes", "2", "--views", "6", "--size", "16",
                 "--rig", "facelift_6view"]) in (0, None)
    modes = _modes(tmp_path / "d")
    assert any(k.endswith("opencv_cameras.json") for k in modes) and "dataset.json" in modes
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items() if v != 0o644}


def test_safetensors_exports_and_folders_are_readable(tmp_path, umask022):
    from lightning_modules.diffusion.view_conditioning import ViewEmbeddings
    from lightning_modules.reconstruction.module import ReconstructionModule

    m = ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32, depth=1, head_dim=16,
                             rasterizer="torch")
    m.export(tmp_path / "export", ema_weights={f"net.{k}": v for k, v in m.net.state_dict().items()})
    modes = _modes(tmp_path / "export")
    assert {"model.safetensors", "model_ema.safetensors"} <= set(modes) and set(modes.values()) == {0o644}, modes
    rig = load_rig("facelift_6view")
    path = ViewEmbeddings(torch.zeros(rig.num_views, 2, 4), rig, "learned", True).save(tmp_path / "v.safetensors")
    assert _mode(path) == 0o644
    # a folder tree of a writer that ignores the umask (mkdtemp 0700, safetensors 0600) is widened as it allows
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "sub").chmod(0o700)
    (tmp_path / "t" / "sub" / "w.bin").write_bytes(b"x")
    (tmp_path / "t" / "sub" / "w.bin").chmod(0o600)
    make_tree_readable(tmp_path / "t")
    assert _mode(tmp_path / "t" / "sub") == 0o755 and _mode(tmp_path / "t" / "sub" / "w.bin") == 0o644
