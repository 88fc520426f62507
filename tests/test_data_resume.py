"""MultiViewDataModule position: state_dict round-trips mid-epoch (0 and 2 workers; augmentation in the loader and on
the device), batches do not depend on num_workers, persistent workers see every epoch; loader augmentation does not
depend on the batch size."""

from __future__ import annotations

import io

import pytest
import torch

from datamodules.datamodule import MultiViewDataModule

BATCH, PER_EPOCH = 2, 8  # 4 batches per epoch


def _dm(**kw) -> MultiViewDataModule:
    dm = MultiViewDataModule(**{
        "stage": "reconstruction", "image_size": 16, "num_views": 3, "num_input_views": 2, "batch_size": BATCH,
        "samples_per_epoch": PER_EPOCH, "val_fraction": 0, "seed": 7, "num_workers": 0,
        "sources": [{"name": "syn", "num_scenes": 9, "weight": 0.6},
                    {"name": "real", "kind": "synthetic", "realistic": True, "num_scenes": 5, "weight": 0.4, "seed": 2}],
        # synthetic inputs always get noise, so every synthetic sample shows the augmentation's random ops
        "augment": {"synthetic": {"noise": {"p": 1.0, "std": 0.05}, "lighting": {"p": 0.5, "brightness": 0.2}}},
        **kw})
    dm.setup("fit")
    return dm


def _key(batch: dict) -> tuple:
    return tuple(batch["scene_id"]), batch["input_images"].clone()


