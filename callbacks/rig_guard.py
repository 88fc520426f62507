"""The rig guard: chained stages must agree on the camera rig.

The diffusion model generates views with its rig's cameras; the reconstruction model must have been trained on the
same rig, or its 3D lifts are silently wrong (the user's FaceLift-rig diffusion + 20° mouse-rig GS-LRM failure).
Both checkpoints store their rig (read by :func:`lightning_modules.artifacts.checkpoint_rig`).
``geometry.rig.check_rigs`` compares two rigs view by view (``Rig.compare``) and raises ``RigMismatchError``
naming both rigs and the per-view difference, or logs a warning when the mismatch is allowed; it lives below the
library and the callbacks, which both call it: :func:`check_checkpoint_rigs` on two checkpoints' stored rigs. :func:`check_data_matches_model` is the same idea for ``tools.fit``: the DataModule's stage and rig must
be the model's.

Example:
    >>> check_rigs("facelift_6view", "facelift_6view").ok
    True
    >>> check_rigs("facelift_6view", "mouse_oblique20_6view")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geometry.rig.RigMismatchError: rig mismatch: ...
"""

from __future__ import annotations

import os
from typing import Any

from geometry.rig import Rig, RigDiff, RigMismatchError, check_rigs, load_rig
from lightning_modules.artifacts import checkpoint_rig


class StageMismatchError(ValueError):
    """The DataModule serves another stage than the model's (:func:`check_data_matches_model`)."""


def check_checkpoint_rigs(diffusion_ckpt: str | os.PathLike, reconstruction_ckpt: str | os.PathLike,
                          allow_mismatch: bool = False, trust: bool = False, **tolerances: float) -> RigDiff:
    """:func:`check_rigs` on the rigs stored with two checkpoints (``.ckpt`` files or export folders)."""
    return check_rigs(checkpoint_rig(diffusion_ckpt, trust), checkpoint_rig(reconstruction_ckpt, trust),
                      allow_mismatch=allow_mismatch, **tolerances)


def _rig_of(obj: Any) -> Rig | None:
    rig = getattr(obj, "rig", None)
    if rig is None:
        return None
    return rig if isinstance(rig, Rig) else load_rig(rig)


def check_data_matches_model(model: Any, datamodule: Any) -> None:
    """The DataModule's ``stage`` and ``rig`` (when it declares them) must be the model's; error naming both."""
    meta = model.mvlift_metadata() if hasattr(model, "mvlift_metadata") else {}
    model_stage = meta.get("stage")
    data_stage = getattr(datamodule, "stage", None)
    if model_stage and data_stage and data_stage != model_stage:
        raise StageMismatchError(f"data stage {data_stage!r} ({type(datamodule).__name__}) does not match the model's stage "
                         f"{model_stage!r} ({type(model).__name__})")
    model_rig, data_rig = _rig_of(model), _rig_of(datamodule)
    if model_rig is not None and data_rig is not None and data_rig.fingerprint != model_rig.fingerprint:
        diff = model_rig.compare(data_rig)
        raise RigMismatchError(
            f"data rig {data_rig.name!r} ({data_rig.fingerprint}) does not match the model's rig {model_rig.name!r} "
            f"({model_rig.fingerprint}):\n{diff}", diff)


__all__ = ["RigMismatchError", "StageMismatchError", "check_checkpoint_rigs", "check_data_matches_model", "check_rigs"]
