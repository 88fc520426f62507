"""Reconstruction input views drawn ``random`` or ``spread`` (datamodules.views): spread inputs see the subject from
all round (farthest-point sampling of the viewing directions), the supervision views stay random, bad settings are
named errors, and the DataModule's batches follow the setting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from datamodules.datamodule import MultiViewDataModule
from datamodules.views import reconstruction_views, spread_views


def ring_cameras(n: int, elevation_deg: float = 20.0) -> torch.Tensor:
    """c2w [n, 4, 4] on a ring, each looking at the origin (third axis = viewing direction)."""
    c2w = torch.eye(4).repeat(n, 1, 1)
    e = math.radians(elevation_deg)
    for i in range(n):
        a = 2 * math.pi * i / n
        pos = torch.tensor([math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), math.sin(e)]) * 2.7
        fwd = -pos / pos.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        c2w[i, :3, 0], c2w[i, :3, 1], c2w[i, :3, 2], c2w[i, :3, 3] = right, down, fwd, pos
    return c2w


def min_angle_deg(c2w: torch.Tensor) -> float:
    d = c2w[:, :3, 2] / c2w[:, :3, 2].norm(dim=-1, keepdim=True)
    cos = max(float(d[i] @ d[j]) for i, j in itertools.combinations(range(len(d)), 2))
    return math.degrees(math.acos(min(1.0, cos)))


def test_spread_inputs_are_far_apart_and_the_supervision_views_random():
    c2w = ring_cameras(32)
    spread, random = [], []
    for seed in range(20):
        views = reconstruction_views(32, 8, 4, np.random.default_rng(seed), "spread", c2w)
        assert len(set(views)) == 8 and all(0 <= v < 32 for v in views)
        spread.append(min_angle_deg(c2w[views[:4]]))
        random.append(min_angle_deg(c2w[reconstruction_views(32, 8, 4, np.random.default_rng(seed))[:4]]))
    # four of 32 ring views, spread: a quarter turn apart (~84 deg between viewing directions at 20 deg elevation)
    assert min(spread) > 80.0
    assert np.mean(random) < 50.0
    # the first input and the supervision views vary with the draw
    draws = {tuple(reconstruction_views(32, 8, 4, np.random.default_rng(s), "spread", c2w)) for s in range(10)}
    assert len(draws) == 10


def test_random_inputs_keep_their_draws_and_bad_settings_are_named():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert reconstruction_views(10, 5, 2, rng_a) == [int(v) for v in rng_b.choice(10, size=5, replace=False)]
    with pytest.raises(ValueError, match="input_views 'spread' needs the scene's 10 cameras"):
        reconstruction_views(10, 5, 2, np.random.default_rng(0), "spread")
    with pytest.raises(ValueError, match="input_views must be one of"):
        reconstruction_views(10, 5, 2, np.random.default_rng(0), "nearest", ring_cameras(10))
    with pytest.raises(ValueError, match="input_views must be one of"):
        MultiViewDataModule(stage="reconstruction", input_views="nearest")


def test_spread_views_covers_a_sphere_of_directions():
    d = np.random.default_rng(0).normal(size=(200, 3))
    picks = spread_views(d, 6, np.random.default_rng(1))
    u = d[picks] / np.linalg.norm(d[picks], axis=1, keepdims=True)
    cos = (u @ u.T)[~np.eye(6, dtype=bool)]
    assert len(set(picks)) == 6 and cos.max() < math.cos(math.radians(60))  # 6 of 200: no two within 60 deg


def test_datamodule_batches_take_spread_inputs():
    def batch(mode):
        dm = MultiViewDataModule(stage="reconstruction", image_size=16, num_views=6, num_input_views=3,
                                 input_views=mode, batch_size=4, num_workers=0, samples_per_epoch=8,
                                 sources=[{"name": "syn", "num_scenes": 8, "num_views": 12}])
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    spread, random = batch("spread"), batch("random")
    angles = [min_angle_deg(spread["c2w"][i, :3]) for i in range(4)]
    assert min(angles) > np.mean([min_angle_deg(random["c2w"][i, :3]) for i in range(4)])
    assert spread["images"].shape == (4, 6, 3, 16, 16) and spread["num_input_views"].tolist() == [3] * 4


def test_tools_evaluate_draws_the_inputs_as_told():
    from pathlib import Path

    from lightning_modules.evaluation.runner import EvalSettings, make_loader
    from tools.evaluate import build_parser

    cfg = {"stage": "reconstruction", "rig": "mouse_oblique20_6view", "image_size": 16, "num_views": 6,
           "num_input_views": 3, "sources": [{"name": "syn", "num_scenes": 8, "num_views": 12}], "val_fraction": 0.5}
    angles = {}
    for mode in ("random", "spread"):
        opts = build_parser().parse_args(["--ckpt", "x", "--data", "d", "--out", "o", "--input-views", mode,
                                          "--batch-size", "4", "--batches", "1"])
        assert opts.input_views == mode
        settings = EvalSettings(ckpt=["x"], data=["d"], rig=[], out=Path("o"), batches=1, batch_size=4,
                                input_views=opts.input_views)
        loader, _ = make_loader(cfg, "reconstruction", None, 16, settings)
        batch = next(iter(loader))
        angles[mode] = [min_angle_deg(batch["c2w"][i, :3]) for i in range(batch["c2w"].shape[0])]
    assert min(angles["spread"]) > np.mean(angles["random"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--ckpt", "x", "--data", "d", "--out", "o", "--input-views", "nearest"])
