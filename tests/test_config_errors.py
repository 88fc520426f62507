"""tools.fit config errors are one line naming the key, and a refused or failed run leaves nothing behind (issue 27,
"Tracebacks -> one-line errors"; "--resume PATH with a changed lr" from "Silent")."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_fit_cli import _config

from callbacks.run_layout import RunPaths

pytest.importorskip("datamodules.datamodule")

SOURCE = '{"name": "syn", "format": "procedural", "num_scenes": 6'
CASES = {
    "negative image_size": (["--data.init_args.image_size", "-16"], "data.init_args.image_size"),
    "batch_size 0": (["--data.init_args.batch_size", "0"], "data.init_args.batch_size"),
    "unknown source key": (["--data.init_args.sources", f"[{SOURCE}, \"bogus\": 1}}]"],
                           "data.init_args.sources[0] (syn): unknown key bogus"),
    "negative source weight": (["--data.init_args.sources", f"[{SOURCE}, \"weight\": -1}}]"],
                               "data.init_args.sources[0] (syn).weight"),
    "num_input_views > num_views": (["--data.init_args.num_input_views", "5"], "data.init_args.num_input_views"),
    "unknown rig": (["--data.init_args.rig", "no_such_rig"], "data.init_args.rig: unknown rig 'no_such_rig'"),
    "missing init_from": (["--model.init_args.init_from", "MISSING"], "model.init_args.init_from"),
    "init_from a .ckpt": (["--model.init_args.init_from", "CKPT"], "model.init_args.init_from"),
    "a constructor's own error": (["--model.init_args.sh_degree", "2"],
                                  "model (lightning_modules.reconstruction.ReconstructionModule): ValueError"),
}


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("Seed set to")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_error_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys, case):
    from tools.fit import cli_main

    extra, named = CASES[case]
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    extra = [{"MISSING": str(tmp_path / "nowhere"), "CKPT": str(tmp_path / "x.ckpt")}.get(a, a) for a in extra]
    rc = cli_main(["-c", str(_config(tmp_path, run="r1")), *extra])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("tools.fit: error: ") and named in line, line
    assert not (tmp_path / "runs").exists(), "a refused run left files behind"


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_a_run_that_crashes_before_its_first_checkpoint_leaves_nothing_and_the_rerun_is_not_refused(
        tmp_path, monkeypatch):
    from lightning_modules.reconstruction.module import ReconstructionModule
    from tools.fit import main

    def crash(self, batch, batch_idx):
        raise RuntimeError("boom at step 0")

    cfg = _config(tmp_path, run="r1")
    with monkeypatch.context() as m:
        m.setattr(ReconstructionModule, "training_step", crash)
        with pytest.raises(RuntimeError, match="boom"):
            main(["-c", str(cfg), "--trainer.max_steps", "1"])
    assert not (tmp_path / "runs").exists(), _tree(tmp_path / "runs")  # no run.json, logs, config, empty folders
    # the fixed re-run (here: the same config, a changed batch size) starts fresh instead of being refused
    cli = main(["-c", str(cfg), "--trainer.max_steps", "1", "--data.init_args.batch_size", "2",
                "--run.export_every_n_steps", "null"])
    assert cli.trainer.global_step == 1
    # a resumed run that crashes before a new checkpoint leaves the run as it was
    paths = RunPaths(tmp_path / "runs", "cli", "r1")
    before = _tree(paths.run_dir)
    with monkeypatch.context() as m:
        m.setattr(ReconstructionModule, "training_step", crash)
        with pytest.raises(RuntimeError, match="boom"):
            main(["-c", str(cfg), "--trainer.max_steps", "2", "--data.init_args.batch_size", "2",
                  "--run.export_every_n_steps", "null", "--resume", "auto"])
    assert _tree(paths.run_dir) == before


def test_resuming_a_checkpoint_with_another_learning_rate_is_refused_by_name(tmp_path, capsys):
    from tools.fit import cli_main, main

    cfg = _config(tmp_path, run="r1")
    main(["-c", str(cfg), "--trainer.max_steps", "1", "--run.export_every_n_steps", "null"])
    ckpt = RunPaths(tmp_path / "runs", "cli", "r1").last_checkpoint
    before = _tree(tmp_path / "runs")
    rc = cli_main(["-c", str(cfg), "--run.run", "r2", "--trainer.max_steps", "2", "--resume", str(ckpt),
                   "--model.init_args.lr", "0.01"])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and "model.lr: 0.001 -> 0.01" in line and str(ckpt) in line, line
    assert _tree(tmp_path / "runs") == before, "the refused run wrote into its folder"
    # the same learning rate resumes
    cli = main(["-c", str(cfg), "--run.run", "r2", "--trainer.max_steps", "2", "--resume", str(ckpt),
                "--run.export_every_n_steps", "null"])
    assert cli.trainer.global_step == 2
    assert cli.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(1e-3)
