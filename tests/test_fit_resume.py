"""resume: auto continues a crashed run exactly: per-step losses, EMA, optimizer, scheduler, data position
(with MultiViewDataModule: mid-epoch, augmentation on, with and without DataLoader workers), and the DiffusionModule's
training draws (timesteps, noise, condition dropout: seeded per step, not from the global RNG).

Also holds the tiny LightningModule / DataModule / resumable loader used by the other callback tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from callbacks.atomic import AtomicCheckpointIO
from callbacks.ema import EMA
from callbacks.paths import CheckpointPaths
from callbacks.run_layout import RunConflictError
from geometry.rig import load_rig


# ---- tiny training setup -------------------------------------------------------------------------------------------
class PairDataset(Dataset):
    """n fixed random (x [4], y [1]) pairs of a smooth target."""

    def __init__(self, n: int = 40, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.sin(self.x.sum(-1, keepdim=True))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class EpochSampler(Sampler[int]):
    """A permutation per epoch from (seed, epoch); Lightning calls set_epoch."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """DataLoader with state_dict/load_state_dict (Lightning saves it in checkpoints and restores it mid-epoch).

    Lightning does not prefetch from a loader with a length, so the batches yielded are the batches consumed.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0):
        super().__init__(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed), drop_last=True)
        self._yielded, self._skip = 0, 0

    def __iter__(self):
        self._yielded = 0
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i < skip:
                continue
            self._yielded = i + 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "consumed": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch, self._skip = state["epoch"], state["consumed"]
        if self._skip >= len(self):
            self.sampler.epoch, self._skip = self.sampler.epoch + 1, 0


class TinyData(pl.LightningDataModule):
    stage = "tiny"

    def __init__(self, n: int = 40, batch_size: int = 4, seed: int = 0, rig: str = "facelift_6view"):
        super().__init__()
        self.save_hyperparameters()
        self.rig = rig

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(PairDataset(self.hparams.n, self.hparams.seed), self.hparams.batch_size,
                               self.hparams.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(PairDataset(8, seed=99), batch_size=4)


class TinyRegression(pl.LightningModule):
    """A 4-8-1 MLP with AdamW + per-step LR schedule; records (global_step, loss) of every training step."""

    ema_target = "net"

    def __init__(self, lr: float = 0.05, hidden: int = 8, rig: str = "facelift_6view"):
        super().__init__()
        self.save_hyperparameters()
        self.rig = load_rig(rig)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.losses: list[tuple[int, float]] = []
        self.validated: list[tuple[int, int]] = []  # (global_step, val batch_idx) of every validation step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append((self.global_step, loss.item()))
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.validated.append((self.global_step, batch_idx))
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / math.sqrt(1.0 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def mvlift_metadata(self) -> dict:
        return {"stage": "tiny", "rig": self.rig.to_dict(), "version": 1}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mvlift"] = self.mvlift_metadata()

    def export(self, out_dir, ema_weights=None) -> Path:
        out = Path(out_dir)
        torch.save(self.net.state_dict(), out / "model.pt")
        if ema_weights is not None:
            torch.save(ema_weights, out / "model_ema.pt")
        (out / "rig.json").write_text(json.dumps(self.rig.to_dict()))
        return out


class StopAt(pl.Callback):
    """Stops a fit at training step ``step`` as a crash does (``"crash"``: an exception, after the checkpoints of
    earlier steps were written), as a scheduler or a deadline does (``"sigterm"``: the signal to this process;
    Lightning's own handler records it and stops after the batch it is in, raising SIGTERMException), or as
    Lightning's Timer (max_time) and early stopping do (``"should_stop"``: at the end of that step). ``during``
    (crash, sigterm): that step's training batch, or the first batch of the validation that follows it."""

    def __init__(self, step: int, how: str = "crash", during: str = "train"):
        self.step, self.how, self.during = step, how, during

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.how == "should_stop" and trainer.global_step >= self.step:
            trainer.should_stop = True

    def _stop(self, trainer) -> None:
        if trainer.global_step != self.step or self.how == "should_stop":
            return
        if self.how == "crash":
            raise RuntimeError(f"simulated crash at step {self.step}")
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.during == "train":
            self._stop(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.during == "validation" and batch_idx == 0 and not trainer.sanity_checking:
            self._stop(trainer)


def make_trainer(paths_cb: CheckpointPaths, max_steps: int, extra=(), ema: EMA | None = None,
                 every_n_train_steps: int = 4, val_every: int | None = None) -> pl.Trainer:
    """``val_every``: validate (both val batches) every that many steps; none by default."""
    callbacks = [paths_cb, pl.callbacks.ModelCheckpoint(every_n_train_steps=every_n_train_steps, save_top_k=-1),
                 *extra]
    if ema is not None:
        callbacks.append(ema)
    val = {"val_check_interval": val_every, "limit_val_batches": 2} if val_every else {"limit_val_batches": 0}
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, plugins=[AtomicCheckpointIO()], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True, accelerator="cpu",
                      devices=1, num_sanity_val_steps=0, **val)


def fit(root: Path, run: str, max_steps: int, resume: str | None = None, extra=(), with_ema: bool = True,
        export_every: int | None = None, val_every: int | None = None
        ) -> tuple[TinyRegression, CheckpointPaths, EMA | None]:
    pl.seed_everything(0, workers=True)
    model, data = TinyRegression(), TinyData()
    paths_cb = CheckpointPaths(root=str(root), experiment="tiny", run=run, resume=resume,
                               export_every_n_steps=export_every)
    ema = EMA(decay=0.9) if with_ema else None
    trainer = make_trainer(paths_cb, max_steps, extra, ema, val_every=val_every)
    trainer.fit(model, datamodule=data, ckpt_path=paths_cb.resume_checkpoint(model, data))
    return model, paths_cb, ema


def assert_resumed_like_uninterrupted(resumed: TinyRegression, resumed_ema: EMA, full: TinyRegression,
                                      full_ema: EMA) -> None:
    """Every step the resumed run trained has the uninterrupted run's loss, and both end with the same weights and
    EMA."""
    full_curve = dict(full.losses)
    for step, loss in resumed.losses:
        assert loss == pytest.approx(full_curve[step], abs=1e-6, rel=0), f"step {step}"
    for name, p in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], p, atol=1e-6, rtol=0)
    for name, s in full_ema.ema_state_dict().items():
        torch.testing.assert_close(resumed_ema.ema_state_dict()[name].cpu(), s.cpu(), atol=1e-6, rtol=0)


