"""Train either stage: ``python -m tools.fit -c CONFIG [overrides] [--resume auto]``.

A LightningCLI over any LightningModule (``model.class_path``: ``lightning_modules.diffusion.DiffusionModule`` or
``lightning_modules.reconstruction.ReconstructionModule``) and any LightningDataModule (``data.class_path``:
``datamodules.MultiViewDataModule``). On top of the plain CLI it

- adds the path resolver (``run:`` = :class:`callbacks.paths.CheckpointPaths`: root / experiment / run name,
  exports) and a ModelCheckpoint (``checkpoint:``, keeps ``last.ckpt``) whose folder the resolver owns;
- writes checkpoints atomically (:class:`callbacks.atomic.AtomicCheckpointIO`);
- logs to TensorBoard (when installed, without the ``hp_metric`` placeholder) and CSV under ``<run>/logs``, to W&B
  with ``--wandb PROJECT``; the learning rate of every parameter group (``lr-<optimizer>/<group>``) every logged step;
- saves the resolved config as ``<run>/config.yaml``;
- declares the settings the model shares with its data once, in the data section (rig, image_size,
  num_input_views, supervise_inputs: ``datamodules.shared_settings``), and links them into the model; one of them
  set in the model section as well is refused, naming the key and the file or argument;
- checks that the DataModule's ``stage`` and ``rig`` match the model's (error naming both);
- refuses a run before writing anything into its folder: a run folder of another config (the error names the
  hyper-parameters that differ, stored -> this run), checkpoints already there without ``--resume``, a
  ``--run.root`` that already contains the run's own ``<experiment>/<run>`` path or lies inside a run folder; these
  refusals, a rig mismatch and an untrusted checkpoint print one line (``tools.fit: error: ...``), exit code 2;
- checks the config's values first and names the key of a bad one in that one line (``data.init_args.batch_size:
  must be an integer >= 1, got 0``; :mod:`callbacks.fit_config`), a constructor's own error naming its section and
  class; refuses ``--resume PATH`` with another ``lr`` / ``lr_groups`` / ``weight_decay`` / ``betas`` than the
  checkpoint's optimizer (which would keep its own); a fit that fails before its first checkpoint or export removes
  what it wrote (a new run folder whole), so the fixed re-run is not refused;
- has no ``--optimizer`` / ``--lr_scheduler`` arguments: the modules build their own optimizer and schedule (frozen
  parts, per-group learning rates, warm-up; their ``optimizer`` / ``lr`` / ``warmup_steps`` arguments);
- stops at a step whose loss or gradients are not finite, before the update, naming the step, the batch's scenes and
  the last checkpoint (``nonfinite:`` = :class:`callbacks.nonfinite.NonFiniteGuard`; ``--nonfinite.skip true`` skips
  such steps instead, counted and logged as ``train/nonfinite_skipped``);
- seeds everything from ``seed_everything`` (default 0);
- ends with one line: the step it stopped at and why, the last checkpoint and export;
- ``--trainer.fast_dev_run true``: one step of each loop, no checkpoint and no export;
- ``--resume auto`` continues from the newest complete checkpoint of the run (same config: the newest run of the
  experiment with this config when ``run.run`` is not given); ``--resume PATH`` from a given checkpoint. The
  checkpoint is read without unpickling code (``weights_only=True`` with the allow-list of
  ``lightning_modules.artifacts``): one that needs more is refused before training starts, naming the file and the
  types; ``--trust-checkpoint`` resumes from it anyway (only files you trust: unpickling can run code).

Examples:
    python -m tools.fit -c configs/demo_reconstruction.yaml
    python -m tools.fit -c configs/demo_reconstruction.yaml --trainer.max_steps 200 --run.run r1 --resume auto
    python -m tools.fit -c configs/demo_diffusion.yaml --trainer.devices 2 --trainer.strategy ddp
"""

from __future__ import annotations

import contextlib
import logging
import sys

from lightning.pytorch import LightningDataModule, LightningModule