def _take(dm: MultiViewDataModule, loader, n: int | None = None) -> list[tuple]:
    """One pass of ``loader`` as the training loop takes it (on_after_batch_transfer per batch); stops after n."""
    out = []
    for batch in loader:
        out.append(_key(dm.on_after_batch_transfer(batch, 0)))
        if n is not None and len(out) == n:
            break
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.fixture(scope="module", params=["loader", "device"])
def ref(request) -> tuple[str, list[list[tuple]]]:
    """(augment_on, epochs 0..2 taken in process, uninterrupted)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before conftest's per-test one-thread fixture
    try:
        dm = _dm(augment_on=request.param)
        loader = dm.train_dataloader()
        return request.param, [_take(dm, loader) for _ in range(3)]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("workers", [0, 2])
def test_state_round_trips_mid_epoch_and_the_loader_continues_exactly(ref, workers):
    on, ref = ref
    # the reference is in process: batches do not depend on num_workers
    assert [len(e) for e in ref] == [PER_EPOCH // BATCH] * 3

    dm = _dm(num_workers=workers, augment_on=on)
    loader = dm.train_dataloader()
    assert _same(_take(dm, loader), ref[0])
    taken = _take(dm, loader, 2)  # epoch 1, 2 of 5 batches; with workers, more were prefetched and are dropped
    assert _same(taken, ref[1][:2])
    state = dm.state_dict()
    # the step counter seeds device augmentation only; loader augmentation is seeded by each draw
    assert (state["epoch"], state["samples"], state["aug_step"]) == (1, 4, 6 if on == "device" else 0)
    assert state["report"]["counts"] and sum(state["report"]["counts"].values()) == 4
    buf = io.BytesIO()
    torch.save(state, buf)  # as in a checkpoint
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    del loader

    resumed = _dm(num_workers=workers, augment_on=on)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["samples"] == 4  # a checkpoint taken before any new batch keeps the position
    loader = resumed.train_dataloader()
    assert _same(_take(resumed, loader), ref[1][2:]), "the rest of epoch 1, with the same augmentation"
    assert _same(_take(resumed, loader), ref[2]), "then epoch 2"
    epoch1 = resumed.history[0]  # the per-source report of epoch 1 counts the draws taken before the checkpoint too
    assert epoch1["epoch"] == 1 and sum(r["count"] for r in epoch1["sources"].values()) == PER_EPOCH

    fresh = _dm(num_workers=workers, augment_on=on)  # control: without the state the loader starts over
    assert not _same(_take(fresh, fresh.train_dataloader(), 1), ref[1][2:3])


def test_state_at_the_end_of_an_epoch_resumes_at_the_next_epoch(ref):
    on, ref = ref
    dm = _dm(augment_on=on)
    _take(dm, dm.train_dataloader())
    state = dm.state_dict()
    assert (state["epoch"], state["samples"]) == (0, PER_EPOCH)
    resumed = _dm(augment_on=on)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, resumed.train_dataloader()), ref[1])


def test_iterating_twice_before_taking_a_batch_keeps_the_resumed_position(ref):
    on, ref = ref
    dm = _dm(augment_on=on)
    _take(dm, dm.train_dataloader(), 3)
    resumed = _dm(augment_on=on)
    resumed.load_state_dict(dm.state_dict())
    loader = resumed.train_dataloader()
    iter(loader)  # Lightning may create the iterator again before the first batch
    assert _same(_take(resumed, loader), ref[0][3:])


def test_persistent_workers_follow_the_epochs(ref):
    on, ref = ref
    dm = _dm(num_workers=2, persistent_workers=True, augment_on=on)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    first = _take(dm, loader)
    workers = loader._iterator._workers
    second = _take(dm, loader)
    assert loader._iterator._workers is workers, "the same worker processes served both epochs"
    assert _same(first, ref[0]) and _same(second, ref[1])
    assert not _same(first, second)


def test_a_different_world_size_resumes_at_the_same_global_fraction(caplog):
    dm = _dm()
    _take(dm, dm.train_dataloader(), 1)
    state = {**dm.state_dict(), "world_size": 2}  # as saved by a 2-rank run: 2 draws per rank = 4 of 8 globally
    resumed = _dm()
    resumed.load_state_dict(state)
    with caplog.at_level("WARNING", logger="mvlift.data"):
        assert resumed._start_pass(PER_EPOCH) == (0, 4)
    assert "not exactly where the saved run was" in caplog.text


def test_batches_are_pinned_only_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _dm().train_dataloader().pin_memory, "with CUDA the loader pins batches (asynchronous copies)"
    assert not _dm(pin_memory=False).train_dataloader().pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not _dm().train_dataloader().pin_memory, "no pinning without CUDA (DataLoader would warn)"


def test_loader_augmentation_follows_the_draw_not_the_batch():
    """augment_on: loader seeds each sample by its draw: batches of 2 and of 4 give every scene the same augmented
    inputs; on the device the ops follow the step, so the same scenes come out differently."""
    def per_scene(on: str, batch_size: int) -> dict:
        dm = _dm(augment_on=on, batch_size=batch_size)
        out = {}
        for batch in dm.train_dataloader():
            batch = dm.on_after_batch_transfer(batch, 0)
            out.update({(i, s): x for i, (s, x) in enumerate(zip(batch["scene_id"], batch["input_images"]),
                                                              start=len(out))})
        return out

    two, four = per_scene("loader", 2), per_scene("loader", 4)
    assert two.keys() == four.keys() and len(two) == PER_EPOCH
    assert all(torch.equal(two[k], four[k]) for k in two)
    dev2, dev4 = per_scene("device", 2), per_scene("device", 4)
    assert dev2.keys() == two.keys()
    assert not all(torch.equal(dev2[k], dev4[k]) for k in dev2)


def test_a_draw_is_augmented_the_same_on_any_rank():
    from datamodules.mixing import Draw

    ds = _dm(augment_on="loader").train_dataset()
    on_one = ds[Draw(1, 0, 3, 0, slot=0, num_slots=1)]
    on_rank1_of_2 = ds[Draw(1, 0, 3, 0, slot=1, num_slots=2)]
    assert on_one["scene_id"] == on_rank1_of_2["scene_id"]
    assert torch.equal(on_one["input_images"], on_rank1_of_2["input_images"])
    assert not torch.equal(on_one["input_images"], ds[Draw(1, 0, 3, 1)]["input_images"]), "another occurrence"


@pytest.mark.parametrize("on", ["loader", "device"])
def test_validation_inputs_are_augmented_only_with_augment_val_and_alike_every_pass(on):
    from types import SimpleNamespace

    def val_pass(dm):
        dm.trainer = SimpleNamespace(training=False, global_rank=0, current_epoch=0)  # as in Lightning's validation loop
        return [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]

    kw = {"augment_on": on, "val_fraction": 0.3, "val_samples": 4}
    plain = val_pass(_dm(**kw))
    assert plain and all("input_images" not in b for b in plain), "augment_val off: the clean views"
    dm = _dm(**kw, augment_val=True)
    first, second = val_pass(dm), val_pass(dm)
    synthetic = [(b["input_images"][i], b["images"][i, :2]) for b in first for i, k in enumerate(b["kind"])
                 if k == "synthetic"]
    assert synthetic and all(not torch.equal(x, clean) for x, clean in synthetic), "synthetic inputs get noise"
    assert all(torch.equal(a["input_images"], b["input_images"]) for a, b in zip(first, second)), "every pass alike"
    assert dm.state_dict()["aug_step"] == 0, "validation leaves the training steps alone"
