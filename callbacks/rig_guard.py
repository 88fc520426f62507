"""The rig guard: chained stages must agree on the camera rig.

The diffusion model generates views with its rig's cameras; the reconstruction model must have been trained on the
same rig, or its 3D lifts are silently wrong (the user's FaceLift-rig diffusion + 20° mouse-rig GS-LRM failure).
Both checkpoints store their rig (read by :func:`lightning_modules.artifacts.checkpoint_rig`). :func:`check_rigs` compares two rigs view by view (``geometry.rig.Rig.compare``) and raises
:class:`RigMismatchError` naming both rigs and the per-view difference, or logs a warning when the mismatch is
allowed. :func:`check_data_matches_model` is the same idea for ``tools.fit``: the DataModule's stage and rig must
be the model's.

Example:
    >>> check_rigs("facelift_6view", "facelift_6view").ok
    True
    >>> check_rigs("facelift_6view", "mouse_oblique20_6view")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    callbacks.rig_guard.RigMismatchError: rig mismatch: ...
"""

from __future__ import annotations

import logging
import os
from typing import Any

from geometry.rig import Rig, RigDiff, load_rig
from lightning_modules.artifacts import checkpoint_rig

log = logging.getLogger(__name__)


class StageMismatchError(ValueError):
    """The DataModule serves another stage than the model's (:func:`check_data_matches_model`)."""


class RigMismatchError(ValueError):
    """Two chained stages use different camera rigs. ``diff`` holds the per-view comparison."""

    def __init__(self, message: str, diff: RigDiff | None = None):
        super().__init__(message)
        self.diff = diff


def _as_rig(rig: dict | Rig | str, role: str) -> Rig:
    try:
        return load_rig(rig)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise ValueError(f"{role} rig: {e}") from e


def check_rigs(
    diffusion_rig: dict | Rig | str,
    reconstruction_rig: dict | Rig | str,
    allow_mismatch: bool = False,
    angle_tol_deg: float = 1.0,
    dist_tol: float = 0.05,
) -> RigDiff:
    """Compare the diffusion model's rig with the reconstruction model's; returns the RigDiff.

    Raises RigMismatchError (naming both rigs, with the per-view table) when they differ beyond the tolerances,
    unless ``allow_mismatch``, which logs the same text as a warning instead.
    """
    a = _as_rig(diffusion_rig, "diffusion")
    b = _as_rig(reconstruction_rig, "reconstruction")
    diff = a.compare(b, angle_tol_deg=angle_tol_deg, dist_tol=dist_tol)
    if diff.ok:
        return diff
    message = (
        f"rig mismatch: the diffusion model generates views with rig {a.name!r} ({a.fingerprint}) but the "
        f"reconstruction model was trained on rig {b.name!r} ({b.fingerprint}); its Gaussians would be lifted with "
        f"the wrong cameras.\n{diff}\n"
        "Use a reconstruction checkpoint trained on the diffusion rig (or the reverse); pass --allow-rig-mismatch "
        "to go on anyway."
    )
    if allow_mismatch:
        log.warning("%s", message.replace("pass --allow-rig-mismatch to go on anyway.", "continuing (allowed)."))
        return diff
    raise RigMismatchError(message, diff)


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
