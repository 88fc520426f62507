"""Which views of a scene each stage uses.

Diffusion: the rig's target views are the scene's first ``rig.num_views`` views, in rig order; one reference
(conditioning) view is chosen ``fixed`` (an index), ``random`` (any of the scene's views) or ``random_rig`` (one of
the rig's views). Reconstruction: ``num_views`` distinct views, the first ``num_input_views`` are the inputs, the rest
supervision; the inputs are drawn ``random``, ``spread`` (farthest-point sampling of the cameras' viewing
directions from a random first view: inputs that see the subject from all round, as a rig's views do) or ``first``
(the scene's first ``num_input_views`` views in order: a rig's views, for data whose first views are the rig's, as
procedural scenes and the chained pipeline's generated views are), the supervision views at random from the others.

Example:
    >>> import numpy as np
    >>> ref, targets = diffusion_views(8, 6, "fixed", 0, np.random.default_rng(0))
    >>> ref, targets
    (0, [0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

REFERENCE_MODES = ("fixed", "random", "random_rig")
INPUT_VIEW_MODES = ("random", "spread", "first")


def diffusion_views(num_data_views: int, num_rig_views: int, mode: str, reference_index: int,
                    rng: np.random.Generator) -> tuple[int, list[int]]:
    """(reference view, target views in rig order) for a scene of ``num_data_views`` views."""
    if num_data_views < num_rig_views:
        raise ValueError(f"scene has {num_data_views} views, the rig needs {num_rig_views}")
    if mode == "fixed":
        if not 0 <= reference_index < num_data_views:
            raise ValueError(f"reference_index {reference_index} out of range for {num_data_views} views")
        ref = reference_index
    elif mode == "random":
        ref = int(rng.integers(num_data_views))
    elif mode == "random_rig":
        ref = int(rng.integers(num_rig_views))
    else:
        raise ValueError(f"reference_view must be one of {REFERENCE_MODES}, got {mode!r}")
    return ref, list(range(num_rig_views))


def reconstruction_views(num_data_views: int, num_views: int, num_input_views: int,
                         rng: np.random.Generator, input_views: str = "random",
                         c2w: Tensor | np.ndarray | None = None) -> list[int]:
    """``num_views`` distinct views; the first ``num_input_views`` are the inputs, the rest supervision (module
    docstring). ``spread`` needs the scene's cameras c2w [N, 4, 4] (their third axis is the viewing direction)."""
    if not 1 <= num_input_views <= num_views:
        raise ValueError(f"need 1 <= num_input_views ({num_input_views}) <= num_views ({num_views})")
    if num_data_views < num_views:
        raise ValueError(f"scene has {num_data_views} views, {num_views} requested")
    if input_views == "random":
        return [int(v) for v in rng.choice(num_data_views, size=num_views, replace=False)]
    if input_views == "first":
        rest = rng.choice(np.arange(num_input_views, num_data_views), size=num_views - num_input_views, replace=False)
        return list(range(num_input_views)) + [int(v) for v in rest]
    if input_views != "spread":
        raise ValueError(f"input_views must be one of {INPUT_VIEW_MODES}, got {input_views!r}")
    if c2w is None or len(c2w) != num_data_views:
        raise ValueError(f"input_views 'spread' needs the scene's {num_data_views} cameras")
    inputs = spread_views(np.asarray(c2w, dtype=np.float64)[:, :3, 2], num_input_views, rng)
    rest = np.setdiff1d(np.arange(num_data_views), inputs)
    others = rng.choice(rest, size=num_views - num_input_views, replace=False)
    return inputs + [int(v) for v in others]


def spread_views(directions: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` of the views with viewing directions [N, 3]: a random first one, then each time the view whose
    smallest angle to those already taken is largest (ties broken at random).

    >>> a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    >>> sorted(spread_views(np.stack([np.cos(a), np.sin(a), 0 * a], 1), 4, np.random.default_rng(0)))
    [0, 2, 4, 6]
    """
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True).clip(1e-12)
    chosen = [int(rng.integers(len(d)))]
    nearest = d @ d[chosen[0]]  # cosine to the closest chosen view (larger: closer)
    for _ in range(count - 1):
        nearest[chosen] = np.inf
        best = np.flatnonzero(nearest <= nearest.min() + 1e-9)
        pick = int(rng.choice(best))
        chosen.append(pick)
        nearest = np.maximum(nearest, d @ d[pick])
    return chosen


__all__ = ["INPUT_VIEW_MODES", "REFERENCE_MODES", "diffusion_views", "reconstruction_views", "spread_views"]
