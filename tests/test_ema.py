"""EMA callback: the shadow follows the decay formula exactly, is checkpointed and restored, validates, exports."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from test_fit_resume import TinyData, TinyRegression, make_trainer

from callbacks.ema import EMA, ema_target, ema_update
from callbacks.paths import CheckpointPaths


class Recorder(pl.Callback):
    """Weights of the EMA target after every optimizer step (placed before the EMA callback)."""

    def __init__(self):
        self.initial = None
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_fit_start(self, trainer, pl_module):
        self.initial = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step[trainer.global_step] = {k: v.clone() for k, v in pl_module.net.state_dict().items()}


def _fit(tmp_path, ema, max_steps, extra=()):
    pl.seed_everything(0)
    model = TinyRegression()
    cb = CheckpointPaths(root=str(tmp_path), experiment="ema", run="r")
    trainer = make_trainer(cb, max_steps, extra=list(extra), ema=ema)
    trainer.fit(model, datamodule=TinyData())
    return model, trainer


@pytest.mark.parametrize("warmup", [False, True])
def test_shadow_follows_the_decay_formula_exactly(tmp_path, warmup):
    decay, every, start, steps = 0.8, 2, 3, 9
    rec = Recorder()
    ema = EMA(decay=decay, every_n_steps=every, start_step=start, warmup=warmup)
    _fit(tmp_path, ema, steps, extra=[rec])
    expected = {k: v.float().clone() for k, v in rec.initial.items()}
    updates = 0
    for t in range(1, steps + 1):
        w = rec.after_step[t]
        if t < start:
            expected = {k: v.float().clone() for k, v in w.items()}
        elif t % every == 0:
            d = min(decay, (1 + updates) / (10 + updates)) if warmup else decay  # warm-up: 0.1, 0.18, 0.25
            expected = {k: s.mul(d).add(w[k], alpha=1 - d) for k, s in expected.items()}
            updates += 1
    assert ema.num_updates == updates == 3  # steps 4, 6, 8
    for k, v in expected.items():
        torch.testing.assert_close(ema.shadow[k], v, rtol=0, atol=1e-7)
        assert ema.shadow[k].dtype == torch.float32
    assert not torch.allclose(ema.shadow["0.weight"], rec.after_step[steps]["0.weight"])


def test_warmup_forgets_the_initial_weights_in_a_short_run():
    """500 updates at decay 0.999: the initialisation's share of the shadow is 61 % without warm-up, < 1 % with it."""
    def init_share(warmup: bool) -> float:
        ema = EMA(decay=0.999, warmup=warmup)
        shadow, weights = {"w": torch.ones(1)}, {"w": torch.zeros(1)}  # init 1, trained weights 0
        for _ in range(500):
            ema_update(shadow, weights, ema.current_decay())
            ema.num_updates += 1
        return float(shadow["w"])

    assert init_share(False) == pytest.approx(0.999**500, rel=1e-4) and init_share(False) > 0.6
    assert init_share(True) < 0.01


def test_checkpoint_holds_the_shadow_and_a_new_callback_restores_it(tmp_path):
    ema = EMA(decay=0.5)
    _, trainer = _fit(tmp_path, ema, 4)
    ckpt = torch.load(trainer.checkpoint_callback.dirpath + "/last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert state["num_updates"] == 4
    restored = EMA(decay=0.5)
    restored.load_state_dict(state)
    restored.on_fit_start(trainer, trainer.lightning_module)  # keeps the restored shadow, does not re-copy weights
    for k, v in ema.shadow.items():
        torch.testing.assert_close(restored.shadow[k], v, rtol=0, atol=0)


class ValidationProbe(pl.Callback):
    def __init__(self, ema):
        self.ema, self.checked = ema, 0
        self.train_weights = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_weights = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        for k, v in pl_module.net.state_dict().items():
            torch.testing.assert_close(v, self.ema.shadow[k], rtol=0, atol=0)
        self.checked += 1

    def on_validation_end(self, trainer, pl_module):  # runs after the EMA callback swapped the weights back
        for k, v in pl_module.net.state_dict().items():
            torch.testing.assert_close(v, self.train_weights[k], rtol=0, atol=0)


def test_validation_runs_with_ema_weights_and_training_weights_come_back(tmp_path):
    ema = EMA(decay=0.5)
    probe = ValidationProbe(ema)
    pl.seed_everything(0)
    model = TinyRegression()
    cb = CheckpointPaths(root=str(tmp_path), experiment="ema", run="val")
    trainer = pl.Trainer(max_steps=10, callbacks=[cb, ema, probe], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=5)
    trainer.fit(model, datamodule=TinyData())
    assert probe.checked == 2


def test_export_gets_the_ema_weights(tmp_path):
    ema = EMA(decay=0.5)
    _, trainer = _fit(tmp_path, ema, 3)
    export = trainer.callbacks[0].paths.export_dir(3)
    saved = torch.load(export / "model_ema.pt", weights_only=True)
    for k, v in ema.shadow.items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)


def test_module_without_ema_target_is_a_clear_error():
    with pytest.raises(AttributeError, match="ema_target"):
        ema_target(pl.LightningModule())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        EMA(decay=1.0)
    with pytest.raises(ValueError):
        EMA(every_n_steps=0)
