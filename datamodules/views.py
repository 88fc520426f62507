"""Which views of a scene each stage uses.

Diffusion: the rig's target views are the scene's first ``rig.num_views`` views, in rig order; one reference
(conditioning) view is chosen ``fixed`` (an index), ``random`` (any of the scene's views) or ``random_rig`` (one of
the rig's views). Reconstruction: ``num_views`` random distinct views, the first ``num_input_views`` are inputs.

Example:
    >>> import numpy as np
    >>> ref, targets = diffusion_views(8, 6, "fixed", 0, np.random.default_rng(0))
    >>> ref, targets
    (0, [0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

import numpy as np

REFERENCE_MODES = ("fixed", "random", "random_rig")


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
                         rng: np.random.Generator) -> list[int]:
    """``num_views`` distinct random views; the first ``num_input_views`` are the inputs, the rest supervision."""
    if not 1 <= num_input_views <= num_views:
        raise ValueError(f"need 1 <= num_input_views ({num_input_views}) <= num_views ({num_views})")
    if num_data_views < num_views:
        raise ValueError(f"scene has {num_data_views} views, {num_views} requested")
    return [int(v) for v in rng.choice(num_data_views, size=num_views, replace=False)]


__all__ = ["REFERENCE_MODES", "diffusion_views", "reconstruction_views"]
