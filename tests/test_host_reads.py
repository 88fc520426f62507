"""No host read of tensor values in the training path after the batch is on the device (callbacks.profile.ScalarReads).

On a GPU every ``.item()``, ``bool(t)``, ``nonzero`` or boolean-mask index of a device tensor makes the host wait
for all queued GPU work; in the training step that leaves the GPU idle while the host catches up (the DDP profile
in docs/benchmarks.md). The value checks run on the host batch before the transfer instead
(``on_before_batch_transfer``). Kornia's own reads are on host-side random parameters and are not counted here
(library frames)."""

from __future__ import annotations

import pytest
import torch

from callbacks.profile import ScalarReads
from datamodules.datamodule import MultiViewDataModule

# the CPU reference rasterizer reads values (tile lists); runs on a GPU use gsplat
REFERENCE_RASTERIZER = ("geometry/render/torch_rasterizer.py",)


def _batch(stage: str, **kw):
    dm = MultiViewDataModule(stage=stage, image_size=16, num_views=3, num_input_views=2, batch_size=6,
                             num_workers=0, samples_per_epoch=12, val_fraction=0, augment_on="device",
                             **kw)  # demo sources: synthetic + realistic; augmentation after the transfer is what we audit
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def test_scalar_reads_finds_item_bool_and_mask_indexing_with_their_line():
    x = torch.arange(6.0)
    with ScalarReads() as reads:
        int(x[2])
        x[x > 2] = 0
        torch.nonzero(x)
    mine = reads.ours(roots=("tests/",))
    assert sorted(op for op, _ in mine) == ["aten::_local_scalar_dense", "aten::index_put_", "aten::nonzero"], mine
    assert all(where.startswith("tests/test_host_reads.py:") for _, where in mine)
    assert reads.ours() == {}, "the test file is not the library's code"


def test_reconstruction_training_step_reads_nothing_back_after_the_transfer():
    from lightning_modules.reconstruction.module import ReconstructionModule

    dm, batch = _batch("reconstruction")
    assert {"synthetic", "realistic"} <= set(batch["kind"]), "both kinds: the augmenter's per-group path runs"
    m = ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32, depth=1, head_dim=16,
                             patch_size=8, rasterizer="torch")
    batch = m.on_before_batch_transfer(batch, 0)  # host side: index order, num_input_views as an int
    with ScalarReads() as reads:
        batch = dm.on_after_batch_transfer(batch, 0)  # augmentation
        loss = m.training_step(batch, 0)
        loss.backward()
        m.on_before_optimizer_step(None)
    assert reads.ours(exclude=REFERENCE_RASTERIZER) == {}
    assert torch.isfinite(loss)


def test_diffusion_training_step_reads_nothing_back_after_the_transfer():
    from tests.test_diffusion import tiny_module

    dm, batch = _batch("diffusion", reference_view="random")
    m = tiny_module()
    batch = {k: v for k, v in batch.items()}
    with ScalarReads() as reads:
        batch = dm.on_after_batch_transfer(batch, 0)
        loss = m.training_step(batch, 0)
        loss.backward()
    assert reads.ours() == {}


@pytest.mark.parametrize("bad", ["swapped"])
def test_the_index_order_is_still_checked_on_the_host(bad):
    from lightning_modules.reconstruction.module import ReconstructionModule

    _, batch = _batch("reconstruction")
    batch["index"] = batch["index"].flip(-1)
    m = ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32, depth=1, head_dim=16,
                             patch_size=8, rasterizer="torch")
    with pytest.raises(ValueError, match="view_idx, scene_idx"):
        m.on_before_batch_transfer(batch, 0)
