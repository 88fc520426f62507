"""MultiViewDataModule: the sample contract per stage, the rig check, skipping, augmentation, inspect_data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from datamodules.augment import DomainGapAugment, Jpeg, Lighting, apply_op
from datamodules.datamodule import MultiViewDataModule
from datamodules.dataset import SourceRigError
from datamodules.io import SampleError
from geometry.rig import load_rig

TINY = {"image_size": 24, "num_workers": 0, "batch_size": 2, "samples_per_epoch": 4}


def _batch(**kw):
    dm = MultiViewDataModule(**{**TINY, **kw})
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def test_reconstruction_index_is_view_then_scene_long():
    _dm, b = _batch(stage="reconstruction", num_views=5, num_input_views=3,
                   sources=[{"name": "syn", "num_scenes": 6, "num_views": 8}])
    idx = b["index"]
    assert idx.dtype == torch.long and idx.shape == (2, 5, 2)
    for i in range(2):
        views, scenes = idx[i, :, 0], idx[i, :, 1]
        assert len(set(views.tolist())) == 5 and views.max() < 8  # distinct views of an 8-view scene
        assert (scenes == scenes[0]).all() and b["scene_id"][i].endswith(f"{int(scenes[0]):06d}")
    assert b["num_input_views"].tolist() == [3, 3]
    assert b["images"].shape == (2, 5, 3, 24, 24) and b["c2w"].shape == (2, 5, 4, 4)


def test_diffusion_targets_are_the_rig_views_in_rig_order_plus_a_reference():
    _dm, b = _batch(stage="diffusion", reference_view="random", sources=[{"name": "syn", "num_scenes": 4,
                                                                         "num_views": 8}])
    c2w, k = load_rig("facelift_6view").cameras(24)
    assert torch.allclose(b["c2w"], c2w.expand(2, -1, -1, -1), atol=1e-5)
    assert torch.allclose(b["fxfycxcy"], k.expand(2, -1, -1))
    assert b["index"][:, :, 0].tolist() == [list(range(6))] * 2
    for i, ref in enumerate(b["ref_view"].tolist()):
        assert 0 <= ref < 8 and b["ref_images"].shape[1:] == (1, 3, 24, 24)
        if ref < 6:
            assert torch.equal(b["ref_images"][i, 0], b["images"][i, ref])


def test_diffusion_rig_mismatch_names_the_sample_and_worst_view():
    dm = MultiViewDataModule(**TINY, stage="diffusion", rig="facelift_6view", rig_tolerance_deg=2.0,
                             sources=[{"name": "oblique", "num_scenes": 3, "rig": "mouse_oblique20_6view"}])
    with pytest.raises(SourceRigError, match=r"source 'oblique' cannot feed the diffusion stage: its rig "
                                             r"'mouse_oblique20_6view': cameras do not match rig 'facelift_6view'"
                                             r".*worst view '\w+' differs by 20\.0\d deg"):
        dm.setup("fit")  # refused at setup, never at the first draw
    drawn = MultiViewDataModule(**TINY, stage="diffusion", rig="facelift_6view", sources=[{"name": "syn",
                                                                                           "num_scenes": 3}])
    drawn.setup("fit")
    with pytest.raises(SampleError, match=r"syn procedural scene 0: cameras do not match rig 'mouse_oblique20_6view'"):
        other = dataclasses.replace(drawn.builder, rig=load_rig("mouse_oblique20_6view"))
        other.build(drawn.train_sources[0], 0, np.random.default_rng(0))  # a scene past setup: the draw's check


def test_bad_samples_raise_or_are_skipped_and_counted(tmp_path):
    from tests.test_data_sources import _write_scene

    root = tmp_path / "d"
    for n in range(4):
        _write_scene(root / f"sample_{n}", 4, 16, n, 8)
    (root / "sample_1" / "images" / "cam_000.png").write_bytes(b"broken")
    (root / "sample_2" / "images" / "cam_000.png").write_bytes(b"broken")
    src = [{"name": "real", "kind": "real", "format": "facelift", "path": str(root)}]
    kw = {**TINY, "stage": "reconstruction", "num_views": 4, "num_input_views": 2, "sources": src, "val_fraction": 0,
          "samples_per_epoch": 8, "center_crop": False}
    dm = MultiViewDataModule(**kw, on_bad_sample="raise")
    dm.setup("fit")
    with pytest.raises(SampleError, match=r"sample_[12]/images/cam_000.png: not a PNG"):
        list(dm.train_dataloader())
    dm = MultiViewDataModule(**kw, on_bad_sample="skip")
    dm.setup("fit")
    n = 0
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        n += len(batch["source"])
        assert not ({"sample_1", "sample_2"} & set(batch["scene_id"]))
    report = dm.skip_report()
    assert n == 8 and report["total"] == report["per_source"]["real"] >= 2
    assert all("not a PNG" in e["problem"] for e in report["examples"])
    assert dm.source_report()["real"]["count"] == 8


def _aug_batch(b=64):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 4, 3, 8, 8, generator=g) * 0.5 + 0.25
    return {"images": images, "alpha": torch.ones(b, 4, 1, 8, 8), "c2w": torch.eye(4).repeat(b, 4, 1, 1),
            "num_input_views": torch.full((b,), 2), "kind": ["synthetic"] * (b // 2) + ["real"] * (b // 2)}


def test_a_batch_of_one_kind_is_augmented_without_indexing_and_its_targets_stay_untouched():
    """One group holds the whole batch: the augmenter works on views of the batch (no copy through an index), so
    every op must leave the supervision alone; num_input_views may be a Python int (the module's host check)."""
    cfg = {"synthetic": {"background": {"p": 1.0, "strength": 0.1}, "noise": {"p": 1.0, "std": 0.05},
                         "pose_error": {"p": 1.0, "rotation_deg": 2.0, "translation": 0.01}}}
    batch = {**_aug_batch(8), "kind": ["synthetic"] * 8}
    batch["alpha"][:, :, :, :4] = 0.0  # background pixels for the background shift
    clean = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    as_int = DomainGapAugment(cfg, seed=1)({**batch, "num_input_views": 2}, "reconstruction", step=0)
    out = DomainGapAugment(cfg, seed=1)(batch, "reconstruction", step=0)
    for k, v in clean.items():
        assert torch.equal(batch[k], v), f"{k} was edited in place"
    assert (out["input_images"] != clean["images"][:, :2]).all(dim=(2, 3, 4)).all()
    assert not torch.equal(out["input_c2w"], clean["c2w"][:, :2])
    assert torch.equal(as_int["input_images"], out["input_images"])


def test_augmentation_changes_inputs_with_probability_and_never_targets():
    cfg = {"synthetic": {"noise": {"p": 0.5, "std": 0.05}, "pose_error": {"p": 1.0, "rotation_deg": 2.0,
                                                                          "translation": 0.01}}}
    batch = _aug_batch(256)
    clean = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    out = DomainGapAugment(cfg, seed=1)(batch, "reconstruction", step=0)
    for k, v in clean.items():
        assert torch.equal(out[k], v), k  # supervision untouched
    changed = (out["input_images"] != clean["images"][:, :2]).flatten(2).any(-1)  # [B, Vin]
    assert not changed[128:].any()  # real: no augmentation by default
    assert abs(changed[:128].float().mean().item() - 0.5) < 0.1
    moved = (out["input_c2w"] != clean["c2w"][:, :2]).flatten(2).any(-1)
    assert moved[:128].all() and not moved[128:].any()
    again = DomainGapAugment(cfg, seed=1)(_aug_batch(256), "reconstruction", step=0)
    assert torch.equal(again["input_images"], out["input_images"])  # deterministic under a seed


def test_lighting_is_an_affine_colour_map_per_image_within_its_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g) * 0.6 + 0.2
    assert torch.allclose(Lighting()(x), x, atol=1e-6), "no strength: identity"
    torch.manual_seed(0)
    y = Lighting(brightness=0.2)(x)
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio.amin(1), ratio.amax(1), atol=1e-5), "brightness scales each image by one factor"
    assert ratio.amin() >= 0.8 - 1e-5 and ratio.amax() <= 1.2 + 1e-5 and ratio.std() > 0.05
    grey = x[:, :1].expand(-1, 3, -1, -1)
    torch.manual_seed(0)
    out = Lighting(saturation=0.5, hue=0.25)(grey)
    assert torch.allclose(out, grey, atol=1e-5), "saturation and hue leave grey pixels alone"
    torch.manual_seed(0)
    hued = Lighting(hue=0.25)(x)
    assert (hued - x).abs().amax() > 0.05, "hue moves coloured pixels"
    torch.manual_seed(0)
    flat = Lighting(contrast=0.5)(x)  # no pixel leaves [0, 1]: nothing clipped
    luma = torch.tensor([0.299, 0.587, 0.114])
    mean = lambda t: torch.einsum("i,nihw->n", luma, t) / 64
    assert torch.allclose(mean(flat), mean(x), atol=1e-5), "contrast keeps the mean luma"


