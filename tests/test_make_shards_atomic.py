"""tools.make_shards writes into a temporary folder renamed at the end: a failure on scene 3 of 4 leaves no
valid-looking partial shard set (issue 16), and an earlier set in OUT stays whole until the new one is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_sources import _write_scene

import tools.make_shards as ms
from tools.make_shards import main as make_shards_main


@pytest.fixture()
def src(tmp_path) -> Path:
    for name in ("a", "b", "c", "d"):
        _write_scene(tmp_path / "src" / name, 3, 8, 0, 8)
    return tmp_path / "src"


def _fail_on_third_scene(monkeypatch):
    real = ms.scene_members
    calls = []

    def flaky(d):
        calls.append(d)
        if len(calls) == 3:
            raise OSError(f"{d}: injected read failure")
        return real(d)

    monkeypatch.setattr(ms, "scene_members", flaky)
    return calls


def test_a_failure_on_scene_3_of_4_leaves_no_partial_shards(src, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    calls = _fail_on_third_scene(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        ms.make_shards(src, out, shard_size=1)
    assert len(calls) == 3
    assert not out.exists(), "a partial shard set was left behind"
    assert not list(tmp_path.glob(".shards*")), "the temporary folder was left behind"


def test_an_earlier_shard_set_stays_whole_until_the_new_one_is_complete(src, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards"
    assert make_shards_main([str(src), str(out), "--shard-size", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["shard-000000.tar", "shard-000001.tar"]
    _fail_on_third_scene(monkeypatch)
    with pytest.raises(OSError):
        ms.make_shards(src, out, shard_size=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    # a complete new set replaces the old one whole (no stale shard-000002/3 mixed with old ones)
    assert make_shards_main([str(src), str(out), "--shard-size", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scenes"] == 4


def test_an_output_folder_holding_other_files_is_refused_untouched(src, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert make_shards_main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite" in err and "'notes.txt'" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_to_folders_failing_midway_leaves_no_output(src, tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    ms.make_shards(src, shards, shard_size=2)
    real = ms._write_folders

    def flaky(source, out):
        real(source, out)
        raise OSError("injected failure after the scenes")

    monkeypatch.setattr(ms, "_write_folders", flaky)
    with pytest.raises(OSError):
        ms.shards_to_folders(shards, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    monkeypatch.undo()
    ms.shards_to_folders(shards, tmp_path / "back")
    listed = (tmp_path / "back" / "data_list.txt").read_text().split()
    assert [Path(p).parent for p in listed] == [(tmp_path / "back").resolve()] * 4 and all(Path(p).is_dir() for p in listed)
