"""FaceLift's released checkpoints for both stages -> mvlift exports (``convert``; ``python -m tools.convert``)."""
