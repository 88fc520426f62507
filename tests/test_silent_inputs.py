"""Inputs that used to pass silently (issue 27, "Silent"): each is now refused by name or counted."""

from __future__ import annotations

import pytest

# ---- numeric options: refused at parse time -------------------------------------------------------------------------
INFER = ["x.png", "--diffusion", "d", "--reconstruction", "r", "--out", "o"]
EVALUATE = ["--ckpt", "a", "--data", "b", "--out", "o"]
SYNTHESIZE = ["--out", "o"]
BAD_OPTIONS = [
    ("infer", INFER, "--guidance", "nan"), ("infer", INFER, "--guidance", "inf"), ("infer", INFER, "--guidance", "-1"),
    ("infer", INFER, "--guidance", "1e30"), ("infer", INFER, "--steps", "0"), ("infer", INFER, "--seed", "-1"),
    ("infer", INFER, "--turntable-frames", "0"), ("infer", INFER, "--turntable-size", "-5"),
    ("infer", INFER, "--fps", "0"), ("infer", INFER, "--reference-view", "-1"),
    ("evaluate", EVALUATE, "--guidance", "nan"), ("evaluate", EVALUATE, "--steps", "-3"),
    ("evaluate", EVALUATE, "--batches", "0"), ("evaluate", EVALUATE, "--batch-size", "0"),
    ("evaluate", EVALUATE, "--num-input-views", "0"), ("evaluate", EVALUATE, "--grid-scenes", "-1"),
    ("evaluate", EVALUATE, "--num-workers", "-1"), ("evaluate", EVALUATE, "--seed", "nan"),
    ("synthesize", SYNTHESIZE, "--guidance", "nan"), ("synthesize", SYNTHESIZE, "--val-fraction", "nan"),
    ("synthesize", SYNTHESIZE, "--val-fraction", "1.5"), ("synthesize", SYNTHESIZE, "--camera-jitter-deg", "inf"),
    ("synthesize", SYNTHESIZE, "--scenes", "0"), ("synthesize", SYNTHESIZE, "--size", "-64"),
    ("synthesize", SYNTHESIZE, "--steps", "0"), ("synthesize", SYNTHESIZE, "--limit", "0"),
]


@pytest.mark.parametrize("tool,argv,flag,value", BAD_OPTIONS, ids=lambda x: x if isinstance(x, str) else "")
def test_non_finite_or_out_of_range_numbers_are_refused_at_parse_time(tool, argv, flag, value, capsys):
    import importlib

    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as e:
        module.build_parser().parse_args([*argv, flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and repr(value) in err, err


def test_good_numbers_still_parse():
    from tools import evaluate, infer, synthesize

    args = infer.build_parser().parse_args([*INFER, "--guidance", "0", "--steps", "1", "--seed", "7"])
    assert (args.guidance, args.steps, args.seed) == (0.0, 1, 7)
    assert evaluate.build_parser().parse_args([*EVALUATE, "--guidance", "1.5"]).guidance == 1.5
    assert synthesize.build_parser().parse_args([*SYNTHESIZE, "--val-fraction", "0"]).val_fraction == 0.0


def test_the_sampling_settings_refuse_a_non_finite_guidance_from_the_python_api():
    from lightning_modules.diffusion_sampling import Sampling

    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="--guidance"):
            Sampling(guidance=bad)
