"""Weighted mixing of sources: which (source, scene) each draw of an epoch takes, per rank (and slot), and the
sampler that streams a rank's draws to the DataLoader.

The plan is pure index arithmetic (no decoding), deterministic for (seed, epoch, world size, workers):

* Source labels are *stratified*: over the epoch's N draws source k appears exactly round(N * w_k) times (largest
  remainder), in a seeded random order — so realized fractions match the weights to 1/N, and differ across epochs.
* Draw position j goes to rank j % R and, within the rank, to worker (j // R) % W ("slots" s = rank * W + worker).
* Each source's scenes are permuted per epoch and dealt to the S = R * W slots (``perm[s::S]``): slots never share a
  scene of a source. A slot that draws a source more often than its share holds cycles through its share (a small
  source never starves); a source with fewer scenes than slots gives each slot one scene (then sharing is
  unavoidable and reported by ``shares_disjoint``).

The training loader uses one slot per rank (``MixingSampler``: slot = rank, num_workers = 1): the sampler runs in
the main process and yields :class:`Draw` keys that carry their epoch, DataLoader workers only build the samples of
the keys they are handed. So batches do not depend on ``num_workers``, workers hold no epoch state (persistent
workers are safe) and a pass can start at any draw (exact mid-epoch resume).

Example:
    >>> plan = MixingPlan(sizes=[100, 10], weights=[0.7, 0.3], seed=0)
    >>> d = plan.draws(epoch=0, num_samples=1000)
    >>> d.shape, int((d[:, 0] == 1).sum())
    ((1000, 3), 300)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

SLOT_SEED, SCENE_SEED = 0, 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialized, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def stratified_counts(weights: list[float] | np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` proportional to ``weights`` (largest remainder; ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"source weights must be >= 0 with a positive sum, got {w.tolist()}")
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


class MixingPlan:
    """Draw plan over sources of ``sizes`` scenes with ``weights`` (see module docstring)."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"need one weight per source, got {len(sizes)} sizes and {len(weights)} weights")
        empty = [k for k, (n, w) in enumerate(zip(sizes, weights)) if n < 1 and w > 0]
        if empty:
            raise ValueError(f"sources {empty} have weight > 0 but no scenes")
        self.sizes, self.weights, self.seed = [int(n) for n in sizes], [float(w) for w in weights], int(seed)
        stratified_counts(self.weights, 1)  # validates the weights

    def per_rank(self, num_samples: int, world_size: int = 1) -> int:
        """Draws per rank: equal on every rank (DDP needs equal lengths), at least 1."""
        return max(1, num_samples // world_size)

    def labels(self, epoch: int, total: int) -> np.ndarray:
        """Source label [total] of every global draw position of ``epoch``."""
        counts = stratified_counts(self.weights, total)
        rng = np.random.default_rng([self.seed, epoch, SLOT_SEED])
        return rng.permutation(np.repeat(np.arange(len(counts)), counts))

    def share(self, epoch: int, k: int, slot: int, num_slots: int) -> np.ndarray:
        """Scene positions of source ``k`` dealt to ``slot`` of ``num_slots`` this epoch."""
        perm = np.random.default_rng([self.seed, epoch, SCENE_SEED, k]).permutation(self.sizes[k])
        if self.sizes[k] >= num_slots:
            return perm[slot::num_slots]
        return perm[[slot % self.sizes[k]]]

    def shares_disjoint(self, world_size: int, num_workers: int) -> bool:
        """Whether every source has at least one scene per slot (so slots never share a scene)."""
        return all(n >= world_size * max(1, num_workers) for n, w in zip(self.sizes, self.weights) if w > 0)

    def draws(self, epoch: int, num_samples: int, rank: int = 0, world_size: int = 1, worker: int = 0,
              num_workers: int = 1) -> np.ndarray:
        """This rank/worker's draws of ``epoch``: int64 [n, 3] rows (source k, scene position, occurrence t).

        ``num_samples`` is the epoch's global draw count (all ranks); each rank gets ``per_rank`` of them.
        """
        if not (0 <= rank < world_size and 0 <= worker < max(1, num_workers)):
            raise ValueError(f"bad rank/worker {rank}/{world_size}, {worker}/{num_workers}")
        num_workers = max(1, num_workers)
        n_rank = self.per_rank(num_samples, world_size)
        labels = self.labels(epoch, n_rank * world_size)
        pos = np.arange(len(labels))
        mine = labels[(pos % world_size == rank) & ((pos // world_size) % num_workers == worker)]
        slot, num_slots = rank * num_workers + worker, world_size * num_workers
        out = np.zeros((len(mine), 3), dtype=np.int64)
        out[:, 0] = mine
        for k in np.unique(mine):
            sel = np.nonzero(mine == k)[0]
            share = self.share(epoch, int(k), slot, num_slots)
            t = np.arange(len(sel))
            out[sel, 1] = share[t % len(share)]
            out[sel, 2] = t
        return out

    def all_draws(self, epoch: int, num_samples: int, world_size: int = 1, num_workers: int = 1) -> list[np.ndarray]:
        """Draws of every (rank, worker) slot, in slot order."""
        return [self.draws(epoch, num_samples, r, world_size, w, num_workers)
                for r in range(world_size) for w in range(max(1, num_workers))]


class Draw(NamedTuple):
    """One draw of an epoch: the key :class:`MixingSampler` yields and ``MixedSceneDataset[key]`` builds.

    ``slot`` / ``num_slots`` say whose share of the sources the draw belongs to (rank / world size), for the
    replacement of bad samples (``on_bad_sample: skip``).
    """

    epoch: int
    source: int
    pos: int
    occurrence: int
    slot: int = 0
    num_slots: int = 1


class MixingSampler(DistributedSampler):
    """This rank's draws of an epoch of ``plan`` (``num_samples`` draws over all ranks), in order, as :class:`Draw`.

    Each pass (``iter``) starts at ``(epoch, start)``: from ``start_fn(n)`` when given (``n`` = draws per rank;
    MultiViewDataModule passes the training loop's position, which is how a resumed run continues mid-epoch),
    else at draw 0 of the epoch set by ``set_epoch``. Ranks come from torch.distributed at each pass.

    It runs in the main process; the DataLoader pulls it ahead of the batches it prefetches, so its own progress is
    not the training position (MultiViewDataModule counts the batches the training loop takes). It subclasses DistributedSampler only because it already is one: Lightning then leaves it in place
    under DDP instead of injecting its own; ``DistributedSampler.__init__`` (which wants a process group) is not
    called.
    """

    def __init__(self, plan: MixingPlan, num_samples: int, shuffle: bool = True,
                 start_fn: Callable[[int], tuple[int, int]] | None = None) -> None:
        self.plan, self.total_samples, self.start_fn = plan, int(num_samples), start_fn
        self.shuffle, self.seed, self.drop_last = shuffle, plan.seed, False  # DistributedSampler's attributes
        self.epoch, self.start = 0, 0

    @property
    def rank(self) -> int:  # type: ignore[override]
        return rank_and_world()[0]

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return rank_and_world()[1]

    def __len__(self) -> int:
        return self.plan.per_rank(self.total_samples, self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_draws(self, epoch: int, start: int = 0) -> Iterator[Draw]:
        """This rank's draws of ``epoch`` from the ``start``-th on, in order."""
        rank, world = rank_and_world()
        rows = self.plan.draws(epoch, self.total_samples, rank, world)[start:]  # computed now; Draws made lazily
        return (Draw(epoch, int(k), int(p), int(t), rank, world) for k, p, t in rows)

    def __iter__(self) -> Iterator[Draw]:
        # the start is decided now, when the DataLoader creates its iterator (not at the first draw it pulls)
        if self.start_fn is not None:
            self.epoch, self.start = (int(v) for v in self.start_fn(len(self)))
        else:
            self.start = 0
        return self.epoch_draws(self.epoch, self.start)


__all__ = ["Draw", "MixingPlan", "MixingSampler", "rank_and_world", "stratified_counts"]
