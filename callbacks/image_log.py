"""Image grids of validation predictions, labelled with view names, to TensorBoard / W&B and PNG files.

The module says what to show, this callback is the one place that logs it: ``pl_module.validation_images(batch,
max_scenes)`` returns ``{"tag", "images" [R, C, 3, H, W] in [0, 1], "columns" (C labels), "rows" (R labels or
None), optionally "tiles" (R x C labels: each tile's view when the views differ between rows)}`` or None (nothing to
show this time). Reconstruction: per scene rendered novel views over their ground truth;
diffusion: per scene reference | generated views | ground truth of the validation's sampled batch. One grid per
validation, under ``val/<tag>`` in TensorBoard / W&B and as ``<run>/logs/images/step_<N>_<tag>.png``
(``callbacks.paths.run_log_file``: the path resolver's run folder, ``default_root_dir`` without one).

Example:
    >>> grid = labelled_grid(torch.rand(2, 3, 3, 16, 16), ["front", "right", "back"], ["pred", "gt"])
    >>> grid.shape[2], grid.dtype
    (3, dtype('uint8'))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image, ImageDraw
from torch import Tensor

from callbacks.paths import run_log_file

log = logging.getLogger(__name__)

HEADER_PX = 14
ROW_LABEL_PX = 34


def _to_uint8(images: Tensor) -> np.ndarray:
    """[..., 3, H, W] in [0, 1] -> [..., H, W, 3] uint8."""
    return (images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).movedim(-3, -1).cpu().numpy()


CHAR_PX, LINE_PX = 6, 11  # PIL's default bitmap font


def wrap_label(text: str, width_px: int) -> list[str]:
    """``text`` in lines that fit ``width_px`` (PIL's default font), broken after ``_`` / ``-`` / spaces where it can,
    inside a word only when a word alone is too wide: a label is never cut off."""
    per_line = max(1, width_px // CHAR_PX)
    words, lines, line = [w for w in _split_keep(str(text)) if w], [], ""
    for word in words:
        while len(word) > per_line:  # a word wider than the tile: break it
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(word[:per_line])
            word = word[per_line:]
        if len(line) + len(word.rstrip()) > per_line:
            lines.append(line.rstrip())
            line = ""
        line += word
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def _split_keep(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        cur += ch
        if ch in "_- ":
            out.append(cur)
            cur = ""
    return [*out, cur]


def labelled_grid(images: Tensor, column_labels: Sequence[str], row_labels: Sequence[str] | None = None,
                  tile_labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """images [R, C, 3, H, W] in [0, 1] -> one uint8 image with a header of ``column_labels`` (C names, wrapped onto
    as many lines as the longest needs, never cut), ``row_labels`` (R names) down the left when given, and
    ``tile_labels`` (R x C names, e.g. each tile's view when the views differ between rows) in each tile's corner."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"labelled_grid wants [R, C, 3, H, W], got {tuple(images.shape)}")
    r, c, _, h, w = images.shape
    if len(column_labels) != c or (row_labels is not None and len(row_labels) != r):
        raise ValueError(f"labelled_grid: {c} columns / {r} rows but {len(column_labels)} column labels and "
                         f"{None if row_labels is None else len(row_labels)} row labels")
    if tile_labels is not None and (len(tile_labels) != r or any(len(t) != c for t in tile_labels)):
        raise ValueError(f"labelled_grid: tile_labels must be {r} x {c}")
    tiles = _to_uint8(images)  # [R, C, H, W, 3]
    body = tiles.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, 3)
    heads = [wrap_label(name, w - 2) for name in column_labels]
    header = HEADER_PX + LINE_PX * (max(len(x) for x in heads) - 1)
    rows_wrapped = [wrap_label(name, ROW_LABEL_PX - 2) for name in (row_labels or [])]
    left = ROW_LABEL_PX if row_labels is not None else 0
    canvas = Image.new("RGB", (left + c * w, header + r * h), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (left, header))
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(heads):
        draw.multiline_text((left + j * w + 2, 1), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    for i, lines in enumerate(rows_wrapped):
        draw.multiline_text((2, header + i * h + max(0, h // 2 - LINE_PX * len(lines) // 2)), "\n".join(lines),
                            fill=(0, 0, 0), spacing=0)
    for i, names in enumerate(tile_labels or []):
        for j, name in enumerate(names):
            lines = wrap_label(name, w - 2)
            x, y = left + j * w + 1, header + (i + 1) * h - LINE_PX * len(lines) - 1
            box = (x, y, x + CHAR_PX * max(len(s) for s in lines) + 2, header + (i + 1) * h - 1)
            draw.rectangle(box, fill=(255, 255, 255))
            draw.multiline_text((x + 1, y), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    return np.asarray(canvas)


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


__all__ = ["ImageLogger", "labelled_grid", "wrap_label"]
