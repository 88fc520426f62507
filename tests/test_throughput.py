"""callbacks.throughput.StepTimer: step time and the share of it spent waiting for data."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from torch import nn

from callbacks.throughput import StepTimer


class _Slow(torch.utils.data.Dataset):
    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return {"images": torch.full((3,), float(i))}


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(0.02)  # the "compute"
        return self.net(batch["images"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(delay: float, root) -> dict:
    timer = StepTimer(warmup_steps=1)
    trainer = pl.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                         default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(_Tiny(), torch.utils.data.DataLoader(_Slow(delay), batch_size=2))
    return timer.summary(trainer)


def test_data_wait_is_measured_and_separates_a_slow_loader_from_a_fast_one(tmp_path):
    slow, fast = _fit(0.03, tmp_path / "slow"), _fit(0.0, tmp_path / "fast")  # batch of 2: 60 ms of loading per step in the slow run
    assert slow["timed_steps"] == fast["timed_steps"] == 7 and slow["global_batch"] == 2
    assert slow["data_wait_s_median"] >= 0.05 and 0.4 < slow["data_wait_fraction"] < 1.0
    assert fast["data_wait_fraction"] < 0.3
    assert slow["step_s_median"] > fast["step_s_median"] + 0.04
    assert (tmp_path / "slow" / "logs" / "throughput.json").is_file()  # no run folder: under default_root_dir
    for run in (slow, fast):  # the window (steps 1..8) agrees with the per-step figures on a steady run
        assert abs(run["window_step_s"] / run["step_s_median"] - 1) < 0.5
        assert abs(run["window_samples_per_s"] - run["global_batch"] / run["window_step_s"]) < 1e-9
