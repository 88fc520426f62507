"""Resume says what it skipped, and a checkpoint save never loses logged rows (issue 16): ``--resume auto`` names
every cut-short / corrupt checkpoint it passes over; the loggers are flushed before each checkpoint save."""

from __future__ import annotations

import csv
import logging

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger
from test_fit_resume import TinyData, TinyRegression, fit

from callbacks.atomic import AtomicCheckpointIO
from callbacks.paths import CheckpointPaths


def test_resume_auto_names_each_corrupt_checkpoint_it_skips(tmp_path, caplog):
    _, paths_cb, _ = fit(tmp_path, "r", 8, with_ema=False)
    ckpts = paths_cb.paths.checkpoint_dir
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names == ["epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]
    for name in ("epoch=0-step=8.ckpt", "last.ckpt"):  # cut short / garbage: as a kill or a bad disk leaves them
        data = (ckpts / name).read_bytes()
        (ckpts / name).write_bytes(data[: len(data) // 2] if name == "last.ckpt" else b"not a checkpoint")
    cb = CheckpointPaths(root=str(tmp_path), experiment="tiny", run="r", resume="auto")
    with caplog.at_level(logging.WARNING, logger="mvlift.checkpoints"):
        chosen = cb.resume_checkpoint(TinyRegression(), TinyData())
    assert chosen.endswith("epoch=0-step=4.ckpt")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    for name in ("epoch=0-step=8.ckpt", "last.ckpt"):
        assert any(str(ckpts / name) in m and "not a complete checkpoint" in m for m in skipped), skipped


def _logged_steps(folder) -> set[int]:
    files = list((folder / "csv").glob("version_*/metrics.csv"))
    rows = [r for f in files for r in csv.DictReader(f.open())]
    return {int(r["step"]) for r in rows if r.get("train/loss")}


class Kill(pl.Callback):
    """A kill (SIGKILL: nothing flushes after it) at ``step``, while its checkpoint is written (``in_save``) or when
    the step starts: records the rows on disk at that moment (Lightning flushes its loggers on an exception, a
    killed process does not) and stops the run."""

    def __init__(self, folder, step: int, in_save: bool):
        self.folder, self.step, self.in_save, self.on_disk = folder, step, in_save, None

    def _kill(self, trainer):
        if trainer.global_step == self.step:
            self.on_disk = _logged_steps(self.folder)
            raise RuntimeError(f"killed at step {self.step}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.in_save:
            self._kill(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.in_save:
            self._kill(trainer)


@pytest.mark.parametrize(("step", "in_save", "logged"), [(4, True, {0, 1, 2}), (6, False, {0, 1, 2, 3, 4})],
                         ids=["during_the_save", "after_the_save"])
def test_rows_logged_before_a_checkpoint_save_are_on_disk(tmp_path, step, in_save, logged):
    """The rows logged before a checkpoint save are on disk when the process dies (Lightning 2.6 writes the CSV at
    each log; CheckpointPaths.on_save_checkpoint flushes every logger before a save too)."""
    pl.seed_everything(0)
    paths_cb = CheckpointPaths(root=str(tmp_path / "runs"), experiment="tiny", run="r")
    kill = Kill(tmp_path, step, in_save)
    trainer = pl.Trainer(max_steps=8, callbacks=[paths_cb, kill, pl.callbacks.ModelCheckpoint(every_n_train_steps=4)],
                         plugins=[AtomicCheckpointIO()], logger=CSVLogger(str(tmp_path), name="csv"),
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit(TinyRegression(), datamodule=TinyData())
    # during the save: the rows of steps 0-2 (step 3's row is logged after its checkpoint, and logged again by the
    # resumed run, which starts before it); after the save: the saved step's own row too
    assert kill.on_disk is not None and logged <= kill.on_disk
