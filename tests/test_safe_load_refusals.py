"""Weights files a model reads while it is built — FaceLift's view embeddings ``.pt``, a pipeline folder's ``.bin``,
the VGG / LPIPS ``.pth`` — are refused by name when they ask to unpickle more than tensors, with the same
``--trust-checkpoint`` route as checkpoints (issue 27: they were raw UnpicklingErrors)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from lightning_modules.artifacts import UntrustedCheckpointError

NOTE = argparse.Namespace(written_by="another tool")  # harmless, but not allow-listed


def _assert_named(e: pytest.ExceptionInfo, path: Path) -> None:
    text = str(e.value)
    assert str(path) in text and "argparse.Namespace" in text and "--trust-checkpoint" in text, text


def test_view_embeddings_pt(tmp_path):
    from lightning_modules.diffusion.view_conditioning import load_facelift_embeds

    path = tmp_path / "fixed_prompt_embeds_6view.pt"
    torch.save({"embeds": torch.zeros(6, 4, 8), "note": NOTE}, path)
    with pytest.raises(UntrustedCheckpointError) as e:
        load_facelift_embeds(path)
    _assert_named(e, path)
    from lightning_modules.artifacts import trusting

    with trusting(True):  # --trust-checkpoint: full unpickling, the embeddings read
        assert load_facelift_embeds(path).shape == (6, 4, 8)


@pytest.mark.parametrize("component", ["unet", "image_encoder"])
def test_pipeline_bin_weights(tmp_path, component):
    from safetensors.torch import load_file

    from lightning_modules.diffusion.pretrained import load_pipeline_components, make_tiny_pipeline_folder

    folder = make_tiny_pipeline_folder(tmp_path / "pipe", image_size=16)
    st = next((folder / component).glob("*.safetensors"))
    name = "diffusion_pytorch_model.bin" if component == "unet" else "pytorch_model.bin"
    torch.save({**load_file(str(st)), "_note": NOTE}, folder / component / name)
    st.unlink()
    with pytest.raises(UntrustedCheckpointError) as e:
        load_pipeline_components(folder)
    _assert_named(e, folder / component / name)
    from lightning_modules.artifacts import trusting

    with trusting(True):  # --trust-checkpoint: the types the file asks for are allowed for the load
        c = load_pipeline_components(folder)
    assert c.unet is not None and c.image_encoder is not None


def _weights(tmp_path: Path, note: bool) -> tuple[Path, Path]:
    from lightning_modules.reconstruction.losses import _vgg16_features

    vgg = {f"features.{k}": v for k, v in _vgg16_features().state_dict().items()}
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    if note:
        vgg["note"] = heads["note"] = NOTE
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "lpips_vgg.pth")
    return tmp_path / "vgg16.pth", tmp_path / "lpips_vgg.pth"


def test_lpips_and_vgg_weights(tmp_path):
    from lightning_modules.reconstruction.losses import LPIPS, VGGFeatures

    vgg, heads = _weights(tmp_path, note=True)
    with pytest.raises(UntrustedCheckpointError) as e:
        VGGFeatures(vgg)
    _assert_named(e, vgg)
    with pytest.raises(UntrustedCheckpointError):
        LPIPS(str(vgg), str(heads))
    from lightning_modules.artifacts import trusting

    with trusting(True):
        assert LPIPS(str(vgg), str(heads)) is not None


def test_tools_evaluate_names_the_lpips_file_in_one_line_and_trust_checkpoint_gets_past(tmp_path, capsys):
    from tiny_checkpoints import reconstruction_export

    from tools.evaluate import main

    export = reconstruction_export(tmp_path / "rec", "mouse_oblique20_6view")
    vgg, heads = _weights(tmp_path, note=True)
    demo = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo.yaml"
    argv = ["--ckpt", str(export), "--data", str(demo), "--out", str(tmp_path / "ev"), "--batches", "1",
            "--batch-size", "1", "--lpips-weights", str(heads), "--vgg-weights", str(vgg)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("evaluate:")]
    assert len(lines) == 1 and "Traceback" not in err and str(vgg) in lines[0] and "--trust-checkpoint" in lines[0]
    assert main([*argv, "--trust-checkpoint"]) == 0, capsys.readouterr().err
