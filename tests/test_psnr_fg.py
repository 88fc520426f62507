"""PSNR inside the subject's bounding box (``psnr_fg``): the box, its PSNR, NaN for views without foreground (left out
of every mean and counted), and where it is reported — ``tools.evaluate``'s summaries and the reconstruction stage's
``val/psnr_fg/*`` logs."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from tiny_checkpoints import reconstruction_module
from torch.utils.data import DataLoader

from geometry.rig import load_rig
from lightning_modules.evaluation import csv_row, summarize
from lightning_modules.metrics import KindMetrics, foreground_box, per_view_psnr, per_view_psnr_fg, view_metrics

ROWS, COLS = slice(5, 13), slice(8, 18)  # the subject's box in a 24 px view


def _scene(b: int = 2, v: int = 3, s: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target views of s >= 18 px on white with a dark subject in ROWS x COLS (alpha 1 there, 0 elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.ones(b, v, 3, s, s)
    alpha = torch.zeros(b, v, 1, s, s)
    target[..., ROWS, COLS] = 0.3 * torch.rand(b, v, 3, 8, 10, generator=g)
    alpha[..., ROWS, COLS] = 1.0
    return target, alpha, g


def test_the_box_is_the_bounding_box_of_alpha_above_one_half():
    g = torch.Generator().manual_seed(1)
    alpha = torch.rand(4, 3, 1, 9, 11, generator=g) ** 6  # sparse foreground, some views without any
    alpha[0, 0] = 0.0
    alpha[0, 1] = 0.5  # exactly 0.5 is not foreground
    box = foreground_box(alpha)
    assert box.shape == alpha.shape and box.dtype == torch.bool
    for b in range(4):
        for v in range(3):
            ys, xs = torch.nonzero(alpha[b, v, 0] > 0.5, as_tuple=True)
            want = torch.zeros(9, 11, dtype=torch.bool)
            if len(ys):
                want[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = True
            assert torch.equal(box[b, v, 0], want), (b, v)
    assert not box[0, 0].any() and not box[0, 1].any()


def test_perfect_prediction_gives_inf_and_a_whole_image_box_gives_the_whole_image_psnr():
    target, alpha, g = _scene()
    assert torch.isinf(per_view_psnr_fg(target.clone(), target, alpha)).all()
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    full = torch.ones_like(alpha)
    torch.testing.assert_close(per_view_psnr_fg(pred, target, full), per_view_psnr(pred, target))
    # inside the box: 10 log10(1 / MSE over the box's pixels and channels)
    box_mse = ((pred - target)[..., ROWS, COLS] ** 2).mean((-3, -2, -1))
    torch.testing.assert_close(per_view_psnr_fg(pred, target, alpha), 10 * torch.log10(1 / box_mse))


def test_errors_outside_the_box_leave_fg_psnr_untouched_while_whole_image_psnr_drops():
    target, alpha, g = _scene()
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    alpha[..., 6, 9] = 0.2  # soft alpha inside the box does not change the box
    worse = pred.clone()
    worse[..., :5, :] = 0.0       # black sky above the subject
    worse[..., 13:, 18:] = 0.5    # grey floor at the bottom right
    before, after = view_metrics(pred, target, alpha=alpha), view_metrics(worse, target, alpha=alpha)
    assert torch.equal(before["psnr_fg"], after["psnr_fg"])
    assert (after["psnr"] < before["psnr"] - 3).all()
    assert (before["psnr_fg"] < before["psnr"]).all()  # the white background flatters whole-image PSNR
    assert torch.equal(after["ssim"], view_metrics(worse, target)["ssim"])  # SSIM as it was
    assert "psnr_fg" not in view_metrics(pred, target)  # no alpha, no psnr_fg


def test_empty_masks_are_nan_left_out_of_the_means_and_counted():
    target, alpha, g = _scene(b=2, v=3)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    alpha[0, 1] = 0.0               # scene 0: one view without foreground
    alpha[1] = 0.4                  # scene 1: none with foreground (all below the threshold)
    fg = per_view_psnr_fg(pred, target, alpha)
    assert fg.isnan().tolist() == [[False, True, False], [True, True, True]]
    defined = [float(fg[0, 0]), float(fg[0, 2])]

    # tools.evaluate: scene = mean over its defined views; scene 1 has none and is left out; empties counted
    scenes = [{"scene_id": str(b), "source": "src", "kind": ["synthetic", "real"][b], "views": ["a", "b", "c"],
               "psnr_fg": fg[b].tolist(), "psnr": per_view_psnr(pred, target)[b].tolist()} for b in range(2)]
    summary = summarize(scenes, ["psnr", "psnr_fg"])
    assert summary["all"]["psnr_fg"] == pytest.approx(sum(defined) / 2)
    assert summary["all"]["psnr_fg_empty"] == 4 and summary["all"]["n"] == 2
    assert math.isfinite(summary["all"]["psnr"])  # whole-image PSNR has no NaN views and keeps both scenes
    assert math.isnan(summary["kind"]["real"]["psnr_fg"]) and summary["kind"]["real"]["psnr_fg_empty"] == 3
    assert summary["view"]["a"]["psnr_fg"] == pytest.approx(defined[0]) and summary["view"]["a"]["psnr_fg_empty"] == 1
    assert math.isnan(summary["view"]["b"]["psnr_fg"]) and summary["view"]["b"]["psnr_fg_empty"] == 2
    line = csv_row({"metrics": summary})
    assert line["psnr_fg"] == summary["all"]["psnr_fg"] and line["psnr_fg_empty"] == 4
    assert "psnr_empty" not in line

    # validation logging: the same rule, no NaN warning, counts per kind
    km = KindMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        km.update({"psnr_fg": fg, "psnr": per_view_psnr(pred, target)}, ["synthetic", "real"])
        got = {k: float(v) for k, v in km.compute().items()}
    assert got["psnr_fg/all"] == pytest.approx(sum(defined) / 2) and got["psnr_fg/synthetic"] == got["psnr_fg/all"]
    assert math.isnan(got["psnr_fg/real"])
    assert (got["psnr_fg_empty/all"], got["psnr_fg_empty/synthetic"], got["psnr_fg_empty/real"]) == (4, 1, 3)
    assert "psnr_empty/all" not in got


def test_reconstruction_validation_logs_val_psnr_fg_and_evaluate_batch_returns_it(tmp_path):
    torch.manual_seed(0)
    size = 24
    m = reconstruction_module("mouse_oblique20_6view", image_size=size, patch_size=8)
    b, v = 2, 4
    c2w, k = load_rig("mouse_oblique20_6view").cameras(size)
    target, alpha, _ = _scene(b=b, v=v, s=size)
    alpha[1, 3] = 0.0  # one supervision view without foreground
    batch = {"images": target, "alpha": alpha, "c2w": c2w[:v].expand(b, v, 4, 4).clone(),
             "fxfycxcy": k[:v].expand(b, v, 4).clone(), "background": torch.ones(b, 3),
             "index": torch.stack([torch.arange(v).expand(b, v), torch.arange(b)[:, None].expand(b, v)], -1),
             "kind": ["synthetic", "real"]}
    out = m.eval().evaluate_batch(batch)
    assert out["psnr_fg"].shape == (2, 2) and out["psnr_fg"].isnan().tolist() == [[False, False], [False, True]]
    want = per_view_psnr_fg(out["pred"], out["target"], alpha[:, 2:])  # the supervision views' alpha
    torch.testing.assert_close(out["psnr_fg"], want, equal_nan=True)

    samples = [{key: val[i] for key, val in batch.items()} for i in range(b)]
    loader = DataLoader(samples, batch_size=b)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.validate(m, loader, verbose=False)
    logged = trainer.logged_metrics
    assert {"val/psnr_fg/all", "val/psnr_fg/synthetic", "val/psnr_fg/real", "val/psnr/all"} <= set(logged)
    assert float(logged["val/psnr_fg_empty/all"]) == 1 and float(logged["val/psnr_fg_empty/real"]) == 1
    want = (out["psnr_fg"][0].mean() + out["psnr_fg"][1, 0]) / 2
    assert float(logged["val/psnr_fg/all"]) == pytest.approx(float(want), rel=1e-5)
