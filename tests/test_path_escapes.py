"""Paths inside camera files and shards stay inside their scene / output folder (issue 16): ``../``, absolute paths
and symlinks leading outside are errors naming the file and the entry, when reading and when writing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from test_data_sources import _write_scene

from datamodules.io import SampleError
from datamodules.sources import FaceLiftFolderSource, ShardSource
from geometry.camera_files import PathEscapeError, frame_image_path
from tools.make_shards import main as make_shards_main


def _set_file_path(scene: Path, view: int, value: str) -> None:
    cams = json.loads((scene / "opencv_cameras.json").read_text())
    cams["frames"][view]["file_path"] = value
    (scene / "opencv_cameras.json").write_text(json.dumps(cams))


def _shard(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _scene_members(scene: Path, key: str = "00000000_s") -> dict[str, bytes]:
    cams = json.loads((scene / "opencv_cameras.json").read_text())
    out = {f"{key}.cameras.json": json.dumps(cams).encode()}
    for v, fr in enumerate(cams["frames"]):
        out[f"{key}.{v:03d}.png"] = (scene / fr["file_path"]).read_bytes()
    return out


@pytest.mark.parametrize("bad", ["../../x.png", "images/../../x.png", "/etc/hostname", "C:\\x.png", ""])
def test_frame_paths_must_stay_inside_the_scene(tmp_path, bad):
    with pytest.raises(PathEscapeError, match=r"cams.json frame 2: file_path") as e:
        frame_image_path(tmp_path / "scene", bad, 2, "cams.json")
    assert repr(bad) in str(e.value)
    assert frame_image_path(tmp_path / "scene", None, 2, "cams.json") == tmp_path / "scene/images/cam_002.png"


def test_to_folders_refuses_a_camera_file_path_leaving_the_output_folder(tmp_path, capsys):
    _write_scene(tmp_path / "src" / "s", 3, 8, 0, 8)
    for bad in ("../../x.png", str(tmp_path / "abs.png")):
        members = _scene_members(tmp_path / "src" / "s")
        cams = json.loads(members["00000000_s.cameras.json"])
        cams["frames"][1]["file_path"] = bad
        members["00000000_s.cameras.json"] = json.dumps(cams).encode()
        shard = _shard(tmp_path / "shards" / "shard-000000.tar", members)
        out = tmp_path / "out" / "back"
        assert make_shards_main([str(shard), str(out), "--to-folders"]) == 2
        err = capsys.readouterr().err
        assert str(shard) in err and "frame 1: file_path" in err and repr(bad) in err, err
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "out" / "x.png").exists()
        assert not (tmp_path / "abs.png").exists()
        assert not (out / "s").exists(), "nothing of the refused scene is written"


def test_shard_members_with_absolute_or_parent_names_are_refused(tmp_path):
    _write_scene(tmp_path / "src" / "s", 2, 8, 0, 8)
    members = _scene_members(tmp_path / "src" / "s")
    for bad in ("../00000001_t.000.png", "/tmp/00000001_t.000.png"):
        shard = _shard(tmp_path / f"bad{len(bad)}" / "shard-000000.tar", {**members, bad: b"x"})
        with pytest.raises(SampleError, match="is an absolute path or holds '..'") as e:
            ShardSource("s", "real", urls=str(shard))
        assert str(shard) in str(e.value) and repr(bad) in str(e.value)


def test_reading_a_scene_whose_file_path_is_outside_it_names_the_file_and_entry(tmp_path, capsys):
    _write_scene(tmp_path / "data" / "s", 3, 8, 0, 8)
    scene = tmp_path / "data" / "s"
    _set_file_path(scene, 1, "/etc/hostname")
    source = FaceLiftFolderSource("f", "real", path=str(tmp_path / "data"))
    with pytest.raises(SampleError, match=r"opencv_cameras.json frame 1: file_path '/etc/hostname' leaves"):
        source.pixels(0, [0, 1])
    # make_shards packs no file from outside the scene: the whole conversion is refused
    assert make_shards_main([str(tmp_path / "data"), str(tmp_path / "shards")]) == 2
    assert "'/etc/hostname'" in capsys.readouterr().err


def test_a_symlink_leading_out_of_the_scene_is_refused(tmp_path):
    _write_scene(tmp_path / "data" / "s", 2, 8, 0, 8)
    scene = tmp_path / "data" / "s"
    outside = tmp_path / "secret.png"
    (scene / "images" / "cam_001.png").rename(outside)
    (scene / "images" / "cam_001.png").symlink_to(outside)
    with pytest.raises(SampleError, match=r"frame 1: file_path 'images/cam_001.png' resolves to .*secret.png, outside"):
        FaceLiftFolderSource("f", "real", path=str(tmp_path / "data")).pixels(0, [0, 1])
    # a symlink inside the scene is fine
    (scene / "images" / "cam_001.png").unlink()
    outside.rename(scene / "images" / "real_001.png")
    (scene / "images" / "cam_001.png").symlink_to("real_001.png")
    rgb, _, _ = FaceLiftFolderSource("f", "real", path=str(tmp_path / "data")).pixels(0, [0, 1])
    assert rgb.shape[0] == 2