# ---- tests ----------------------------------------------------------------------------------------------------------
def test_crashed_and_resumed_run_matches_uninterrupted_loss_curve_and_ema(tmp_path):
    total, crash = 25, 14  # 10 batches per epoch: the crash and the resume point (step 12) are mid-epoch
    full, _, full_ema = fit(tmp_path, "full", total)

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, "crashy", total, resume="auto", extra=[StopAt(crash)])
    resumed, _, resumed_ema = fit(tmp_path, "crashy", total, resume="auto")

    assert resumed.losses[0][0] == 12, "resume must start from the newest complete checkpoint (step 12)"
    assert sorted(dict(full.losses)) == list(range(total))
    assert_resumed_like_uninterrupted(resumed, resumed_ema, full, full_ema)
    assert resumed_ema.num_updates == full_ema.num_updates == total


def test_a_run_stopped_by_sigterm_during_validation_saves_its_step_and_resumes_exactly(tmp_path):
    """Validation every 5 steps, checkpoints every 4: a SIGTERM in the validation at step 10 writes last.ckpt at step
    10 (before, the last periodic one, step 8, was all that was kept). The resumed run continues from step 10 with the
    same losses, weights and EMA as without the stop; it does not repeat the stopped validation (Lightning resumes a
    checkpoint written after a training step past that step's validation), so step 10 has no validation metrics."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    total = 17
    full, _, full_ema = fit(tmp_path, "full", total, val_every=5)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, "stopped", total, resume="auto", extra=[StopAt(10, "sigterm", during="validation")], val_every=5)
    last = tmp_path / "tiny" / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 10
    resumed, _, resumed_ema = fit(tmp_path, "stopped", total, resume="auto", val_every=5)
    assert resumed.losses[0][0] == 10, "resume must start from the step the SIGTERM stopped at"
    assert resumed.validated == [v for v in full.validated if v[0] > 10], resumed.validated
    assert_resumed_like_uninterrupted(resumed, resumed_ema, full, full_ema)


def test_a_run_stopped_by_sigterm_saves_its_step_and_resumes_exactly(tmp_path):
    """Stopped between periodic checkpoints (every 4 steps; SIGTERM during step 14), the run writes last.ckpt at step
    15 and the resumed run continues from there: the same per-step losses, weights and EMA as without the stop."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    total = 25
    full, _, full_ema = fit(tmp_path, "full", total)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, "stopped", total, resume="auto", extra=[StopAt(14, "sigterm")])
    last = tmp_path / "tiny" / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 15
    resumed, _, resumed_ema = fit(tmp_path, "stopped", total, resume="auto")
    assert resumed.losses[0][0] == 15, "resume must start from the step the SIGTERM stopped at"
    assert_resumed_like_uninterrupted(resumed, resumed_ema, full, full_ema)
    assert resumed_ema.num_updates == full_ema.num_updates == total


