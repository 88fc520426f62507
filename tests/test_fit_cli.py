"""python -m tools.fit: LightningCLI over the real modules and MultiViewDataModule, run layout, resume, checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from callbacks.run_layout import RunPaths
from lightning_modules.artifacts import checkpoint_rig

pytest.importorskip("datamodules.datamodule")
from tools.fit import main

RECONSTRUCTION = {
    "class_path": "lightning_modules.reconstruction.ReconstructionModule",
    "init_args": {"width": 32, "depth": 1, "head_dim": 16, "patch_size": 8, "lr": 1e-3, "max_steps": 10, "rasterizer": "torch"},
}
DATA = {
    "class_path": "datamodules.MultiViewDataModule",
    "init_args": {"stage": "reconstruction", "rig": "facelift_6view", "image_size": 16, "num_views": 3,
                  "num_input_views": 2, "sources": [{"name": "syn", "format": "procedural", "num_scenes": 6}],
                  "batch_size": 1, "num_workers": 0, "samples_per_epoch": 4, "val_samples": 1,
                  "augment": {"enabled": False}},
}


def _config(tmp_path: Path, **run) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": RECONSTRUCTION,
        "data": DATA,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 3, "limit_val_batches": 1,
                    "val_check_interval": 2, "check_val_every_n_epoch": None, "log_every_n_steps": 1,
                    "enable_model_summary": False, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "callbacks.image_log.ImageLogger", "init_args": {"every_n_steps": 1}}]},
        "run": {"root": str(tmp_path / "runs"), "experiment": "cli", "export_every_n_steps": 2, **run},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_writes_the_run_layout_and_resume_auto_continues(tmp_path):
    cfg = _config(tmp_path, run="r1")
    cli = main(["-c", str(cfg)])
    paths = RunPaths(tmp_path / "runs", "cli", "r1")
    assert cli.trainer.global_step == 3
    assert paths.config_path.is_file() and yaml.safe_load(paths.config_path.read_text())["run"]["run"] == "r1"
    info = json.loads(paths.run_json.read_text())
    assert info["stage"] == "reconstruction" and info["rig"]["name"] == "facelift_6view"
    assert paths.last_checkpoint.is_file()
    assert checkpoint_rig(paths.last_checkpoint).name == "facelift_6view"
    assert sorted(paths.exports()) == [2, 3]
    assert (paths.export_dir(3) / "model.safetensors").is_file() and (paths.export_dir(3) / "rig.json").is_file()
    assert paths.metric_files() == [paths.log_dir / "csv" / "version_0" / "metrics.csv"]
    assert list((paths.log_dir / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard is the embedded default"
    assert not list(paths.checkpoint_dir.glob(".*")), "no temporaries left behind"
    grids = sorted((paths.log_dir / "images").glob("step_*_novel_views.png"))
    assert [g.name for g in grids] == ["step_0000002_novel_views.png"]

    cli2 = main(["-c", str(cfg), "--trainer.max_steps", "5", "--resume", "auto"])
    assert cli2.trainer.ckpt_path == str(paths.last_checkpoint)
    assert cli2.trainer.global_step == 5
    assert sorted(paths.exports()) == [2, 3, 4, 5]
    assert len(list(paths.run_dir.glob("config*.yaml"))) == 2  # the first config is kept
    # the resumed fit logs into a second CSV part; the first part's rows survive (Lightning's CSV writer would
    # have deleted a metrics.csv it found)
    assert [p.parent.name for p in paths.metric_files()] == ["version_0", "version_1"]
    logged = [int(r["step"]) for r in paths.metric_rows() if r.get("train/loss")]
    assert min(logged) < 3 <= max(logged)


def test_the_model_takes_the_settings_it_shares_with_the_data_from_the_data(tmp_path):
    cfg = _config(tmp_path, run="linked")
    cli = main(["-c", str(cfg), "--data.init_args.rig", "mouse_oblique20_6view", "--data.init_args.image_size", "24",
                "--data.init_args.num_input_views", "1", "--trainer.max_steps", "1"])
    hp = cli.model.hparams
    assert (hp.rig, hp.image_size, hp.num_input_views, hp.supervise_inputs) == ("mouse_oblique20_6view", 24, 1, False)
    assert cli.model.rig.name == "mouse_oblique20_6view" and cli.datamodule.builder.image_size == 24


@pytest.mark.parametrize("where", ["config", "command line"])
def test_a_shared_setting_given_to_the_model_is_refused_naming_it(tmp_path, capsys, where):
    from tools.fit import cli_main

    if where == "config":
        model = {**RECONSTRUCTION, "init_args": {**RECONSTRUCTION["init_args"], "image_size": 32, "rig": "facelift_6view"}}
        cfg = tmp_path / "fit.yaml"
        cfg.write_text(yaml.safe_dump({"model": model, "data": DATA, "trainer": {"max_steps": 1}}))
        rc = cli_main(["-c", str(cfg), "--run.root", str(tmp_path / "runs")])
    else:
        rc = cli_main(["-c", str(_config(tmp_path, run="bad")), "--model.init_args.num_input_views", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and err.startswith("tools.fit: error: set on the model:")
    named = ["image_size", "rig", str(tmp_path / "fit.yaml")] if where == "config" else [
        "num_input_views (in --model.init_args.num_input_views)"]
    assert all(n in err for n in named), err
    assert "declared once, in the data" in err
    assert not (tmp_path / "runs").exists()


def test_fit_refuses_data_for_another_stage(tmp_path):
    cfg = _config(tmp_path, run="bad")
    with pytest.raises(ValueError, match="data stage 'diffusion'.*'reconstruction'"):
        main(["-c", str(cfg), "--data.init_args.stage", "diffusion"])


def test_fit_with_ema_exports_ema_weights(tmp_path):
    cfg = _config(tmp_path, run="ema")
    main(["-c", str(cfg), "--trainer.callbacks+=callbacks.ema.EMA", "--trainer.callbacks.decay=0.9"])
    paths = RunPaths(tmp_path / "runs", "cli", "ema")
    assert (paths.export_dir(3) / "model_ema.safetensors").is_file()
    # the export a tools.fit run writes is what tools.evaluate / tools.infer load (LightningCLI's private hparams
    # such as _class_path are not constructor arguments and must not reach from_export)
    import torch
    from safetensors.torch import load_file

    from lightning_modules.reconstruction.module import ReconstructionModule
    from tools.evaluate import main as evaluate

    config = json.loads((paths.export_dir(3) / "mvlift.json").read_text())
    assert not [k for k in config["hparams"] if k.startswith("_")]
    state = torch.load(paths.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for ema in (False, True):
        module = ReconstructionModule.from_export(paths.export_dir(3), ema=ema)
        assert module.rig.name == "facelift_6view" and module.hparams.width == 32
        saved = load_file(str(paths.export_dir(3) / ("model_ema.safetensors" if ema else "model.safetensors")))
        for k, v in module.net.state_dict().items():
            assert torch.equal(v, saved[k]), k
    assert any(not torch.equal(state[f"net.{k}"], v) for k, v in saved.items()), "EMA differs from the raw weights"
    demo = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo.yaml"
    out = tmp_path / "eval"
    code = evaluate(["--ckpt", f"fit={paths.export_dir(3)}", "--data", str(demo), "--rig", "facelift_6view",
                     "--out", str(out), "--batches", "1", "--batch-size", "1"])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert code == 0 and rows[0]["checkpoint"] == "fit" and rows[0]["metrics"]["all"]["psnr"] > 0, rows


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _documented_runs() -> list[tuple[Path, list[str]]]:
    runs = []
    for cfg in sorted(CONFIGS.rglob("*.yaml")):
        for line in cfg.read_text().splitlines():
            if line.startswith("#") and "python -m tools.fit -c THIS" in line:
                args = line.split("python -m tools.fit -c THIS", 1)[1].split()
                runs.append((cfg, ["-c", str(cfg), *[a.replace("configs/", f"{CONFIGS}/", 1) for a in args]]))
    return runs


@pytest.mark.parametrize("cfg,argv", _documented_runs(), ids=lambda x: x.name if isinstance(x, Path) else "")
def test_the_command_each_config_documents_parses_with_the_models_stage_and_rig(cfg, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"], printed["data"]
    assert data["class_path"] == "datamodules.MultiViewDataModule"
    stage = "diffusion" if model["class_path"].endswith("DiffusionModule") else "reconstruction"
    assert data["init_args"]["stage"] == stage, cfg
    assert data["init_args"]["rig"], cfg
    assert not {"rig", "image_size", "num_input_views", "supervise_inputs"} & set(model["init_args"]), (
        "shared settings are declared once, in the data")
    assert data["init_args"]["sources"], "the sources come from the data config"


def test_the_fine_tune_configs_document_their_command():
    assert {c.relative_to(CONFIGS).as_posix() for c, _ in _documented_runs()} >= {
        f"{s}/{n}.yaml" for s in ("diffusion", "reconstruction") for n in ("facelift_mouse_finetune", "low_memory_12gb")}


@pytest.mark.gpu
@pytest.mark.parametrize("precision,fused", [("bf16-mixed", True), ("16-mixed", False)])
def test_mixed_precision_fit_with_gradient_clipping_on_cuda(tmp_path, precision, fused):
    """Lightning refuses to clip the gradients of a fused optimizer under mixed precision (the bench run that found
    it died at step 1). Under bf16 (no GradScaler) the modules keep the fused kernel and clip themselves
    (``optim.stage_clips_fused``); under fp16 the scaler needs the foreach kernel, and Lightning clips."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = _config(tmp_path, run=precision)
    cli = main(["-c", str(cfg), "--trainer.accelerator", "gpu", "--trainer.precision", precision,
                "--trainer.gradient_clip_val", "1.0"])
    assert cli.trainer.global_step == 3
    assert cli.trainer.optimizers[0].defaults["fused"] is fused


