"""callbacks.throughput.StepTimer: step time and the share of it spent waiting for data."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
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


class _SlowSave(pl.Callback):
    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        time.sleep(0.5)


def test_the_window_closes_at_max_steps_before_the_final_checkpoint_is_written(tmp_path):
    """A slow checkpoint save at the last step is not training throughput: the window ends before it."""
    timer = StepTimer(warmup_steps=1, sync_cuda=False)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=8)
    trainer = pl.Trainer(max_steps=8, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ckpt, timer, _SlowSave()])
    trainer.fit(_Tiny(), torch.utils.data.DataLoader(_Slow(0.0), batch_size=2))
    assert list((tmp_path / "ckpt").glob("*step=8*.ckpt")), "the final checkpoint was written (slowly)"
    run = timer.summary(trainer)
    assert run["window_step_s"] < 0.5 / 7, "0.5 s of saving spread over 7 steps would show"
    assert abs(run["window_step_s"] / run["step_s_median"] - 1) < 0.5


def test_startup_is_the_time_from_the_process_start_to_the_first_training_batch(tmp_path):
    """In a fresh process that sleeps 1.5 s before it builds anything, then fits with a data set whose first item
    takes 0.5 s: startup_s covers both (and the interpreter's imports), and is printed."""
    import json
    import subprocess
    import sys

    script = f"""
import time; time.sleep(1.5)
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import lightning.pytorch as pl, torch
from callbacks.throughput import StepTimer
from test_throughput import _Slow, _Tiny
timer = StepTimer(warmup_steps=1)
trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                     default_root_dir={str(tmp_path)!r}, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[timer])
t0 = time.perf_counter()
trainer.fit(_Tiny(), torch.utils.data.DataLoader(_Slow(0.25), batch_size=2))
print("RESULT", json.dumps({{"startup_s": timer.summary(trainer)["startup_s"], "fit_s": time.perf_counter() - t0}}))
"""
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.split("RESULT", 1)[1])
    assert res["startup_s"] >= 1.5 + 0.5, res  # the sleep before anything, and the first batch's loading
    assert res["startup_s"] < 1.5 + res["fit_s"] + 60, res  # not counted from some earlier clock
    from callbacks.throughput import startup_in_log

    assert startup_in_log(out.stdout + out.stderr) == pytest.approx(res["startup_s"], abs=0.05), "printed as measured"