# ---- MultiViewDataModule: mixing sampler + domain-gap augmentation -------------------------------------------------
class TinyMultiView(pl.LightningModule):
    """Predicts the target views' mean colours from the (augmented) input views' mean colours; records, per training
    step, (global_step, loss, scene ids, checksum of the augmented inputs)."""

    ema_target = "net"

    def __init__(self, lr: float = 0.05, rig: str = "facelift_6view"):
        super().__init__()
        self.save_hyperparameters()
        self.rig = load_rig(rig)
        self.net = nn.Sequential(nn.Linear(2 * 3, 16), nn.Tanh(), nn.Linear(16, 3))
        self.steps: list[tuple[int, float, tuple[str, ...], float]] = []

    def training_step(self, batch, batch_idx):
        x = batch["input_images"].mean(dim=(-1, -2)).flatten(1)  # [B, Vin * 3], augmented
        y = batch["images"][:, 2:].mean(dim=(-1, -2)).mean(1)  # [B, 3], clean targets
        loss = nn.functional.mse_loss(self.net(x), y)
        self.steps.append((self.global_step, loss.item(), tuple(batch["scene_id"]),
                           batch["input_images"].double().sum().item()))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / math.sqrt(1.0 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def mvlift_metadata(self) -> dict:
        return {"stage": "reconstruction", "rig": self.rig.to_dict(), "version": 1}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mvlift"] = self.mvlift_metadata()


def multiview_data(num_workers: int = 0, persistent_workers: bool = False, augment_on: str = "loader"):
    from datamodules.datamodule import MultiViewDataModule

    # 10 draws per epoch, batch 2: 5 steps per epoch. Default domain-gap augmentation (synthetic only, p < 1 ops).
    return MultiViewDataModule(stage="reconstruction", image_size=16, num_views=3, num_input_views=2, batch_size=2,
                               samples_per_epoch=10, val_fraction=0, seed=3, num_workers=num_workers,
                               persistent_workers=persistent_workers, augment_on=augment_on,
                               sources=[{"name": "syn", "num_scenes": 12, "weight": 0.6},
                                        {"name": "real", "kind": "synthetic", "realistic": True, "num_scenes": 8,
                                         "weight": 0.4, "seed": 1}])


def fit_multiview(root: Path, run: str | None, max_steps: int, resume: str | None = None, extra=(),
                  ckpt_path: str | None = None, every: int = 4, **data_kw) -> tuple[TinyMultiView, CheckpointPaths, EMA]:
    pl.seed_everything(0, workers=True)
    model, data = TinyMultiView(), multiview_data(**data_kw)
    paths_cb = CheckpointPaths(root=str(root), experiment="mv", run=run, resume=resume)
    ema = EMA(decay=0.9)
    trainer = make_trainer(paths_cb, max_steps, extra, ema, every_n_train_steps=every)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path or paths_cb.resume_checkpoint(model, data))
    return model, paths_cb, ema


@pytest.mark.parametrize(("workers", "every", "crash", "saved", "on"), [
    (0, 4, 11, (8, 1, 6), "loader"), (2, 4, 11, (8, 1, 6), "loader"), (0, 5, 7, (5, 0, 10), "loader"),
    (0, 4, 11, (8, 1, 6), "device")],
    ids=["mid_epoch", "mid_epoch_2_persistent_workers", "after_last_batch_of_epoch", "mid_epoch_augment_on_device"])
