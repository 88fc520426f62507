"""The image logger is the one place that logs validation grids: one per validation, labelled with view names."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger
from test_diffusion import SIZE, make_batch, tiny_module
from torch.utils.data import DataLoader

from callbacks.image_log import ImageLogger


class _Experiment:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images.append((tag, image.shape, step, dataformats))


class _RecordingLogger(Logger):
    def __init__(self):
        super().__init__()
        self._exp = _Experiment()

    @property
    def name(self):
        return "rec"

    @property
    def version(self):
        return 0

    @property
    def experiment(self):
        return self._exp

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_one_labelled_grid_per_validation_from_the_diffusion_modules_validation_images(tmp_path):
    m = tiny_module(attention="sparse")
    samples = [{k: v[i] for k, v in make_batch(b=2).items()} for i in range(2)]
    loader = DataLoader(samples, batch_size=2)
    rec, images = _RecordingLogger(), ImageLogger(every_n_steps=1, max_scenes=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=rec, callbacks=[images], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         val_check_interval=1, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(m, loader, loader)
    tags = [tag for tag, *_ in rec.experiment.images]
    assert tags == ["val/generated_views"] * 2, tags  # one grid per validation, none logged by the module itself
    _, shape, _, fmt = rec.experiment.images[-1]
    assert fmt == "HWC" and shape[1] == (1 + 2 * 6) * SIZE  # reference | 6 generated | 6 ground truth
    pngs = sorted((tmp_path / "logs" / "images").glob("step_*_generated_views.png"))
    assert [p.name for p in pngs] == ["step_0000001_generated_views.png", "step_0000002_generated_views.png"]


def test_labels_wrap_instead_of_being_cut_and_tiles_name_their_own_view():
    import torch

    from geometry.images import CHAR_PX, labelled_grid, wrap_label

    assert wrap_label("gt front_right", 60) == ["gt front_", "right"]  # the evaluation grids once said "gtfront_r"
    assert "".join(wrap_label("a_very_long_view_name_indeed", 30)) == "a_very_long_view_name_indeed"
    assert all(len(line) * CHAR_PX <= 30 for line in wrap_label("a_very_long_view_name_indeed", 30))
    one = labelled_grid(torch.zeros(1, 2, 3, 60, 60), ["front", "back"])
    two = labelled_grid(torch.zeros(1, 2, 3, 60, 60), ["gt front_right", "back"])
    assert two.shape[0] > one.shape[0]  # a wrapped label makes the header taller, nothing is dropped
    tiled = labelled_grid(torch.zeros(1, 2, 3, 60, 60), ["a", "b"], tile_labels=[["left", "right"]])
    assert (tiled[-12:, :60] > 0).any() and (tiled[-12:, 60:] > 0).any()  # a label box in each tile's corner
    import pytest

    with pytest.raises(ValueError, match="tile_labels must be 1 x 2"):
        labelled_grid(torch.zeros(1, 2, 3, 8, 8), ["a", "b"], tile_labels=[["x"]])