def test_jpeg_on_cpu_is_a_real_codec_round_trip_whose_error_grows_as_quality_falls():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(4, 1, 1, 1)
    smooth[:, :, 20:40, 20:40] = torch.tensor([0.9, 0.1, 0.2])[:, None, None]  # an edge: JPEG rings around it
    err = {}
    for q in (95, 20):
        torch.manual_seed(0)
        out = Jpeg((q, q))(smooth)
        assert out.shape == smooth.shape and out.dtype == smooth.dtype and 0 <= out.min() and out.max() <= 1
        assert torch.equal(out * 255, (out * 255).round()), "8-bit, as a camera writes it"
        err[q] = (out - smooth).abs().mean().item()
    assert 0 < err[95] < 0.01 < err[20] < 0.1, err
    torch.manual_seed(3)
    a = Jpeg((30, 90))(smooth)
    torch.manual_seed(3)
    assert torch.equal(a, Jpeg((30, 90))(smooth)), "the quality draw follows the seed"


def test_an_op_runs_only_on_the_images_its_probability_draws():
    calls = []

    def op(x):
        calls.append(len(x))
        return x + 1

    torch.manual_seed(0)
    x = torch.zeros(1000, 1, 1, 1)
    out = apply_op(op, x, 0.3)
    hit = out.flatten() == 1
    assert calls == [int(hit.sum())] and abs(hit.float().mean() - 0.3) < 0.05
    assert (out.flatten()[~hit] == 0).all()
    assert apply_op(op, x, 0.0) is x or torch.rand(1000).lt(0).any()  # p = 0: usually no call at all
    assert torch.equal(apply_op(op, x, 1.0), x + 1)


