"""Image grids of validation predictions, labelled with view names, to TensorBoard / W&B and PNG files.

The module says what to show, this callback is the one place that logs it: ``pl_module.validation_images(batch,
max_scenes)`` returns ``{"tag", "images" [R, C, 3, H, W] in [0, 1], "columns" (C labels), "rows" (R labels or
None), optionally "tiles" (R x C labels: each tile's view when the views differ between rows)}`` or None (nothing to
show this time). Reconstruction: per scene rendered novel views over their ground truth;
diffusion: per scene reference | generated views | ground truth of the validation's sampled batch. One grid per
validation, under ``val/<tag>`` in TensorBoard / W&B and as ``<run>/logs/images/step_<N>_<tag>.png``
(``callbacks.paths.run_log_file``: the path resolver's run folder, ``default_root_dir`` without one).

The grid itself is drawn by ``geometry.images.labelled_grid`` (also used by ``tools.evaluate``'s reports).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from callbacks.paths import run_log_file
from geometry.images import labelled_grid

log = logging.getLogger("mvlift.images")

class ImageLogger(Callback):
    """Log labelled validation image grids (first validation batch) every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: minimum number of optimizer steps between two logged grids.
        max_scenes: scenes (rows) per grid.
        write_png: also write the grid as a PNG under the run's ``logs/images``.
    """

    def __init__(self, every_n_steps: int = 1000, max_scenes: int = 4, write_png: bool = True):
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.max_scenes = int(max_scenes)
        self.write_png = write_png
        self._last_step: int | None = None
        self.last_grid: np.ndarray | None = None
        self.last_path: Path | None = None

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return self._last_step is None or trainer.global_step - self._last_step >= self.every_n_steps

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or not self._due(trainer):
            return
        grid = self.make_grid(pl_module, batch)
        if grid is None:
            return
        self._last_step = trainer.global_step
        tag, image = grid
        self.last_grid = image
        if trainer.is_global_zero:
            self._emit(trainer, tag, image)

    def make_grid(self, pl_module: pl.LightningModule, batch: dict) -> tuple[str, np.ndarray] | None:
        """(tag, labelled uint8 grid) of what the module shows for ``batch``, None when it shows nothing."""
        show = getattr(pl_module, "validation_images", None)
        shown = show(batch, self.max_scenes) if show is not None else None
        if shown is None:
            return None
        return shown["tag"], labelled_grid(shown["images"], shown["columns"], shown.get("rows"), shown.get("tiles"))

    def _emit(self, trainer: pl.Trainer, tag: str, image: np.ndarray) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):  # TensorBoard
                exp.add_image(f"val/{tag}", image, step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # W&B
                logger.log_image(f"val/{tag}", [image], step=step)
        if self.write_png:
            folder = run_log_file(trainer, "images")
            folder.mkdir(parents=True, exist_ok=True)
            self.last_path = folder / f"step_{step:07d}_{tag}.png"
            Image.fromarray(image).save(self.last_path)


__all__ = ["ImageLogger"]
