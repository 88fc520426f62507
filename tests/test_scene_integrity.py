"""Nothing in a scene is dropped or mis-paired silently (issue 16): shard views are looked up by their number and must
be one per camera frame; a scene's views are all RGBA or all without alpha."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_sources import _write_scene
from test_path_escapes import _scene_members, _shard

from datamodules.io import SampleError, decode_png, load_png_views
from datamodules.sources import FaceLiftFolderSource, ShardSource
from tools.make_shards import main as make_shards_main

KEY = "00000000_s"


@pytest.fixture()
def scene(tmp_path) -> Path:
    _write_scene(tmp_path / "src" / "s", 4, 8, 0, 8)
    return tmp_path / "src" / "s"


def test_a_shard_missing_one_views_png_is_an_error_naming_the_member_not_a_mis_pairing(scene, tmp_path, capsys):
    members = _scene_members(scene, KEY)
    del members[f"{KEY}.001.png"]
    shard = _shard(tmp_path / "shards" / "shard-000000.tar", members)
    source = ShardSource("s", "real", urls=str(shard))
    with pytest.raises(SampleError, match=r"4 camera frames but 3 PNG members; missing \['00000000_s.001.png'\]") as e:
        source.cameras(0)
    assert str(shard) in str(e.value) and f"sample {KEY}" in str(e.value)
    # views are looked up by number: view 2 is 002.png, not the second PNG left
    rgb, _, _ = source.pixels(0, [2])
    want, _ = load_png_views([(scene / "images" / "cam_002.png").read_bytes()], ["cam_002"])
    assert rgb.equal(want)
    with pytest.raises(SampleError, match=r"views \[1\] requested, members \['00000000_s.001.png'\] are missing"):
        source.pixels(0, [0, 1])
    assert make_shards_main([str(shard), str(tmp_path / "back"), "--to-folders"]) == 2
    assert f"missing ['{KEY}.001.png']" in capsys.readouterr().err
    assert not (tmp_path / "back" / "s").exists()


def test_shard_views_are_read_by_number_whatever_the_member_order(scene, tmp_path):
    members = _scene_members(scene, KEY)
    shuffled = {k: members[k] for k in [f"{KEY}.003.png", f"{KEY}.cameras.json", f"{KEY}.000.png", f"{KEY}.002.png",
                                        f"{KEY}.001.png"]}
    source = ShardSource("s", "real", urls=str(_shard(tmp_path / "sh" / "shard-000000.tar", shuffled)))
    assert len(source.cameras(0).sizes) == 4
    for v in range(4):
        assert np.array_equal(decode_png(source._read(0, source.view_exts(0)[v]), "x"),
                              decode_png((scene / f"images/cam_{v:03d}.png").read_bytes(), "y"))
    extra = {**members, f"{KEY}.004.png": members[f"{KEY}.000.png"]}
    source = ShardSource("s", "real", urls=str(_shard(tmp_path / "sh2" / "shard-000000.tar", extra)))
    with pytest.raises(SampleError, match=r"no camera frame for \['00000000_s.004.png'\]"):
        source.cameras(0)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_one_view_without_alpha_in_an_rgba_scene_is_an_error_naming_it(scene, mode):
    cam = scene / "images" / "cam_002.png"
    Image.open(cam).convert(mode).save(cam)
    source = FaceLiftFolderSource("f", "real", path=str(scene.parent))
    with pytest.raises(SampleError, match=r"cam_002.png: no alpha channel, but other views of the scene have one"):
        source.pixels(0, [0, 1, 2, 3])
    _, alpha, _ = source.pixels(0, [0, 1, 3])  # the views that agree still load
    assert alpha is not None and alpha.shape[0] == 3


def test_a_scene_without_alpha_in_every_view_still_loads(scene):
    for v in range(4):
        cam = scene / "images" / f"cam_{v:03d}.png"
        Image.open(cam).convert("RGB").save(cam)
    rgb, alpha, _ = FaceLiftFolderSource("f", "real", path=str(scene.parent)).pixels(0, [0, 1, 2, 3])
    assert alpha is None and rgb.shape == (4, 3, 8, 8)
