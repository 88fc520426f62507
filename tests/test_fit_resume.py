"""resume: auto continues a crashed run exactly: per-step losses, EMA, optimizer, scheduler, data position.

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
from callbacks.paths import CheckpointPaths, RunConflictError
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

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append((self.global_step, loss.item()))
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
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


class CrashAt(pl.Callback):
    """Simulates a crash when training reaches ``step`` (after the checkpoints of earlier steps were written)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def make_trainer(paths_cb: CheckpointPaths, max_steps: int, extra=(), ema: EMA | None = None,
                 every_n_train_steps: int = 4) -> pl.Trainer:
    callbacks = [paths_cb, pl.callbacks.ModelCheckpoint(every_n_train_steps=every_n_train_steps, save_top_k=-1),
                 *extra]
    if ema is not None:
        callbacks.append(ema)
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, plugins=[AtomicCheckpointIO()], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True, accelerator="cpu",
                      devices=1, num_sanity_val_steps=0, limit_val_batches=0)


def fit(root: Path, run: str, max_steps: int, resume: str | None = None, extra=(), with_ema: bool = True,
        export_every: int | None = None) -> tuple[TinyRegression, CheckpointPaths, EMA | None]:
    pl.seed_everything(0, workers=True)
    model, data = TinyRegression(), TinyData()
    paths_cb = CheckpointPaths(root=str(root), experiment="tiny", run=run, resume=resume,
                               export_every_n_steps=export_every)
    ema = EMA(decay=0.9) if with_ema else None
    trainer = make_trainer(paths_cb, max_steps, extra, ema)
    trainer.fit(model, datamodule=data, ckpt_path=paths_cb.resume_checkpoint(model, data))
    return model, paths_cb, ema


# ---- tests ----------------------------------------------------------------------------------------------------------
def test_crashed_and_resumed_run_matches_uninterrupted_loss_curve_and_ema(tmp_path):
    total, crash = 25, 14  # 10 batches per epoch: the crash and the resume point (step 12) are mid-epoch
    full, _, full_ema = fit(tmp_path, "full", total)

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, "crashy", total, resume="auto", extra=[CrashAt(crash)])
    resumed, _, resumed_ema = fit(tmp_path, "crashy", total, resume="auto")

    assert resumed.losses[0][0] == 12, "resume must start from the newest complete checkpoint (step 12)"
    full_curve = dict(full.losses)
    assert sorted(full_curve) == list(range(total))
    for step, loss in resumed.losses:
        assert loss == pytest.approx(full_curve[step], abs=1e-6, rel=0), f"step {step}"
    for name, p in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], p, atol=1e-6, rtol=0)
    for name, s in full_ema.ema_state_dict().items():
        torch.testing.assert_close(resumed_ema.ema_state_dict()[name].cpu(), s.cpu(), atol=1e-6, rtol=0)
    assert resumed_ema.num_updates == full_ema.num_updates == total


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
        fit(tmp_path, None, 10, extra=[CrashAt(9)])
    resumed, _, _ = fit(tmp_path, None, 10, resume="auto")
    assert resumed.losses[0][0] == 8
    assert len(list((tmp_path / "tiny").iterdir())) == 1


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    fit(tmp_path, "r", 4, with_ema=False)
    with pytest.raises(RunConflictError, match="already holds checkpoints"):
        fit(tmp_path, "r", 8, with_ema=False)
