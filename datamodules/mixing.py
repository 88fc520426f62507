"""Weighted mixing of sources: which (source, scene) each draw of an epoch takes, per rank and worker.

The plan is pure index arithmetic (no decoding), deterministic for (seed, epoch, world size, workers):

* Source labels are *stratified*: over the epoch's N draws source k appears exactly round(N * w_k) times (largest
  remainder), in a seeded random order — so realized fractions match the weights to 1/N, and differ across epochs.
* Draw position j goes to rank j % R and, within the rank, to worker (j // R) % W ("slots" s = rank * W + worker).
* Each source's scenes are permuted per epoch and dealt to the S = R * W slots (``perm[s::S]``): slots never share a
  scene of a source. A slot that draws a source more often than its share holds cycles through its share (a small
  source never starves); a source with fewer scenes than slots gives each slot one scene (then sharing is
  unavoidable and reported by ``shares_disjoint``).

Example:
    >>> plan = MixingPlan(sizes=[100, 10], weights=[0.7, 0.3], seed=0)
    >>> d = plan.draws(epoch=0, num_samples=1000)
    >>> d.shape, int((d[:, 0] == 1).sum())
    ((1000, 3), 300)
"""

from __future__ import annotations

import numpy as np

SLOT_SEED, SCENE_SEED = 0, 1


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


__all__ = ["MixingPlan", "stratified_counts"]
