"""LightningCLI / argparse habits of the tools: ``--config FILE`` for tools.evaluate and tools.infer (read as if typed
first, so every value is checked as typed and the command line wins), defaults in ``--help``, data arguments
described from the docstring, and tools.fit's answer to LightningCLI's other subcommands."""

from __future__ import annotations

import pytest

from tools import evaluate, fit, infer, parse_args


@pytest.mark.parametrize("tool", [evaluate, infer])
def test_help_shows_every_default_and_the_config_option(tool):
    text = tool.build_parser().format_help()
    assert "--config FILE" in text
    assert "(default: 50)" in text  # --steps


def test_a_config_file_gives_the_same_options_as_the_command_line(tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("ckpt: [a=runs/a.ckpt, b=runs/b.ckpt]\ndata: [configs/data/demo.yaml]\nguidance: 2.0\n"
                   "steps: 7\nout: results/x\nallow_rig_mismatch: true\n")
    p = evaluate.build_parser()
    from_file = parse_args(p, ["--config", str(cfg)])
    typed = parse_args(p, ["--ckpt", "a=runs/a.ckpt", "--ckpt", "b=runs/b.ckpt", "--data", "configs/data/demo.yaml",
                           "--guidance", "2.0", "--steps", "7", "--out", "results/x", "--allow-rig-mismatch"])
    assert vars(from_file) == vars(typed)
    over = parse_args(p, ["--config", str(cfg), "--steps", "9"])  # the command line wins
    assert over.steps == 9 and over.guidance == 2.0


@pytest.mark.parametrize("text,message", [("guidance: .nan\n", "finite"), ("guidanse: 2.0\n", "unknown option 'guidanse'"),
                                          ("allow_rig_mismatch: 3\n", "is a flag"), ("- 1\n", "mapping")])
def test_a_bad_config_file_is_refused_naming_the_key(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert parse_args(infer.build_parser(), ["--config", str(cfg)]) is None
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["validate", "test", "predict"])
def test_fit_answers_lightning_subcommands_with_the_tool_that_does_it(sub, capsys):
    assert fit.cli_main([sub, "-c", "configs/demo_reconstruction.yaml"]) == 2
    err = capsys.readouterr().err
    assert "tools.fit only trains" in err and "tools.evaluate" in err and "\n" == err[-1] and err.count("\n") == 1


def test_data_arguments_are_described_from_the_docstring(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--data.help", "datamodules.MultiViewDataModule"])
    out = capsys.readouterr().out
    assert "square output size." in out and "scenes per batch (per rank)." in out


@pytest.mark.parametrize("cls_path", ["lightning_modules.diffusion.DiffusionModule",
                                      "lightning_modules.reconstruction.ReconstructionModule",
                                      "datamodules.MultiViewDataModule"])
def test_every_constructor_argument_is_described_in_the_docstring(cls_path):
    """What ``--model.help`` / ``--data.help`` print: jsonargparse reads the class's ``Args:`` section."""
    import importlib
    import inspect

    import docstring_parser

    module, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    described = {p.arg_name for p in docstring_parser.parse(cls.__doc__).params if p.description}
    args = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert args <= described, sorted(args - described)


def test_model_help_prints_the_descriptions(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--model.help", "lightning_modules.reconstruction.ReconstructionModule"])
    assert "peak learning rate." in capsys.readouterr().out
