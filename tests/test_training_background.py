"""TrainingBackground under DDP: every rank's share merged into one record (combine is what merge_ranks gathers)."""

from __future__ import annotations

import torch

from lightning_modules.training_background import TrainingBackground


def test_ranks_records_combine_into_the_union_and_count_each_sample_once():
    white, gray = torch.ones(4, 3), torch.full((2, 3), 0.5)
    r0, r1 = TrainingBackground(), TrainingBackground()
    r0.update(white)
    r1.update(gray)
    shares = [r0.share(), r1.share()]
    for rank in (r0, r1):  # what all_gather_object hands every rank
        rank.combine(shares)
        rec = rank.to_dict()
        assert rec["samples"] == 6 and rec["varied"] and rec["min"] == [0.5] * 3 and rec["max"] == [1.0] * 3
    # later samples are counted once more at the next merge; earlier ones are not counted twice
    r0.update(white[:1])
    shares = [r0.share(), r1.share()]
    assert [s[2] for s in shares] == [1, 0]
    r0.combine(shares)
    r1.combine(shares)
    assert r0.samples == r1.samples == 7



def test_a_rank_that_saw_nothing_takes_the_others_record():
    a, b, empty = TrainingBackground(), TrainingBackground(), TrainingBackground()
    a.update(torch.ones(2, 3))
    b.update(torch.ones(3, 3))
    shares = [a.share(), b.share(), empty.share()]
    assert empty.to_dict() is None
    empty.combine(shares)
    assert empty.to_dict()["color"] == [1.0, 1.0, 1.0] and empty.samples == 5


def test_a_resumed_record_is_the_base_of_later_merges():
    r = TrainingBackground()
    r.load({"samples": 10, "min": [1.0] * 3, "max": [1.0] * 3})
    assert r.share()[2] == 0
    r.update(torch.ones(3))
    r.combine([r.share()])
    assert r.samples == 11 and r.to_dict()["color"] == [1.0, 1.0, 1.0]


def test_merge_ranks_is_a_no_op_in_one_process():
    r = TrainingBackground()
    r.update(torch.ones(2, 3))
    r.merge_ranks()
    assert r.samples == 2