def test_resume_with_mixed_sources_and_augmentation_matches_uninterrupted_curve(tmp_path, workers, every, crash,
                                                                                 saved, on, monkeypatch):
    """5 steps per epoch. mid_epoch: checkpoints every 4 steps, a crash at step 11, resume auto continues from step 8
    = epoch 1, draw 6 of 10; after_last_batch_of_epoch: from step 5 = epoch 0, draw 10 of 10. Every later step must
    see the same scenes, the same augmented inputs and give the same loss as the uninterrupted run."""
    kw = {"num_workers": workers, "persistent_workers": workers > 0, "every": every, "augment_on": on}
    total = 14
    resume_step, epoch, draws = saved
    full, _, full_ema = fit_multiview(tmp_path, "full", total, **kw)
    assert [s[0] for s in full.steps] == list(range(total))

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_multiview(tmp_path, "crashy", total, resume="auto", extra=[StopAt(crash)], **kw)
    resumed, paths_cb, resumed_ema = fit_multiview(tmp_path, "crashy", total, resume="auto", **kw)

    ckpt = next(p for p in paths_cb.paths.checkpoints() if f"step={resume_step}." in p.name)
    state = torch.load(ckpt, weights_only=False)["MultiViewDataModule"]
    # the step counter seeds device augmentation only; loader augmentation is seeded by each draw
    aug_step = resume_step if on == "device" else 0
    assert (state["epoch"], state["samples"], state["aug_step"]) == (epoch, draws, aug_step)
    assert [s[0] for s in resumed.steps] == list(range(resume_step, total)), "resume from the newest checkpoint"
    reference = {s[0]: s for s in full.steps}
    for step, loss, scenes, checksum in resumed.steps:
        assert scenes == reference[step][2], f"step {step}: other scenes than the uninterrupted run"
        assert checksum == pytest.approx(reference[step][3], abs=1e-9, rel=0), f"step {step}: other augmentation"
        assert loss == pytest.approx(reference[step][1], abs=1e-7, rel=0), f"step {step}: other loss"
    for name, p in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], p, atol=1e-6, rtol=0)
    for name, s in full_ema.ema_state_dict().items():
        torch.testing.assert_close(resumed_ema.ema_state_dict()[name], s, atol=1e-6, rtol=0)

    if resume_step == 8 and workers == 0 and on == "loader":  # control: without the DataModule's state, epoch 1 restarts: other curve
        from datamodules.datamodule import MultiViewDataModule

        monkeypatch.setattr(MultiViewDataModule, "load_state_dict", lambda self, state: None)
        blind, _, _ = fit_multiview(tmp_path, "control", total, ckpt_path=str(ckpt), **kw)
        assert [s[0] for s in blind.steps] == list(range(8, total))
        assert blind.steps[0][2] != reference[8][2]
        assert any(abs(b[1] - reference[b[0]][1]) > 1e-4 for b in blind.steps)


def test_a_run_that_reached_max_steps_is_extended_from_its_last_step(tmp_path):
    """Checkpoints every 4 steps, training stops at max_steps=11: last.ckpt must hold step 11 (not 8), and a resume
    with max_steps=14 continues from there exactly as the uninterrupted run."""
    total = 14
    full, _, _ = fit_multiview(tmp_path, "full", total)
    _, paths_cb, _ = fit_multiview(tmp_path, "short", 11, resume="auto")
    last = torch.load(paths_cb.paths.last_checkpoint, weights_only=False)
    assert last["global_step"] == 11 and last["MultiViewDataModule"]["samples"] == 2  # epoch 2, 1 batch
    resumed, _, _ = fit_multiview(tmp_path, "short", total, resume="auto")
    assert [s[0] for s in resumed.steps] == [11, 12, 13]
    reference = {s[0]: s for s in full.steps}
    for step, loss, scenes, _checksum in resumed.steps:
        assert scenes == reference[step][2] and loss == pytest.approx(reference[step][1], abs=1e-7, rel=0), step


def test_resume_auto_without_checkpoint_starts_fresh_and_writes_run_layout(tmp_path):
    model, paths_cb, _ = fit(tmp_path, None, 6, resume="auto", export_every=3)
    paths = paths_cb.paths
    assert model.losses[0][0] == 0
    assert paths.run_dir.parent == tmp_path / "tiny"
    assert (paths.checkpoint_dir / "last.ckpt").is_file()
    assert sorted(paths.exports()) == [3, 6]
    assert (paths.export_dir(6) / "model_ema.pt").is_file()
    info = json.loads(paths.run_json.read_text())
    assert info["stage"] == "tiny" and info["rig"]["name"] == "facelift_6view"


def test_resume_auto_without_run_name_finds_the_run_with_the_same_config(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, None, 10, extra=[StopAt(9)])
    resumed, _, _ = fit(tmp_path, None, 10, resume="auto")
    assert resumed.losses[0][0] == 8
    assert len(list((tmp_path / "tiny").iterdir())) == 1


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    fit(tmp_path, "r", 4, with_ema=False)
    with pytest.raises(RunConflictError, match="already holds checkpoints"):
        fit(tmp_path, "r", 8, with_ema=False)


