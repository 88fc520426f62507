"""Issue 27, Names and pictures: a realistic procedural source is synthetic (never labelled "real"), make_shards
--to-folders keeps the train/val split, evaluation grids have >= 128 px tiles and labels broken between words, and
chart.png has units on its axes and its legend outside the bars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from datamodules.datamodule import DEMO_SOURCES, MultiViewDataModule
from datamodules.sources import build_source
from geometry.images import wrap_label
from geometry.rig import load_rig
from lightning_modules.evaluation.report import chart_figure, grid_tile_px, label_words, markdown, write_grid
from lightning_modules.metrics import KindMetrics

ROOT = Path(__file__).resolve().parents[1]
RIG = load_rig("mouse_oblique20_6view")


def test_realistic_procedural_sources_are_synthetic_everywhere():
    demo = yaml.safe_load((ROOT / "configs" / "data" / "demo.yaml").read_text())["sources"]
    for cfg in [*demo, *DEMO_SOURCES]:
        src = build_source(cfg, RIG, 6, 16)
        assert src.kind == "synthetic", cfg
        assert src.sample_kind == ("realistic" if cfg.get("realistic") else "synthetic")
    with pytest.raises(ValueError, match="procedural source is synthetic"):
        build_source({"name": "r", "kind": "real", "realistic": True, "num_scenes": 2}, RIG, 6, 16)
    with pytest.raises(ValueError, match="realistic: true marks synthetic captures"):
        build_source({"name": "f", "kind": "real", "format": "shards", "realistic": True, "urls": "x"}, RIG, 6, 16)
    km = KindMetrics(["psnr"])
    km.update({"psnr": torch.tensor([[20.0], [10.0]])}, ["synthetic", "realistic"])
    assert set(km.compute()) == {"psnr/all", "psnr/synthetic", "psnr/realistic"}  # logs: no psnr/real


def test_mixing_stays_70_30_and_samples_say_realistic():
    from tools.inspect_data import inspect

    cfg = yaml.safe_load((ROOT / "configs" / "data" / "demo.yaml").read_text())
    out = inspect({**cfg, "image_size": 16, "batch_size": 4}, 2000)
    assert out["sources"] == {"synthetic": {"kind": "synthetic", "fraction": 0.7},
                              "realistic": {"kind": "realistic", "fraction": 0.3}}
    dm = MultiViewDataModule(stage="reconstruction", image_size=16, num_views=3, num_input_views=2, batch_size=8,
                             num_workers=0, samples_per_epoch=8, val_fraction=0, sources=DEMO_SOURCES)
    dm.setup("fit")
    kinds = [k for batch in dm.train_dataloader() for k in batch["kind"]]
    assert set(kinds) <= {"synthetic", "realistic"} and "realistic" in kinds


def test_report_table_labels_realistic_as_synthetic():
    summary = {"all": {"psnr": 20.0, "n": 2}, "kind": {"synthetic": {"psnr": 21.0, "n": 1},
                                                       "realistic": {"psnr": 19.0, "n": 1}},
               "source": {}, "view": {}}
    results = {"rows": [{"checkpoint": "c", "data": "demo", "rig": "r", "checkpoint_rig": "r", "rig_match": True,
                         "mode": "reconstruction", "scenes": 2, "metrics": summary}],
               "settings": {"split": "val", "batches": 1, "batch_size": 2, "seed": 0, "device": "cpu"},
               "lpips": {"note": "left out"}}
    head = next(ln for ln in markdown(results).splitlines() if ln.startswith("| checkpoint"))
    assert "PSNR synthetic (realistic)" in head and " real " not in head and not head.endswith("real |")


def _scene(root: Path, name: str) -> Path:
    d = root / name
    (d / "images").mkdir(parents=True)
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(d / "images" / "cam_000.png")
    frame = {"file_path": "images/cam_000.png", "w": 8, "h": 8, "fx": 8.0, "fy": 8.0, "cx": 4.0, "cy": 4.0,
             "w2c": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]}
    (d / "opencv_cameras.json").write_text(json.dumps({"frames": [frame]}))
    return d


def test_make_shards_to_folders_keeps_the_train_val_split(tmp_path):
    from tools.make_shards import main

    src = tmp_path / "data"
    dirs = [_scene(src, f"sample_{i:06d}") for i in range(5)]
    (src / "data_train.txt").write_text("".join(f"{d}\n" for d in dirs[:3]))
    (src / "data_val.txt").write_text("".join(f"{d}\n" for d in dirs[3:]))
    assert main([str(src), str(tmp_path / "shards"), "--shard-size", "2"]) == 0
    back = tmp_path / "back"
    assert main([str(tmp_path / "shards"), str(back), "--to-folders"]) == 0
    train = (back / "data_train.txt").read_text().split()
    val = (back / "data_val.txt").read_text().split()
    assert [Path(x).name for x in train] == [d.name for d in dirs[:3]]
    assert [Path(x).name for x in val] == [d.name for d in dirs[3:]]
    assert all(Path(x).parent == back.resolve() and Path(x).is_dir() for x in train + val)
    assert len((back / "data_list.txt").read_text().split()) == 5


def test_grid_tiles_are_at_least_128_px_and_labels_break_between_words(tmp_path):
    labels = ["input front", "pred front_right", "gt back_left_extraordinarily_long_name"]
    tiles = [["front", "front_right", "a_much_longer_view_name"]] * 2
    rows = [torch.rand(3, 3, 16, 16) for _ in range(2)]
    path = write_grid(tmp_path / "g.png", rows, labels, ["#0", "#1"], tiles)
    tile = grid_tile_px(16, labels + tiles[0])
    assert tile >= 128 and tile % 16 == 0
    w, _ = Image.open(path).size
    assert w >= 3 * 128 and (w - 3 * tile) in (0, 34)  # 34: the row labels' column
    for text in labels + tiles[0]:
        words = label_words(text)
        lines = wrap_label(text, tile - 2)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        # every line ends where a word ends
        ends, pos = set(), 0
        for word in words:
            pos += len(word.rstrip())
            ends.add(pos)
            pos += len(word) - len(word.rstrip())
        pos = 0
        for line in lines:
            pos += len(line)
            assert pos in ends or pos == len(text.rstrip()), (text, lines)
            while pos < len(text) and text[pos] == " ":
                pos += 1


def test_chart_has_units_and_its_legend_outside_the_bars():
    rows = [{"checkpoint": f"ckpt{k}", "data": "demo", "rig": "mouse", "rig_views": ["front", "right"],
             "metrics": {"view": {"front": {"psnr": 20.0 + k, "ssim": 0.8}, "right": {"psnr": 18.0, "ssim": 0.7}}}}
            for k in range(3)]
    fig = chart_figure(rows)
    axes = fig.get_axes()
    assert "dB" in axes[0].get_ylabel() and "PSNR" in axes[0].get_ylabel()
    assert "SSIM" in axes[1].get_ylabel()
    assert all(ax.get_legend() is None for ax in axes), "no legend inside a panel"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(fig.legends) == 1
    box = fig.legends[0].get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in axes)


def test_every_logger_of_mvlift_is_named_under_mvlift():
    """One convention: ``logging.getLogger("mvlift.<area>")``, so that ``logging.getLogger("mvlift")`` reaches every
    line mvlift logs (``__name__`` loggers such as ``callbacks.paths`` escaped it)."""
    import re

    calls = re.compile(r"logging\.getLogger\(([^)]*)\)")
    found, wrong = 0, []
    for package in ("callbacks", "datamodules", "geometry", "lightning_modules", "tools", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for arg in calls.findall(path.read_text()):
                if path.name == "__init__.py" and package == "tools":
                    continue  # log_to_stderr configures the root logger
                found += 1
                if not re.fullmatch(r'"mvlift\.[a-z_]+"', arg.strip()):
                    wrong.append(f"{path.relative_to(ROOT)}: getLogger({arg})")
    assert found >= 20 and not wrong, wrong
