"""The constructor arguments an export stores and ``from_export`` passes back to ``__init__``.

A module trained through ``python -m tools.fit`` (LightningCLI) carries two extra entries in ``self.hparams``,
``_class_path`` and ``_instantiator``, that Lightning uses for ``load_from_checkpoint``; they are not arguments of
the module, so exports drop every ``_``-prefixed key (and ``from_export`` drops them from exports written before).
The settings of the machine that trained (``RUNTIME``: ``compile``, ``attention_backend``) are not the model's:
exports never carry them, and a module rebuilt from an export takes them as overrides. JSON turns tuples into lists;
``betas`` comes back as a tuple.

Example:
    >>> init_hparams({"lr": 1e-4, "betas": [0.9, 0.95], "_class_path": "x.Y", "compile": False, "init_from": "w"},
    ...              drop=("init_from",))
    {'lr': 0.0001, 'betas': (0.9, 0.95)}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

RUNTIME = ("compile", "attention_backend")


def init_hparams(hparams: Mapping[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """``hparams`` without private (``_``-prefixed) keys, ``RUNTIME`` settings and ``drop``; ``betas`` as a tuple."""
    drop = set(drop) | set(RUNTIME)
    out = {k: v for k, v in dict(hparams).items() if not k.startswith("_") and k not in drop}
    if isinstance(out.get("betas"), list):
        out["betas"] = tuple(out["betas"])
    return out


__all__ = ["RUNTIME", "init_hparams"]