def test_wandb_logger_only_on_request_and_named_after_the_run(tmp_path, monkeypatch):
    import sys
    import types

    from callbacks.fit_cli import default_loggers

    paths = RunPaths(tmp_path / "runs", "exp", "r1")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    tensorboard, csv_logger = default_loggers(paths)  # mvlift's subclasses: hparams summary, a wall-time column
    assert isinstance(tensorboard, TensorBoardLogger) and isinstance(csv_logger, CSVLogger)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(SystemExit, match="pip install wandb"):
        default_loggers(paths, "proj")
    made = {}

    class FakeWandbLogger:
        def __init__(self, **kw):
            made.update(kw)

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    monkeypatch.setitem(sys.modules, "lightning.pytorch.loggers", types.SimpleNamespace(WandbLogger=FakeWandbLogger))
    loggers = default_loggers(paths, "proj")
    assert isinstance(loggers[-1], FakeWandbLogger)
    assert made["project"] == "proj" and made["name"] == "exp/r1" and made["save_dir"] == str(paths.log_dir)


def test_two_process_ddp_fit_on_cpu_trains_disjoint_samples_and_logs_the_global_loss(tmp_path):
    """``--trainer.devices 2 --trainer.strategy ddp`` through the real entry point (gloo on CPU): both ranks train,
    no sample is seen by two ranks in an epoch, train/loss is logged (the all-rank mean: sync_dist) and the
    checkpoint resumes."""
    import os
    import subprocess
    import sys

    from bench.ddp_report import duplicates_across_ranks, loss_curve

    cfg = _config(tmp_path, run="ddp")
    argv = [sys.executable, "-m", "tools.fit", "-c", str(cfg), "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "4", "--data.init_args.samples_per_epoch", "8",
            "--trainer.callbacks+=callbacks.throughput.SampleLedger"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = RunPaths(tmp_path / "runs", "cli", "ddp")
    dup = duplicates_across_ranks(paths.run_dir)
    assert dup["ranks"] == 2 and dup["samples"] == 8 and dup["duplicated_across_ranks"] == 0, dup
    assert sorted(loss_curve(paths.run_dir)) == [0, 1, 2, 3]
    assert torch_load_step(paths.last_checkpoint) == 4


def torch_load_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_profile_steps_callback_writes_a_trace_and_its_gap_summary(tmp_path):
    import gzip

    cfg = _config(tmp_path, run="prof")
    main(["-c", str(cfg), "--trainer.max_steps", "4", "--trainer.callbacks+=callbacks.profile.ProfileSteps",
          "--trainer.callbacks.start_step=1", "--trainer.callbacks.num_steps=2",
          "--trainer.callbacks.with_stack=false"])
    logs = RunPaths(tmp_path / "runs", "cli", "prof").log_dir
    summary = json.loads((logs / "gpu_gaps_rank0.json").read_text())
    assert summary["from_step"] == 1 and summary["steps"] == 2 and summary["trace"] == "trace_rank0.json.gz"
    assert summary["gpu_events"] == 0 and summary["idle_ms_per_step"] == 0  # CPU run: no GPU activity to time
    with gzip.open(logs / "trace_rank0.json.gz", "rt") as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert "aten::scaled_dot_product_attention" in names or "aten::linear" in names, "host ops were recorded"
    assert not (logs / "trace_rank0.json").exists(), "only the gzipped trace is kept"


def test_training_values_are_logged_every_log_every_n_steps_and_only_then(tmp_path):
    """The modules skip their per-step ``self.log`` work on the steps Lightning would not write (logs_this_step):
    the written rows are exactly every n-th step's, with all their keys, and train/loss averages the interval."""
    cfg = _config(tmp_path, run="every3")
    main(["-c", str(cfg), "--trainer.max_steps", "7", "--trainer.log_every_n_steps", "3",
          "--trainer.val_check_interval", "100", "--run.export_every_n_steps", "null"])
    rows = [r for r in RunPaths(tmp_path / "runs", "cli", "every3").metric_rows() if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert all(r.get("train/grad_norm") and r.get("train/psnr") and r.get("train/mse") for r in rows), rows
    # train/loss is the mean over the steps since the previous log: the same run logging every step says so
    main(["-c", str(_config(tmp_path, run="every1")), "--trainer.max_steps", "7", "--trainer.log_every_n_steps", "1",
          "--trainer.val_check_interval", "100", "--run.export_every_n_steps", "null"])
    each = {int(r["step"]): float(r["train/loss"])
            for r in RunPaths(tmp_path / "runs", "cli", "every1").metric_rows() if r.get("train/loss")}
    assert sorted(each) == list(range(7))
    for row, steps in zip(rows, ([0, 1, 2], [3, 4, 5])):
        assert float(row["train/loss"]) == pytest.approx(sum(each[s] for s in steps) / 3, rel=1e-5)


CONSTANT_LR = ["--model.init_args.decay", "constant", "--model.init_args.warmup_steps", "0"]


def test_a_resumed_run_logs_the_interval_means_of_the_uninterrupted_run(tmp_path):
    """train/loss averages the steps since the last log; a checkpoint taken inside an interval keeps the open sum,
    so the resumed run's next logged value is the uninterrupted run's."""
    # a constant learning rate: the schedule spans the trainer's max_steps (an extension stretches it), so only a
    # constant one makes stopped-then-extended parts train like the whole
    common = ["--trainer.log_every_n_steps", "3", "--trainer.val_check_interval", "100",
              "--run.export_every_n_steps", "null", *CONSTANT_LR]
    main(["-c", str(_config(tmp_path, run="whole")), "--trainer.max_steps", "6", *common])
    cfg = _config(tmp_path, run="parts")
    main(["-c", str(cfg), "--trainer.max_steps", "4", *common])  # stops inside the interval of steps 3..5
    main(["-c", str(cfg), "--trainer.max_steps", "6", "--resume", "auto", *common])

    def logged(run: str) -> dict[int, float]:
        return {int(r["step"]): float(r["train/loss"])
                for r in RunPaths(tmp_path / "runs", "cli", run).metric_rows() if r.get("train/loss")}

    whole, parts = logged("whole"), logged("parts")
    assert sorted(whole) == sorted(parts) == [2, 5]
    for step in (2, 5):
        assert parts[step] == pytest.approx(whole[step], rel=1e-5), (step, whole, parts)


@pytest.mark.parametrize("stop", [3, 4], ids=["mid_epoch", "end_of_epoch"])
def test_a_run_extended_past_max_steps_draws_and_trains_like_the_uninterrupted_run(tmp_path, stop):
    """tools.fit to ``stop`` steps, then ``--resume auto`` to 7 (4 draws per epoch). The default ModelCheckpoint
    saves at the epoch's end when max_steps stops it, and Lightning then counts that epoch as complete and ends the
    next one early; the data stream must still continue where it stopped (it had skipped the rest of an epoch)."""
    common = ["--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "100", *CONSTANT_LR,
              "--run.export_every_n_steps", "null", "--trainer.callbacks+=callbacks.throughput.SampleLedger"]
    main(["-c", str(_config(tmp_path, run="whole")), "--trainer.max_steps", "7", *common])
    cfg = _config(tmp_path, run="parts")
    main(["-c", str(cfg), "--trainer.max_steps", str(stop), *common])
    main(["-c", str(cfg), "--trainer.max_steps", "7", "--resume", "auto", *common])

    def run(name: str) -> tuple[list[str], dict[int, float]]:
        paths = RunPaths(tmp_path / "runs", "cli", name)
        rows = [json.loads(line) for line in (paths.log_dir / "samples_rank0.jsonl").read_text().splitlines()]
        losses = {int(r["step"]): float(r["train/loss"]) for r in paths.metric_rows() if r.get("train/loss")}
        return [r["scene_id"] for r in sorted(rows, key=lambda r: r["step"])], losses

    (scenes, losses), (scenes2, losses2) = run("whole"), run("parts")
    assert len(scenes) == 7 and scenes2 == scenes
    assert sorted(losses2) == sorted(losses) == list(range(7))
    for step in range(7):
        assert losses2[step] == pytest.approx(losses[step], rel=1e-5), step


# ---- refusals: before any file, naming the keys, one line, exit code 2 (issue 16) -------------------------------------
def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_refused_run_writes_nothing_and_names_the_differing_keys(tmp_path, capsys):
    from tools.fit import cli_main

    cfg = _config(tmp_path, run="r1")
    main(["-c", str(cfg), "--trainer.max_steps", "1", "--run.export_every_n_steps", "null"])
    paths = RunPaths(tmp_path / "runs", "cli", "r1")
    assert json.loads(paths.run_json.read_text())["hparams"]["model.lr"] == 1e-3  # what a conflict is told from
    before = _tree(paths.run_dir)
    rc = cli_main(["-c", str(cfg), "--model.init_args.lr", "0.01", "--data.init_args.batch_size", "2",
                   "--resume", "auto"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "belongs to another config" in err
    assert "model.lr: 0.001 -> 0.01" in err and "data.batch_size: 1 -> 2" in err
    # the same config without --resume: refused (checkpoints there), also before any file
    rc = cli_main(["-c", str(cfg)])
    assert rc == 2 and "already holds checkpoints" in capsys.readouterr().err
    assert _tree(paths.run_dir) == before, "a refused run left files (logs, events, config copy) behind"


def test_a_rig_mismatch_is_an_error_without_traceback_naming_the_views_and_exit_code_2(tmp_path, capsys, monkeypatch):
    """The data's rig is the model's in tools.fit (linked); a model whose rig differs anyway (built by other code) is
    still refused before any file, with the per-view difference indented under the error line."""
    from callbacks import fit_cli
    from geometry.rig import load_rig
    from tools import fit

    real = fit_cli.check_data_matches_model

    def model_on_another_rig(model, datamodule):
        model.rig = load_rig("mouse_oblique20_6view")
        real(model, datamodule)

    monkeypatch.setattr(fit_cli, "check_data_matches_model", model_on_another_rig)
    cli_main = fit.cli_main
    rc = cli_main(["-c", str(_config(tmp_path, run="bad"))])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("tools.fit: error: data rig 'facelift_6view'") and "mouse_oblique20_6view" in err
    details = err.splitlines()[1:]  # the per-view difference, indented under the error line
    assert details and all(line.startswith("    ") for line in details) and "front" in err
    assert not (tmp_path / "runs").exists()
    rc = cli_main(["-c", str(_config(tmp_path, run="bad")), "--data.init_args.stage", "diffusion"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "data stage 'diffusion'" in err


def test_a_root_that_already_holds_the_runs_own_path_is_refused(tmp_path, capsys):
    from tools.fit import cli_main

    cfg = _config(tmp_path, run="P7")
    doubled = tmp_path / "runs" / "cli" / "P7" / "checkpoints"
    rc = cli_main(["-c", str(cfg), "--run.root", str(doubled)])
    err = capsys.readouterr().err
    assert rc == 2 and "already contains this run's own path cli/P7" in err
    assert not (tmp_path / "runs").exists()
    # a root inside an existing run folder (another run name) is refused too
    main(["-c", str(cfg), "--trainer.max_steps", "1", "--run.export_every_n_steps", "null"])
    before = _tree(tmp_path / "runs")
    rc = cli_main(["-c", str(_config(tmp_path, run="other")), "--run.root", str(doubled)])
    assert rc == 2 and "is inside the run folder" in capsys.readouterr().err
    assert _tree(tmp_path / "runs") == before


def test_lightning_optimizer_and_scheduler_arguments_are_off(tmp_path):
    cfg = _config(tmp_path, run="opt")
    for flag in (["--optimizer", "SGD"], ["--lr_scheduler", "StepLR"]):
        with pytest.raises(SystemExit) as e:
            main(["-c", str(cfg), *flag])
        assert e.value.code != 0
    assert not (tmp_path / "runs").exists()


def test_a_fit_logs_each_groups_learning_rate_and_names_loss_terms_as_losses(tmp_path):
    import csv

    cli = main(["-c", str(_config(tmp_path, run="lr")), "--model.init_args.warmup_steps", "2",
                "--model.init_args.ssim_weight", "0.5"])
    paths = RunPaths(tmp_path / "runs", "cli", "lr")
    rows = [r for f in paths.metric_files() for r in csv.DictReader(f.open())]
    columns = set().union(*rows)
    groups = [g.get("name") for g in cli.trainer.optimizers[0].param_groups]
    lr_columns = sorted(c for c in columns if c.startswith("lr-"))
    assert lr_columns and len(lr_columns) == len(groups), (lr_columns, groups)
    warmup = [float(r[lr_columns[0]]) for r in rows if r.get(lr_columns[0])]
    assert warmup[0] < warmup[-1], "the warm-up shows in the logged learning rate"
    assert "train/ssim_loss" in columns and "train/ssim" not in columns  # 1 - SSIM is a loss, named as one
    assert "hp_metric" not in columns


def test_a_fit_ends_with_one_line_naming_its_step_checkpoint_and_export(tmp_path, capsys):
    main(["-c", str(_config(tmp_path, run="summary"))])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("tools.fit: step")][-1]
    paths = RunPaths(tmp_path / "runs", "cli", "summary")
    assert line.startswith("tools.fit: step 3 (max_steps)")
    assert str(paths.latest_checkpoint()) in line and str(paths.export_dir(3)) in line
    assert "; first training batch after " in line  # StepTimer is on by default
