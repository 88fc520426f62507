"""A non-finite loss or gradient stops the run at that step, before the update (or is skipped, counted and logged):
callbacks.nonfinite.NonFiniteGuard, which tools.fit adds to every run (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch
from test_fit_cli import _config

from callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from callbacks.run_layout import RunPaths
from lightning_modules.reconstruction.module import ReconstructionModule
from tools.fit import main


def _scale_loss_at(monkeypatch, factor: float) -> set[int]:
    """Multiply the loss of the given training steps (0-based global_step before the update) by ``factor``, which
    the guard sees as the step's loss too; returns the set of steps to fill."""
    original = ReconstructionModule.training_step
    steps: set[int] = set()

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.trainer.global_step in steps:
            loss = loss * factor
            self.step_loss = loss.detach()
        return loss

    monkeypatch.setattr(ReconstructionModule, "training_step", training_step)
    return steps


@pytest.fixture()
def nan_at_step(monkeypatch):
    """Make the loss of the given training steps NaN."""
    return _scale_loss_at(monkeypatch, float("nan"))


@pytest.fixture()
def zero_at_steps(monkeypatch):
    """Make the gradient of the given training steps exactly zero (the loss times 0 keeps its graph)."""
    return _scale_loss_at(monkeypatch, 0.0)


def test_a_gradient_that_stays_exactly_zero_stops_the_run_naming_when_it_died(tmp_path, zero_at_steps):
    zero_at_steps.update({1, 2, 3, 4, 5})  # dead from the second step on
    with pytest.raises(NonFiniteError) as e:
        main(["-c", str(_config(tmp_path, run="dead")), "--trainer.max_steps", "8",
              "--nonfinite.zero_grad_steps", "3", "--checkpoint.every_n_train_steps", "1"])
    msg = str(e.value)
    assert "the gradient has been exactly 0 for 3 steps (training steps 2-4, epoch 0)" in msg, msg
    assert "random backgrounds" in msg and "last finite checkpoint:" in msg, msg


def test_zero_gradients_that_are_not_consecutive_or_not_watched_train_on(tmp_path, zero_at_steps):
    zero_at_steps.update({0, 1, 3, 4})  # never three in a row
    cli = main(["-c", str(_config(tmp_path, run="gaps")), "--trainer.max_steps", "6",
                "--nonfinite.zero_grad_steps", "3"])
    guard = next(cb for cb in cli.trainer.callbacks if isinstance(cb, NonFiniteGuard))
    assert cli.trainer.global_step == 6 and guard.zero_run == 0
    resumed = NonFiniteGuard()
    resumed.load_state_dict({**guard.state_dict(), "zero_run": 2})  # a run stopped two dead steps in keeps counting
    assert resumed.zero_run == 2 and resumed.state_dict()["zero_run"] == 2
    zero_at_steps.update({2, 5})  # every step zero, the check off
    cli = main(["-c", str(_config(tmp_path, run="off")), "--trainer.max_steps", "6",
                "--nonfinite.zero_grad_steps", "0"])
    assert cli.trainer.global_step == 6
    with pytest.raises(ValueError, match="zero_grad_steps=-1"):
        NonFiniteGuard(zero_grad_steps=-1)


def _finite(module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_a_nan_loss_stops_the_run_at_that_step_naming_scenes_and_the_last_checkpoint(tmp_path, nan_at_step):
    nan_at_step.add(2)  # the third step
    with pytest.raises(NonFiniteError) as e:
        main(["-c", str(_config(tmp_path, run="r1")), "--checkpoint.every_n_train_steps", "1"])
    msg = str(e.value)
    paths = RunPaths(tmp_path / "runs", "cli", "r1")
    assert "non-finite loss and gradient at training step 3 (epoch 0)" in msg, msg
    assert "syn/" in msg, "the batch's source/scene_id"
    assert f"last finite checkpoint: {paths.checkpoint_dir}" in msg and ("step=2" in msg or "last.ckpt" in msg), msg
    assert "No update of this step was applied" in msg
    last = torch.load(paths.last_checkpoint, weights_only=True)
    assert last["global_step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_diverged_step_whose_loss_has_no_gradient_is_named_not_an_autograd_error(tmp_path):
    """lr 30: the first update throws every Gaussian out of view, the next render is the constant background and
    its loss has no gradient — before, Lightning's backward died with 'element 0 of tensors does not require grad'."""
    with pytest.raises(NonFiniteError, match=r"loss without gradient .* at training step 2 \(epoch 0\)") as e:
        main(["-c", str(_config(tmp_path, run="lr")), "--model.init_args.lr", "30", "--trainer.max_steps", "10"])
    assert "syn/" in str(e.value) and "no checkpoint yet in" in str(e.value)


def test_skip_mode_skips_counts_and_logs_nonfinite_steps(tmp_path, nan_at_step):
    nan_at_step.add(1)
    cli = main(["-c", str(_config(tmp_path, run="skip")), "--nonfinite.skip", "true"])
    guard = next(cb for cb in cli.trainer.callbacks if isinstance(cb, NonFiniteGuard))
    assert guard.skipped == 1 and cli.trainer.global_step == 3
    assert _finite(cli.model), "the skipped step applied no update"
    rows = RunPaths(tmp_path / "runs", "cli", "skip").metric_rows()
    skipped = [float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped") not in (None, "")]
    assert skipped and set(skipped) == {1.0}, rows
    assert torch.load(cli.trainer.checkpoint_callback.last_model_path,
                      weights_only=True)["callbacks"]["NonFiniteGuard"]["skipped"] == 1


def test_a_skipped_step_leaves_parameters_and_optimizer_state_untouched():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in opt.state[model.weight].items()}
    model(torch.full((1, 3), math.nan)).sum().backward()
    for p in model.parameters():  # what the guard does in skip mode
        p.grad = None
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in opt.state[model.weight].items())