def test_default_augmentation_writes_reference_input_for_diffusion():
    dm, b = _batch(stage="diffusion", sources=[{"name": "syn", "num_scenes": 3}])
    ref = b["ref_images"].clone()
    b = dm.on_after_batch_transfer(b, 0)
    assert b["input_images"].shape == ref.shape and torch.equal(b["ref_images"], ref)


def test_diffusion_augmentation_hits_the_reference_with_its_probability_and_nothing_else():
    b = 256
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(b, 6, 3, 8, 8, generator=g) * 0.5 + 0.25,
             "ref_images": torch.rand(b, 1, 3, 8, 8, generator=g) * 0.5 + 0.25,
             "kind": ["synthetic"] * (b // 2) + ["real"] * (b // 2)}
    clean = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    out = DomainGapAugment({"synthetic": {"noise": {"p": 0.3, "std": 0.05}}}, seed=2)(batch, "diffusion", step=0)
    for k, v in clean.items():
        assert torch.equal(out[k], v), k  # targets and the clean reference untouched
    changed = (out["input_images"] != clean["ref_images"]).flatten(1).any(-1)
    assert not changed[b // 2:].any()
    assert abs(changed[: b // 2].float().mean().item() - 0.3) < 0.1


@pytest.mark.parametrize(("mode", "index"), [("fixed", 3), ("random_rig", 0)])
def test_reference_view_fixed_and_random_rig(mode, index):
    dm = MultiViewDataModule(**{**TINY, "batch_size": 4, "samples_per_epoch": 24}, stage="diffusion",
                             reference_view=mode, reference_index=index,
                             sources=[{"name": "syn", "num_scenes": 12, "num_views": 10}])
    dm.setup("fit")
    refs = [r for batch in dm.train_dataloader() for r in batch["ref_view"].tolist()]
    assert len(refs) == 24
    if mode == "fixed":
        assert set(refs) == {3}
    else:  # any of the rig's 6 views, never one of the scene's 4 extra views
        assert set(refs) <= set(range(6)) and len(set(refs)) >= 4


def test_supervise_inputs_puts_the_inputs_in_training_supervision_only():
    from lightning_modules.reconstruction.module import ReconstructionModule

    kw = {**TINY, "stage": "reconstruction", "num_views": 4, "num_input_views": 4, "val_fraction": 0.5,
          "sources": [{"name": "syn", "num_scenes": 8}], "augment": {"enabled": False}}
    with pytest.raises(ValueError, match="supervise_inputs"):
        MultiViewDataModule(**kw)
    dm = MultiViewDataModule(**{**kw, "num_input_views": 3, "supervise_inputs": True})
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert train["supervise_all_views"].tolist() == [True, True]
    assert val["supervise_all_views"].tolist() == [False, False]
    model = ReconstructionModule(image_size=24, num_input_views=3, width=32, depth=1, head_dim=16, patch_size=8,
                                 rasterizer="torch")
    assert model.split_views(train, training=True)[1]["images"].shape[1] == 4  # inputs supervised too
    assert model.split_views(val)[1]["images"].shape[1] == 1  # validation: the unseen view only
    plain = MultiViewDataModule(**{**kw, "num_input_views": 3})
    plain.setup("fit")
    assert model.split_views(next(iter(plain.train_dataloader())), training=True)[1]["images"].shape[1] == 1
    model.hparams.supervise_inputs = True  # the module's own switch: training steps only
    assert model.split_views(val, training=True)[1]["images"].shape[1] == 4
    assert model.split_views(val)[1]["images"].shape[1] == 1


def test_inspect_data_prints_one_json_object(tmp_path, capsys):
    from tools.inspect_data import main

    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        "stage: reconstruction\nimage_size: 16\nnum_views: 4\nnum_input_views: 2\nbatch_size: 2\n"
        "sources:\n  - {name: syn, kind: synthetic, num_scenes: 50, weight: 0.7}\n"
        "  - {name: rl, kind: synthetic, realistic: true, num_scenes: 20, weight: 0.3}\n")
    assert main(["-c", str(cfg), "--samples", "1000", "--json", "--stage", "diffusion"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sources"] == {"syn": {"kind": "synthetic", "fraction": 0.7}, "rl": {"kind": "realistic", "fraction": 0.3}}
    assert out["skipped"] == 0 and out["batch"]["images"] == [2, 6, 3, 16, 16]
    assert out["batch"]["ref_images"] == [2, 1, 3, 16, 16] and out["batch"]["index"] == [2, 6, 2]
    assert out["batch"]["input_images"] == [2, 1, 3, 16, 16], "the loader's augmentation is in the batch"
    assert 0 < out["sample_ms"] < 60_000


def test_lightning_fit_logs_per_source_counts_each_epoch(tmp_path):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return (batch["input_images"].mean() - self.w) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    logged = []

    class Rec(L.pytorch.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            logged.append(dict(metrics))
            super().log_metrics(metrics, step)

    dm = MultiViewDataModule(stage="reconstruction", image_size=16, num_views=3, num_input_views=2, batch_size=2,
                             num_workers=0, samples_per_epoch=4, val_fraction=0,
                             sources=[{"name": "a", "num_scenes": 4, "weight": 0.5},
                                      {"name": "b", "realistic": True, "num_scenes": 4, "weight": 0.5, "seed": 2}])
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=Rec(str(tmp_path)), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), datamodule=dm)
    assert [h["epoch"] for h in dm.history] == [0, 1]
    assert all(h["sources"]["a"]["count"] == 2 and h["sources"]["b"]["count"] == 2 for h in dm.history)
    data_logs = [m for m in logged if "data/a/fraction" in m]
    assert len(data_logs) == 2 and data_logs[0]["data/a/fraction"] == 0.5 and data_logs[0]["data/skipped_total"] == 0


@pytest.mark.gpu
def test_augmentation_runs_batched_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in _aug_batch(64).items()}
    clean = batch["images"].clone()
    out = DomainGapAugment(None, seed=0)(batch, "reconstruction", step=3)  # the default realism ops, JPEG included
    assert out["input_images"].is_cuda and out["input_images"].shape == (64, 2, 3, 8, 8)
    assert torch.equal(out["images"], clean)
    assert (out["input_images"][:32] != clean[:32, :2]).any()
    assert torch.equal(out["input_images"][32:], clean[32:, :2])


def test_a_sources_own_augment_replaces_its_kinds_ops_for_its_scenes_only():
    noise = {"synthetic": {"noise": {"p": 0.5, "std": 0.05}}}
    dm = MultiViewDataModule(stage="reconstruction", image_size=16, num_views=3, num_input_views=2, batch_size=96,
                             num_workers=0, samples_per_epoch=96, val_fraction=0, augment=noise,
                             sources=[{"name": "plain", "num_scenes": 4, "augment": {}},
                                      {"name": "aug", "num_scenes": 4, "seed": 3}])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    clean = batch["images"][:, :2].clone()
    out = dm.on_after_batch_transfer(batch, 0)
    plain = torch.tensor([s == "plain" for s in out["source"]])
    assert plain.sum() >= 24 and (~plain).sum() >= 24
    changed = (out["input_images"] != clean).flatten(2).any(-1)  # [B, Vin]
    assert not changed[plain].any()  # augment: {} -> never changed
    assert abs(changed[~plain].float().mean().item() - 0.5) < 0.15  # the synthetic kind's noise, p = 0.5

    # the same batch with no override: both sources get the kind's ops, and the draws are the old ones
    batch = {**_aug_batch(64), "source": ["a"] * 32 + ["b"] * 32}
    base = DomainGapAugment(noise, seed=1)(dict(batch), "reconstruction", step=0)["input_images"]
    other = DomainGapAugment(noise, seed=1, sources={"c": {}})(dict(batch), "reconstruction", step=0)["input_images"]
    assert torch.equal(base, other)
    own = DomainGapAugment(noise, seed=1, sources={"a": None})(dict(batch), "reconstruction", step=0)["input_images"]
    assert torch.equal(own[:32], batch["images"][:32, :2]) and not torch.equal(own[:32], base[:32])
    with pytest.raises(ValueError, match=r"source 'x' augment: unknown ops \['blur'\]"):
        MultiViewDataModule(**TINY, sources=[{"name": "x", "augment": {"blur": {"p": 1.0}}}]).setup("fit")


def test_the_augmentation_cost_bench_times_every_image_op_and_a_sample(capsys):
    from bench.augment_cost import main

    row = main(["--size", "16", "--views", "2", "--iters", "1"])
    assert set(row["op_ms_p1"]) == {"background", "lighting", "gamma", "gaussian_blur", "motion_blur", "noise", "jpeg"}
    assert all(v > 0 for v in row["op_ms_p1"].values()) and row["sample_ms_defaults"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == row
