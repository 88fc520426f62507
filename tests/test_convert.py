"""tools.convert facelift-gslrm: FaceLift-shaped checkpoints convert and load strictly; bad keys are listed."""

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_modules.facelift.convert import convert_facelift_gslrm_state
from lightning_modules.reconstruction.gslrm import GSLRM, GSLRMConfig, gslrm_state_dict_shapes
from tools.convert import main

SHAPES = Path(__file__).resolve().parents[1].parent / "shared" / "compat" / "facelift_gslrm_state_dict_shapes.json"
TINY = GSLRMConfig(width=32, depth=2, head_dim=16, image_size=16)


def _facelift_shapes() -> dict[str, list[int]]:
    if not SHAPES.is_file():
        pytest.skip(f"FaceLift compat files absent ({SHAPES})")
    return json.loads(SHAPES.read_text())


def _full_size_state(shapes, prefix: str = "") -> dict[str, torch.Tensor]:
    """Arbitrary values (uninitialised memory is enough for a layout test and keeps it fast)."""
    return {prefix + k: torch.empty(*v) for k, v in shapes.items()}


def test_network_layout_equals_facelift_gslrm_at_full_size():
    shapes = _facelift_shapes()
    mine = gslrm_state_dict_shapes(GSLRMConfig())  # meta device: no memory
    assert mine == {k: tuple(v) for k, v in shapes.items()}
    assert len(mine) == 151
    assert sum(math.prod(s) for s in mine.values()) == pytest.approx(303.6e6, rel=1e-3)


def test_full_size_facelift_checkpoint_converts_and_loads_strictly(tmp_path):
    shapes = _facelift_shapes()
    ckpt = tmp_path / "facelift_gslrm.pt"
    torch.save({"model": _full_size_state(shapes, prefix="module."), "step": 1000}, ckpt)
    out = tmp_path / "converted"
    assert main(["facelift-gslrm", str(ckpt), str(out)]) == 0
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    with torch.device("meta"):
        net = GSLRM(GSLRMConfig())
    result = net.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    meta = json.loads((out / "mvlift.json").read_text())
    assert meta["stage"] == "reconstruction" and meta["model_config"]["width"] == 1024
    assert meta["model_config"]["depth"] == 24 and meta["rig"]["name"] == "facelift_6view"


def test_converted_tiny_checkpoint_builds_a_module_with_identical_weights(tmp_path):
    from lightning_modules.reconstruction.module import ReconstructionModule

    src = GSLRM(TINY).state_dict()
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": src}, ckpt)
    assert main(["facelift-gslrm", str(ckpt), str(tmp_path / "out"), "--head-dim", "16", "--image-size", "16"]) == 0
    module = ReconstructionModule.from_export(tmp_path / "out")
    assert module.net.config.width == 32 and module.net.config.head_dim == 16
    for k, v in module.net.state_dict().items():
        assert torch.equal(v, src[k]), k


def test_converter_error_lists_unknown_missing_and_misshaped_keys(tmp_path, capsys):
    state = GSLRM(TINY).state_dict()
    state.pop("transformer_layers.1.attn.fc.weight")
    state["extra_head.weight"] = torch.zeros(3)
    state["transformer_layers.0.norm1.weight"] = torch.zeros(7)
    with pytest.raises(ValueError) as err:
        convert_facelift_gslrm_state(state, "bad.pt", head_dim=16)
    msg = str(err.value)
    assert "bad.pt" in msg
    assert "transformer_layers.1.attn.fc.weight" in msg and "missing" in msg
    assert "extra_head.weight" in msg and "unknown" in msg
    assert "transformer_layers.0.norm1.weight" in msg and "wrong shape" in msg
    ckpt = tmp_path / "bad.pt"
    torch.save(state, ckpt)
    assert main(["facelift-gslrm", str(ckpt), str(tmp_path / "o"), "--head-dim", "16"]) == 2
    assert "extra_head.weight" in capsys.readouterr().err


def test_loss_networks_inside_facelift_checkpoints_are_dropped():
    state = dict(GSLRM(TINY).state_dict())
    state["loss_calculator.lpips_loss_module.net.slice1.0.weight"] = torch.zeros(1)
    converted, cfg = convert_facelift_gslrm_state(state, "x.pt", head_dim=16)
    assert not any(k.startswith("loss_calculator") for k in converted)
    assert cfg.depth == 2 and cfg.num_global_tokens == 2 and cfg.patch_size == 8
