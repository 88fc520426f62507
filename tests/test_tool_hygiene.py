"""The command-line tools: whole help texts, and no third-party noise that users cannot act on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["convert", "evaluate", "infer", "inspect_data", "make_shards", "plot", "rig", "synthesize", "view",
         "view_embeddings"]


@pytest.mark.parametrize("name", TOOLS)
def test_every_tools_help_description_is_a_whole_sentence(name, capsys):
    module = importlib.import_module(f"tools.{name}")
    main = module.main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    description = " ".join(module.__doc__.split("\n\n")[0].split())
    assert description.rstrip().endswith((".", ":")) and description[:40] in out, (name, description)


def test_a_tool_that_loads_a_diffusion_export_prints_no_third_party_advisories(tmp_path):
    """The tiny pipeline's CLIP image processor without torchvision and diffusers without accelerate each print an
    advisory, and their weight loaders draw progress bars; the tools print none of them."""
    script = ("import tools; from lightning_modules.diffusion.pretrained import make_tiny_pipeline_folder, "
              "load_pipeline_components; import sys; f = make_tiny_pipeline_folder(sys.argv[1], image_size=16); "
              "load_pipeline_components(f)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p")], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for noise in ("requires torchvision", "accelerate", "Loading weights", "Tip: For seamless"):
        assert noise not in text, (noise, text[-2000:])


def test_the_sampling_tools_take_their_defaults_from_one_place():
    """--steps / --guidance / --scheduler / --reference-view default to diffusion_sampling.Sampling's values in every
    tool that samples, and a bad value is refused by name when the settings are built."""
    from lightning_modules.diffusion.sampling import DEFAULT, Sampling
    from lightning_modules.evaluation import EvalSettings
    from tools import evaluate, infer, synthesize

    expected = (DEFAULT.steps, DEFAULT.guidance, DEFAULT.scheduler, DEFAULT.reference_view)
    ev = evaluate.build_parser().parse_args(["--ckpt", "a", "--data", "b", "--out", "c"])
    inf = infer.build_parser().parse_args(["x.png", "--diffusion", "d", "--reconstruction", "r", "--out", "o"])
    for args in (ev, inf):
        assert (args.steps, args.guidance, args.scheduler, args.reference_view) == expected
    d = synthesize.DIFFUSION
    assert (d["steps"], d["guidance"], d["scheduler"], d["reference_view"]) == expected
    settings = EvalSettings(ckpt=[], data=[], rig=[], out=Path("o"))
    assert settings.sampling == DEFAULT
    with pytest.raises(ValueError, match="--scheduler"):
        Sampling(scheduler="bogus")
    with pytest.raises(ValueError, match="--steps"):
        Sampling(steps=0)
