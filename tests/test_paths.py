"""RunPaths / CheckpointPaths: one layout, idempotent resolving, no escaping paths, one config per run folder."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_fit_resume import TinyData, TinyRegression, make_trainer

from callbacks.paths import CheckpointPaths
from callbacks.run_layout import PathError, RunConflictError, RunPaths


@pytest.fixture
def paths(tmp_path) -> RunPaths:
    return RunPaths(tmp_path / "runs", "exp", "r1")


def test_layout_is_root_experiment_run_with_fixed_subfolders(paths, tmp_path):
    run = tmp_path / "runs" / "exp" / "r1"
    assert paths.run_dir == run
    assert paths.checkpoint_dir == run / "checkpoints"
    assert paths.export_dir(1200) == run / "export" / "step_1200"
    assert paths.log_dir == run / "logs"
    assert paths.config_path == run / "config.yaml"
    assert paths.last_checkpoint == run / "checkpoints" / "last.ckpt"


def test_relative_root_is_made_absolute_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = RunPaths("runs", "exp", "r1")
    assert p.run_dir == tmp_path / "runs" / "exp" / "r1"
    # a path written relative to the working directory is recognised as already resolved
    assert p.resolve("runs/exp/r1/checkpoints/last.ckpt", "checkpoints") == p.checkpoint_dir / "last.ckpt"


def test_users_checkpoints_checkpoints_bug_cannot_happen(paths):
    """The user's bug: a checkpoint path that already held the 'checkpoints/' prefix was joined onto the checkpoint
    folder again (checkpoints/checkpoints/last.ckpt), and a resolved path passed through a second time grew
    another prefix. Both land on the one correct file here."""
    want = paths.checkpoint_dir / "last.ckpt"
    assert paths.resolve("checkpoints/last.ckpt", under="checkpoints") == want
    assert paths.resolve("last.ckpt", under="checkpoints") == want
    once = paths.resolve("last.ckpt", under="checkpoints")
    twice = paths.resolve(once, under="checkpoints")
    thrice = paths.resolve(str(twice), under="checkpoints")
    assert once == twice == thrice == want
    assert "checkpoints/checkpoints" not in str(thrice)
    # the same for the run folder and exports
    assert paths.resolve(paths.resolve("checkpoints/last.ckpt")) == want
    step = paths.export_dir(10)
    assert paths.resolve(paths.resolve(step, "export"), "export") == step
    assert paths.resolve("export/step_10", "export") == step


def test_a_doubled_prefix_given_explicitly_is_an_error(paths):
    with pytest.raises(PathError, match="joined twice"):
        paths.resolve(paths.checkpoint_dir / "checkpoints" / "last.ckpt", "checkpoints")
    with pytest.raises(PathError, match="joined twice"):
        paths.resolve("checkpoints/checkpoints/last.ckpt", "run")


@pytest.mark.parametrize("bad", ["../other/last.ckpt", "../../exp/r2/checkpoints/x.ckpt", "/etc/passwd",
                                 "a/../../x.ckpt"])
def test_paths_escaping_the_run_folder_are_errors(paths, bad):
    with pytest.raises(PathError, match="outside"):
        paths.resolve(bad, "checkpoints")


def test_a_path_in_another_subfolder_is_not_a_checkpoint_path(paths):
    with pytest.raises(PathError, match="outside"):
        paths.resolve(paths.export_dir(3), "checkpoints")


def test_bad_run_names_are_refused(tmp_path):
    for name in ["", "..", "a/b", "x y"]:
        with pytest.raises(PathError):
            RunPaths(tmp_path, "exp", name)


def test_latest_checkpoint_ignores_partial_and_temporary_files(paths):
    paths.create()
    good = paths.checkpoint_dir / "epoch=0-step=4.ckpt"
    torch.save({"step": 4}, good)
    (paths.checkpoint_dir / "epoch=0-step=8.ckpt").write_bytes(good.read_bytes()[:50])  # cut short by a crash
    (paths.checkpoint_dir / ".last.ckpt.tmp-123").write_bytes(good.read_bytes())
    os.utime(good, (1, 1))
    assert paths.latest_checkpoint() == good


def test_from_checkpoint_recovers_the_run(paths):
    assert RunPaths.from_checkpoint(paths.checkpoint_dir / "last.ckpt") == paths
    with pytest.raises(PathError):
        RunPaths.from_checkpoint(paths.run_dir / "last.ckpt")


def _setup(root: Path, run: str, model=None, data=None, resume=None, dirpath=None) -> tuple[CheckpointPaths, pl.Trainer]:
    cb = CheckpointPaths(root=str(root), experiment="exp", run=run, resume=resume)
    trainer = make_trainer(cb, 1)
    if dirpath is not None:
        trainer.checkpoint_callback.dirpath = dirpath
    model, data = model or TinyRegression(), data or TinyData()
    trainer.strategy.connect(model)
    trainer._data_connector.attach_datamodule(model, datamodule=data)
    cb.setup(trainer, model, "fit")
    return cb, trainer


def test_callback_points_model_checkpoint_at_the_run_and_keeps_last(tmp_path):
    cb, trainer = _setup(tmp_path, "r1")
    assert Path(trainer.checkpoint_callback.dirpath) == cb.paths.checkpoint_dir
    assert trainer.checkpoint_callback.save_last is True
    assert cb.paths.run_json.is_file()


def test_callback_resolves_a_user_dirpath_that_already_has_the_prefix(tmp_path):
    cb, trainer = _setup(tmp_path, "r1", dirpath="checkpoints")
    assert Path(trainer.checkpoint_callback.dirpath) == cb.paths.checkpoint_dir
    cb.configure_checkpoint(trainer.checkpoint_callback)  # a second pass changes nothing
    assert Path(trainer.checkpoint_callback.dirpath) == cb.paths.checkpoint_dir


def test_run_folder_of_another_config_is_an_error(tmp_path):
    _setup(tmp_path, "r1", model=TinyRegression(rig="facelift_6view"))
    _setup(tmp_path, "r1", model=TinyRegression(rig="facelift_6view"), resume="auto")  # same config: fine
    with pytest.raises(RunConflictError, match="belongs to another config.*mouse_oblique20_6view"):
        _setup(tmp_path, "r1", model=TinyRegression(rig="mouse_oblique20_6view"), resume="auto")
    with pytest.raises(RunConflictError, match="another config"):
        _setup(tmp_path, "r1", model=TinyRegression(lr=0.1))


def test_unnamed_runs_get_distinct_folders(tmp_path):
    a, _ = _setup(tmp_path, None)
    b, _ = _setup(tmp_path, None)
    assert a.paths.run != b.paths.run


def test_loader_and_speed_settings_do_not_change_the_run_identity(tmp_path):
    import json

    from callbacks.run_identity import run_identity
    from datamodules.datamodule import MultiViewDataModule

    kw = {"stage": "reconstruction", "image_size": 16, "num_views": 3, "num_input_views": 2, "samples_per_epoch": 4}
    model = TinyRegression()
    a = run_identity(model, MultiViewDataModule(**kw, num_workers=0))
    b = run_identity(model, MultiViewDataModule(**kw, num_workers=4, persistent_workers=True))
    c = run_identity(model, MultiViewDataModule(**kw, num_workers=0, batch_size=3))
    assert a["config_hash"] == b["config_hash"] != c["config_hash"]
    cb, _ = _setup(tmp_path, "old")
    info = json.loads(cb.paths.run_json.read_text())
    _setup(tmp_path, "old", resume="auto")  # the same config: resumes
    info["config_hash"] = "0" * 16
    cb.paths.run_json.write_text(json.dumps(info))
    with pytest.raises(RunConflictError):
        _setup(tmp_path, "old", resume="auto")
