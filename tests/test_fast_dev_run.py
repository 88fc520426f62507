"""``fast_dev_run`` is a smoke run: no checkpoint and no export in the run folder (issue 16)."""

from __future__ import annotations

from test_fit_cli import _config

from callbacks.run_layout import RunPaths
from tools.fit import main


def test_fast_dev_run_writes_no_checkpoint_and_no_export(tmp_path):
    cli = main(["-c", str(_config(tmp_path, run="smoke")), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.global_step == 1, "the one step ran"
    paths = RunPaths(tmp_path / "runs", "cli", "smoke")
    assert not list(paths.run_dir.rglob("*.ckpt")), "no checkpoint"
    assert paths.exports() == {} and not list(paths.run_dir.rglob("*.safetensors")), "no export"
