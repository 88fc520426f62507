"""Readers: FaceLift folders and list files, mvdiffusion folders, lossless shards, the real FaceLift sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.io import SampleError, decode_png
from datamodules.sources import (
    FaceLiftFolderSource,
    MVDiffusionFolderSource,
    ShardSource,
    build_source,
    resolve_list_entries,
    sample_dirs,
)
from geometry.camera_files import CameraFile, write_camera_file
from geometry.rig import load_rig
from tools.make_shards import main as make_shards_main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "facelift_sample"


def _write_scene(d: Path, views: int, size: int, seed: int, bits: int) -> None:
    import kornia_rs

    rng = np.random.default_rng(seed)
    (d / "images").mkdir(parents=True)
    rig = load_rig("facelift_6view")
    c2w, k = rig.cameras(size)
    names = []
    for v in range(views):
        name = f"images/cam_{v:03d}.png"
        if bits == 16:
            kornia_rs.io.write_image_png_u16(str(d / name), rng.integers(0, 65536, (size, size, 4), dtype=np.uint16),
                                             "rgba")
        else:
            kornia_rs.io.write_image_png_u8(str(d / name), rng.integers(0, 256, (size, size, 4), dtype=np.uint8),
                                            "rgba")
        names.append(name)
    write_camera_file(d / "opencv_cameras.json", CameraFile(d.name, c2w[:views], k[:views], [(size, size)] * views,
                                                            names))


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    _write_scene(root / "sample_a", 4, 16, 0, 8)
    _write_scene(root / "sample_b", 3, 12, 1, 16)
    _write_scene(root / "sample_c", 4, 16, 2, 8)
    return root


def _raw_views(src, i):
    """Decoded integer pixels of every view (bit-exact comparison)."""
    if isinstance(src, ShardSource):
        return [decode_png(src._read(i, e), e) for e in src.view_exts(i)]
    return [decode_png(p.read_bytes(), str(p)) for p in src.image_paths(i)]


def test_shards_round_trip_is_lossless_for_8_and_16_bit(folder, tmp_path, capsys):
    assert make_shards_main([str(folder), str(tmp_path / "shards"), "--shard-size", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == 3 and summary["shards"] == 2
    a = FaceLiftFolderSource("f", "real", path=str(folder))
    b = ShardSource("s", "real", urls=str(tmp_path / "shards" / "shard-{000000..000001}.tar"))
    assert len(a) == len(b) == 3
    for i in range(3):
        ca, cb = a.cameras(i), b.cameras(i)
        assert ca.scene_id == cb.scene_id and ca.sizes == cb.sizes
        assert torch.equal(ca.c2w, cb.c2w) and torch.equal(ca.fxfycxcy, cb.fxfycxcy)
        ra, rb = _raw_views(a, i), _raw_views(b, i)
        assert len(ra) == len(rb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(ra, rb))
        views = list(range(len(ra)))
        pa, pb = a.pixels(i, views), b.pixels(i, views)
        assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], pb[1])
    assert _raw_views(b, 1)[0].dtype == np.uint16
    rgb16, _, _ = b.pixels(1, [0])  # 16-bit precision survives into the float images
    assert not torch.allclose(rgb16 * 255, (rgb16 * 255).round(), atol=1e-3)


def test_list_file_resolves_foreign_absolute_paths_by_trailing_components(folder):
    lst = folder / "train.txt"
    lst.write_text("/mnt/localssd/elsewhere/data/sample_a\n/also/missing/sample_c\n")
    assert [p.name for p in resolve_list_entries(lst)] == ["sample_a", "sample_c"]
    lst.write_text("/mnt/localssd/elsewhere/sample_a\n/mnt/nowhere/sample_zzz\n")
    with pytest.raises(FileNotFoundError, match="sample_zzz"):
        resolve_list_entries(lst)


def test_corrupt_image_error_names_the_file(folder):
    (folder / "sample_a" / "images" / "cam_002.png").write_bytes(b"not a png at all" * 4)
    src = FaceLiftFolderSource("f", "real", path=str(folder))
    with pytest.raises(SampleError, match=r"sample_a/images/cam_002.png: not a PNG"):
        src.pixels(0, [0, 2])


def test_mvdiffusion_folder_takes_the_rigs_cameras(tmp_path):
    import kornia_rs

    d = tmp_path / "mv" / "sample_x"
    d.mkdir(parents=True)
    for v in range(6):
        kornia_rs.io.write_image_png_u8(str(d / f"cam_{v:03d}.png"), np.full((20, 20, 4), 200, np.uint8), "rgba")
    rig = load_rig("facelift_6view")
    src = MVDiffusionFolderSource("mv", "real", rig, path=str(tmp_path / "mv"))
    cams = src.cameras(0)
    c2w, k = rig.cameras(20)
    assert torch.equal(cams.c2w, c2w) and torch.equal(cams.fxfycxcy, k)
    (d / "cam_005.png").unlink()
    with pytest.raises(SampleError, match="5 PNG views, but rig facelift_6view has 6"):
        src.cameras(0)


@pytest.fixture()
def facelift_sample():
    if not SHARED.is_dir():
        pytest.skip("../shared/data/facelift_sample is absent (FaceLift's real sample lives beside the checkout)")
    return SHARED


def test_real_facelift_sample_loads_identically_from_folder_and_shards(facelift_sample, tmp_path):
    folder = FaceLiftFolderSource("f", "real", list_file=str(facelift_sample / "gslrm" / "data_gslrm_train.txt"))
    assert len(folder) == 1 and folder.dirs[0].name == "sample_000"
    assert make_shards_main([str(facelift_sample / "gslrm" / "data_gslrm_train.txt"), str(tmp_path / "sh")]) == 0
    shards = ShardSource("s", "real", urls=str(tmp_path / "sh"))
    cf, cs = folder.cameras(0), shards.cameras(0)
    assert len(cf.c2w) == 32 and torch.equal(cf.c2w, cs.c2w) and torch.equal(cf.fxfycxcy, cs.fxfycxcy)
    views = [0, 7, 31]
    rf, af, _ = folder.pixels(0, views)
    rs, as_, _ = shards.pixels(0, views)
    assert rf.shape == (3, 3, 512, 512) and torch.equal(rf, rs) and torch.equal(af, as_)
    assert decode_png(shards._read(0, "000.png"), "x").dtype == np.uint16  # the sample is 16-bit RGBA


def test_real_mvdiffusion_sample_is_in_rig_order_and_passes_the_rig_check(facelift_sample):
    from datamodules.datamodule import MultiViewDataModule

    dm = MultiViewDataModule(stage="diffusion", image_size=64, num_workers=0, batch_size=1, samples_per_epoch=1,
                             sources=[{"name": "mv", "kind": "real", "format": "facelift_mvdiffusion",
                                       "list_file": str(facelift_sample / "mvdiffusion" / "data_mvdiff_train.txt")}])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (1, 6, 3, 64, 64) and batch["ref_view"].tolist() == [0]
    assert torch.equal(batch["c2w"][0], load_rig("facelift_6view").cameras(64)[0])


def test_shards_back_to_folders_gives_the_same_files_byte_for_byte(folder, tmp_path, capsys):
    assert make_shards_main([str(folder), str(tmp_path / "shards"), "--shard-size", "2"]) == 0
    assert make_shards_main([str(tmp_path / "shards"), str(tmp_path / "back"), "--to-folders"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scenes"] == 3 and summary["shards"] == 2
    original = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    back = sorted(p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*") if p.is_file())
    assert back == sorted([*original, Path("data_list.txt")])
    for rel in original:
        assert (tmp_path / "back" / rel).read_bytes() == (folder / rel).read_bytes(), rel
    listed = (tmp_path / "back" / "data_list.txt").read_text().split()
    assert len(FaceLiftFolderSource("b", "real", list_file=str(tmp_path / "back" / "data_list.txt"))) == len(listed) == 3
    # a second conversion into the same folder would overwrite: refused, naming the sample
    assert make_shards_main([str(tmp_path / "shards"), str(tmp_path / "back"), "--to-folders"]) == 2
    assert "would overwrite" in capsys.readouterr().err


def test_scene_folders_without_a_camera_file_are_reported_not_silently_dropped(folder, caplog):
    (folder / "sample_b" / "opencv_cameras.json").unlink()
    with caplog.at_level("WARNING", logger="mvlift.data"):
        dirs = sample_dirs(folder)
    assert [d.name for d in dirs] == ["sample_a", "sample_c"]
    assert "1 of 3 sub-folders have no opencv_cameras.json and are left out: sample_b" in caplog.text


@pytest.mark.parametrize("key, value", [("num_scenes", "four"), ("weight", float("inf")), ("weight", -1.0),
                                        ("num_views", 2.5), ("seed", None)])
def test_a_bad_source_value_names_the_source_and_the_key(key, value):
    with pytest.raises(ValueError, match=rf"source 'syn': {key} must be a finite"):
        build_source({"name": "syn", "format": "procedural", key: value}, load_rig("facelift_6view"), 6, 16)


def test_sources_written_as_a_mapping_is_a_named_error():
    from datamodules.datamodule import MultiViewDataModule

    dm = MultiViewDataModule(stage="reconstruction", rig="facelift_6view", image_size=16, num_views=2,
                             num_input_views=1, sources={"syn": {"format": "procedural", "num_scenes": 2}})
    with pytest.raises(ValueError, match="sources must be a list of source mappings"):
        dm.setup("fit")


def test_skip_mode_skips_a_scene_with_too_few_views(folder):
    from datamodules.datamodule import MultiViewDataModule

    dm = MultiViewDataModule(stage="reconstruction", rig="facelift_6view", image_size=16, num_views=4,
                             num_input_views=2, sources=[{"name": "f", "format": "facelift", "path": str(folder)}],
                             on_bad_sample="skip", num_workers=0, samples_per_epoch=6, batch_size=1, val_fraction=0)
    dm.setup("fit")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert len(batches) == 6 and all(b["images"].shape[1] == 4 and "sample_b" not in b["scene_id"] for b in batches)
    skipped = dm.skip_report()
    assert skipped["total"] >= 1
    assert all("sample_b" in e["problem"] and "has 3 views, num_views is 4" in e["problem"]
               for e in skipped["examples"])


def test_relative_list_entries_resolve_against_the_list_file_not_the_working_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_scene(data / "s0", 2, 8, 0, 8)
    decoy = tmp_path / "cwd"
    _write_scene(decoy / "s0", 2, 8, 1, 8)
    (data / "list.txt").write_text("s0\n")
    monkeypatch.chdir(decoy)
    assert resolve_list_entries(data / "list.txt") == [data / "s0"]


def test_two_list_entries_naming_one_folder_are_an_error(tmp_path):
    data = tmp_path / "data"
    _write_scene(data / "s0", 2, 8, 0, 8)
    (data / "list.txt").write_text(f"s0\n{data / 's0'}\n")
    with pytest.raises(ValueError, match=r"entries 's0' and '.*s0' name the same folder"):
        resolve_list_entries(data / "list.txt")


@pytest.mark.parametrize("value", [None, "64", 0, 12.5])
def test_a_camera_file_with_a_bad_image_size_names_the_frame_and_key(folder, value):
    cf = folder / "sample_a" / "opencv_cameras.json"
    data = json.loads(cf.read_text())
    data["frames"][1]["h"] = value
    cf.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"opencv_cameras.json frame 1: 'h' must be a positive whole number"):
        FaceLiftFolderSource("f", "real", path=str(folder)).cameras(0)


def test_decoded_view_cache_reads_each_view_once_and_keeps_its_budget(folder, monkeypatch):
    from datamodules import sources

    reads = []
    real_read = sources.read_bytes
    monkeypatch.setattr(sources, "read_bytes", lambda p: reads.append(str(p)) or real_read(p))
    plain = FaceLiftFolderSource("f", "real", path=str(folder))
    cached = build_source({"name": "f", "kind": "real", "format": "facelift", "path": str(folder), "cache_mb": 1},
                          load_rig("facelift_6view"), 4, 16)
    for _ in range(3):
        rgb, alpha, _ = cached.pixels(0, [0, 2, 1])
    assert len(reads) == 3  # three views decoded once, then served from memory
    want_rgb, want_alpha, _ = plain.pixels(0, [0, 2, 1])
    assert torch.equal(rgb, want_rgb) and torch.equal(alpha, want_alpha)
    cached.pixels(0, [3])
    assert len(reads) == 3 + 3 + 1 and cached.decoded.bytes == 4 * 16 * 16 * 4 * 4
    rgb[:] = 0  # a caller writing into its batch does not reach the cache
    assert torch.equal(cached.pixels(0, [0, 2, 1])[0], want_rgb)

    tiny = FaceLiftFolderSource("f", "real", path=str(folder), cache_mb=3 * 16 * 16 * 16 / 2**20)  # 3 views
    for v in range(4):
        tiny.pixels(0, [v])
    assert tiny.decoded.bytes <= tiny.decoded.max_bytes and len(tiny.decoded._views) == 3
    assert str(folder / "sample_a" / "images" / "cam_000.png") not in tiny.decoded._views  # the oldest left


def test_decoded_view_cache_never_keeps_an_error(folder):
    src = FaceLiftFolderSource("f", "real", path=str(folder), cache_mb=16)
    bad = folder / "sample_a" / "images" / "cam_001.png"
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG broken")
    for _ in range(2):
        with pytest.raises(SampleError, match="cam_001.png"):
            src.pixels(0, [0, 1])
    bad.write_bytes(good)
    assert src.pixels(0, [0, 1])[0].shape == (2, 3, 16, 16)


def test_cache_mb_is_only_for_folder_sources():
    with pytest.raises(ValueError, match="cache_mb is for the folder formats"):
        build_source({"name": "p", "format": "procedural", "cache_mb": 10}, load_rig("facelift_6view"), 4, 16)
    with pytest.raises(ValueError, match="cache_mb"):
        build_source({"name": "f", "format": "facelift", "path": "x", "cache_mb": -1}, load_rig("facelift_6view"), 4, 16)


def test_shard_conversion_draws_a_progress_bar_only_when_asked_or_on_a_terminal(folder, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv("MVLIFT_PROGRESS", "1")
    assert make_shards_main([str(folder), str(tmp_path / "on")]) == 0
    err = capsys.readouterr().err
    assert "scenes -> shards" in err and "3/3" in err
    monkeypatch.setenv("MVLIFT_PROGRESS", "0")  # not a terminal (pytest's capture): no bar either way
    assert make_shards_main([str(folder), str(tmp_path / "off")]) == 0
    assert "scenes -> shards" not in capsys.readouterr().err