# ---- DiffusionModule: seeded training draws ------------------------------------------------------------------------
def _recording_diffusion(**kw):
    """A tiny in-memory DiffusionModule (random tiny UNet / VAE / CLIP) that records (global_step, loss) per step."""
    from lightning_modules.diffusion.module import DiffusionModule

    class RecordingDiffusion(DiffusionModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.losses.append((self.global_step, loss.item()))
            return loss

    args = {"rig": "facelift_6view", "view_embeddings": "learned", "view_init": "scratch", "view_tokens": 4,
            "image_size": 16, "cond_drop_prob": 0.5, "lr": 1e-3}
    m = RecordingDiffusion(**{**args, **kw})
    m.losses = []
    return m


def diffusion_data():
    from datamodules.datamodule import MultiViewDataModule

    # 4 draws per epoch, batch 1: 4 steps per epoch. Procedural scenes: white-background synthetic + realistic
    # (background as is); default domain-gap augmentation of the reference.
    return MultiViewDataModule(stage="diffusion", image_size=16, batch_size=1, samples_per_epoch=4, val_fraction=0,
                               seed=3, num_workers=0,
                               sources=[{"name": "syn", "num_scenes": 6, "weight": 0.6},
                                        {"name": "real", "kind": "synthetic", "realistic": True, "num_scenes": 4,
                                         "weight": 0.4, "seed": 1, "background": "as_is"}])


def fit_diffusion(root: Path, run: str, max_steps: int, resume: str | None = None, extra=(),
                  ckpt_path: str | None = None):
    pl.seed_everything(0, workers=True)
    model, data = _recording_diffusion(), diffusion_data()
    paths_cb = CheckpointPaths(root=str(root), experiment="diffusion", run=run, resume=resume)
    trainer = make_trainer(paths_cb, max_steps, extra, every_n_train_steps=3)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path or paths_cb.resume_checkpoint(model, data))
    return model, paths_cb


def test_diffusion_resume_draws_the_same_timesteps_noise_and_condition_dropout(tmp_path, monkeypatch):
    """Lightning does not checkpoint the global torch RNG: the module's timesteps, noise and classifier-free-guidance
    dropout (p = 0.5 here) come from a generator seeded by (seed, step, rank, micro-batch). 4 steps per epoch,
    checkpoints every 3 steps, a crash at step 8: resume auto continues from step 6 (epoch 1, draw 2) and must give
    the uninterrupted run's losses and weights."""
    total = 9
    full, full_paths = fit_diffusion(tmp_path, "full", total)
    assert [s for s, _ in full.losses] == list(range(total))

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_diffusion(tmp_path, "crashy", total, resume="auto", extra=[StopAt(8)])
    resumed, paths_cb = fit_diffusion(tmp_path, "crashy", total, resume="auto")

    assert [s for s, _ in resumed.losses] == [6, 7, 8], "resume from the newest checkpoint (step 6, mid-epoch)"
    reference = dict(full.losses)
    for step, loss in resumed.losses:
        assert loss == pytest.approx(reference[step], abs=1e-7, rel=0), f"step {step}: other draws than the full run"
    full_state = full.state_dict()
    for name, p in resumed.state_dict().items():
        if isinstance(p, torch.Tensor):
            torch.testing.assert_close(p, full_state[name], atol=1e-7, rtol=0, msg=name)

    # the training backgrounds are recorded and survive the resume: white synthetic + photos as is = varied
    last = {int(p.name.split("step=")[1].split(".")[0]): p for p in paths_cb.paths.checkpoints() if "step=" in p.name}
    meta = torch.load(last[max(last)], weights_only=False)["mvlift"]
    full_meta = torch.load(next(p for p in full_paths.paths.checkpoints() if "step=9." in p.name),
                           weights_only=False)["mvlift"]
    assert meta["noise_seed"] == 0
    assert meta["background"] == full_meta["background"]
    assert meta["background"]["samples"] == total and meta["background"]["varied"] is True
    assert meta["background"]["color"] is None and meta["background"]["sources"] == {"syn": "white", "real": "as_is"}

    # control: with the global RNG (the old behaviour) the resumed steps draw other noise -> other losses
    from lightning_modules.diffusion.module import DiffusionModule

    monkeypatch.setattr(DiffusionModule, "training_generator", lambda self, batch_idx: None)
    blind_full, blind_paths = fit_diffusion(tmp_path, "global_rng", total)
    ckpt = next(p for p in blind_paths.paths.checkpoints() if "step=6." in p.name)
    blind, _ = fit_diffusion(tmp_path, "global_rng_resumed", total, ckpt_path=str(ckpt))
    blind_reference = dict(blind_full.losses)
    assert [s for s, _ in blind.losses] == [6, 7, 8]
    assert any(abs(loss - blind_reference[step]) > 1e-4 for step, loss in blind.losses)