from callbacks.fit_cli import USER_ERRORS, FitCLI, RunConfigSaver, import_known_modules, run_summary, user_error
from callbacks.fit_config import check_resume_hparams
from callbacks.paths import CheckpointPaths
from datamodules.shared_settings import check_not_on_model
from lightning_modules.artifacts import CorruptWeightsError, allowed_globals, check_loadable, trusting
from tools import find_configs, log_to_stderr

log = logging.getLogger("mvlift.fit")


def main(argv: list[str] | None = None) -> FitCLI:
    """Parse ``argv`` (default: sys.argv[1:]), build everything and fit; returns the CLI (model, trainer, ...)."""
    with trusting():  # --trust-checkpoint (FitCLI sets it from the parsed config) ends with this call
        return _main(argv)


def _main(argv: list[str] | None) -> FitCLI:
    import_known_modules()
    # -c / --data / --model files not found from here are read from the shipped configs (configs/ is package data)
    argv = find_configs(sys.argv[1:] if argv is None else argv, ("-c", "--config", "--data", "--model"))
    check_not_on_model(argv)
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees both args and a command line (e.g. pytest's)
    try:
        cli = FitCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            auto_configure_optimizers=False,  # the modules build their own (freeze, per-group LRs, warmup)
            seed_everything_default=0,
            parser_kwargs={"description": __doc__.split("\n")[0], "prog": "python -m tools.fit"},
            args=argv,
            run=False,
        )
    finally:
        sys.argv = saved_argv
    paths_cb = cli._get(cli.config_init, "run")
    try:
        ckpt_path = cli.resume_path()
        trust = bool(cli._get(cli.config, "trust_checkpoint"))
        if ckpt_path is not None:
            check_loadable(ckpt_path, trust)  # the named refusal, before Lightning's own load
            check_resume_hparams(ckpt_path, cli.model.hparams, trust)  # a changed lr would be recorded, not used
        with contextlib.nullcontext() if trust else allowed_globals():
            try:
                cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=not trust)
            except CorruptWeightsError as e:  # raised while restoring: name the file
                raise CorruptWeightsError(f"--resume {ckpt_path}: {e}") from None
    except BaseException:
        if cli.trainer.is_global_zero and isinstance(paths_cb, CheckpointPaths):  # nothing left that a re-run trips on
            for removed in paths_cb.discard_failed_invocation():
                log.info("removed %s: written by this failed run before any checkpoint", removed)
        raise
    if cli.trainer.is_global_zero:
        print(run_summary(cli.trainer), flush=True)
    return cli


# LightningCLI's other subcommands, and why tools.fit has none of them: a run folder (its identity, config copy,
# run.json, loggers) belongs to a training run and refuses another config, so a validate / test / predict pass lives
# in tools.evaluate (any checkpoint or export x data x rig, one table), which writes into its own --out.
SUBCOMMANDS = {name: f"tools.fit only trains (its run folder is a training run's); {what}: python -m tools.evaluate "
                     "--ckpt RUN/checkpoints/last.ckpt --data CONFIG --out DIR"
               for name, what in (("validate", "to score a checkpoint on its validation data"),
                                  ("test", "to score a checkpoint on held-out data"),
                                  ("predict", "to run a checkpoint on inputs (or python -m tools.infer)"))}


def cli_main(argv: list[str] | None = None) -> int:
    """``python -m tools.fit``: :func:`main`, with the run's refusals (``USER_ERRORS``: rig or stage mismatch, a run
    folder of another config, a bad run root, an untrusted checkpoint) as an error without a traceback (its first
    line names the problem, details follow indented) and exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    log_to_stderr()  # mvlift's own INFO lines (data sources, skip counts, pre-render cache, exports, resume)
    if args and args[0] in SUBCOMMANDS:
        print(f"tools.fit: error: {args[0]!r}: {SUBCOMMANDS[args[0]]}", file=sys.stderr)
        return 2
    if args and args[0] == "fit":  # LightningCLI's own form: `fit -c CONFIG` is the same run
        args = args[1:]
    try:
        main(args)
    except USER_ERRORS as e:
        print(f"tools.fit: error: {user_error(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