@pytest.mark.filterwarnings("ignore:.*self.log")
def test_training_steps_leave_the_global_torch_rng_alone():
    """Neither stage's training_step may draw from the global RNG (Lightning does not checkpoint it)."""
    from datamodules.datamodule import MultiViewDataModule
    from lightning_modules.reconstruction.module import ReconstructionModule

    for stage, module in (
        ("diffusion", _recording_diffusion()),
        ("reconstruction", ReconstructionModule(image_size=16, num_input_views=2, width=32, depth=1, head_dim=16,
                                                rasterizer="torch")),
    ):
        data = MultiViewDataModule(stage=stage, image_size=16, num_views=3, num_input_views=2, batch_size=2,
                                   num_workers=0, samples_per_epoch=2, val_fraction=0,
                                   sources=[{"name": "syn", "num_scenes": 2, "background": "gray"}])
        data.setup("fit")
        batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
        torch.manual_seed(1)
        before = torch.get_rng_state()
        loss = module.training_step(batch, 0)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(torch.get_rng_state(), before), f"{stage}: training_step drew from the global RNG"
        rec = module.mvlift_metadata()["background"]
        assert rec["color"] == [0.5, 0.5, 0.5] and rec["samples"] == 2 and not rec["varied"], stage


def test_a_run_stopped_early_keeps_its_last_step_in_last_ckpt(tmp_path):
    """max_time stopped a 4.5-minute run at step 3600 and last.ckpt still held step 2000 (checkpoints every 2000)."""
    _, paths_cb, _ = fit(tmp_path, "early", max_steps=50, extra=[StopAt(6, "should_stop")], with_ema=False)
    last = paths_cb.paths.checkpoint_dir / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # periodic checkpoints: steps 4 and 8
    # and a run that reaches max_steps is not saved twice
    _, paths_cb, _ = fit(tmp_path, "full", max_steps=6, with_ema=False)
    assert torch.load(paths_cb.paths.checkpoint_dir / "last.ckpt", weights_only=True)["global_step"] == 6


def test_the_schedule_spans_the_trainers_max_steps_and_an_extension_continues_it():
    """`--resume auto --trainer.max_steps 110` on a run that ended at 100 used to train 10 steps at learning rate 0
    (the schedule read the model's own max_steps)."""
    from lightning_modules.optim import lr_factor
    from lightning_modules.reconstruction.module import ReconstructionModule

    def scheduler(trainer_steps: int):
        m = ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32, depth=1, head_dim=16,
                                 lr=1e-3, warmup_steps=2, max_steps=100)
        m.trainer = pl.Trainer(max_steps=trainer_steps, logger=False, accelerator="cpu")
        return m.configure_optimizers()["lr_scheduler"]["scheduler"]

    finished = scheduler(100)
    for _ in range(100):
        finished.optimizer.step()
        finished.step()
    assert finished.get_last_lr()[0] == 0.0  # cosine to 0 at the end of the run
    extended = scheduler(110)
    extended.load_state_dict(finished.state_dict())  # what a resume restores
    extended.optimizer.step()
    extended.step()
    assert extended.get_last_lr()[0] == pytest.approx(1e-3 * lr_factor(101, 2, 110))
    assert extended.get_last_lr()[0] > 1e-6


def test_a_longer_run_is_the_same_run():
    from callbacks.run_identity import run_identity
    from lightning_modules.reconstruction.module import ReconstructionModule

    def ident(max_steps: int):
        return run_identity(ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2, width=32,
                                                 depth=1, head_dim=16, max_steps=max_steps))["config_hash"]

    assert ident(100) == ident(110)
    assert ident(100) != run_identity(ReconstructionModule(rig="facelift_6view", image_size=16, num_input_views=2,
                                                           width=32, depth=1, head_dim=16, lr=1e-3))["config_hash"]
