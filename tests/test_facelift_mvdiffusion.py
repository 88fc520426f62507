"""FaceLift's diffusion pipeline as an export (tools.convert facelift-mvdiffusion) and view embeddings made from text
(tools.view_embeddings), with tiny pipelines the tests save (a tiny CLIP text encoder and tokenizer included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from tiny_checkpoints import reconstruction_export

from callbacks.rig_guard import RigMismatchError, check_checkpoint_rigs
from geometry.rig import load_rig
from lightning_modules.artifacts import checkpoint_rig, checkpoint_stage
from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.pretrained import build_tiny_text_encoder, make_tiny_pipeline_folder
from lightning_modules.diffusion.view_conditioning import (
    FACELIFT_VIEW_ORDER,
    ViewEmbeddings,
    ViewEmbeddingShapeError,
    text_view_embeddings,
    view_prompts,
)
from tools.convert import main as convert
from tools.view_embeddings import main as view_embeddings

SIZE, DIM = 16, 32  # the tiny pipeline: 16 px views, 32-dim cross-attention
FACELIFT, MOUSE = "facelift_6view", "mouse_oblique20_6view"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "compat"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "data" / "demo.yaml"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A tiny FaceLift-layout pipeckpts/ (with text_encoder/ + tokenizer/), a FaceLift-format embedding file
    [6, 77, 32] (float16, like FaceLift's) and its conversion."""
    root = tmp_path_factory.mktemp("facelift_mvdiffusion")
    pipe = make_tiny_pipeline_folder(root / "pipeckpts", image_size=SIZE, facelift_layout=True, text_encoder=True)
    embeds = root / "fixed_prompt_embeds_6view.pt"
    torch.save((torch.randn(6, 77, DIM, generator=torch.Generator().manual_seed(0))).half(), embeds)
    out = root / "converted"
    assert convert(["facelift-mvdiffusion", str(pipe), str(out), "--view-embeddings", str(embeds),
                    "--image-size", str(SIZE)]) == 0
    return {"root": root, "pipe": pipe, "embeds": embeds, "out": out}


def _stored_embeds(path: Path) -> tuple[torch.Tensor, dict]:
    """(embeds, metadata) of a view embeddings file or of an export folder's."""
    path = path / "view_embeddings.safetensors" if path.is_dir() else path
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("embeds"), f.metadata()


def test_converted_export_samples_what_the_folder_loaded_as_in_tools_fit_samples(made):
    # tools.fit builds the module from the config's init args: the pipeline folder + FaceLift's fixed embeddings
    fit = DiffusionModule(rig=FACELIFT, pretrained=str(made["pipe"]), attention="sparse", view_embeddings="facelift",
                          facelift_embeds=str(made["embeds"]), image_size=SIZE).eval()
    assert checkpoint_stage(made["out"]) == "diffusion"
    converted = DiffusionModule.from_export(made["out"]).eval()  # what the tools' loader does with an export
    ref = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    a = fit.sample(ref, num_inference_steps=2, seed=7)["images"]
    b = converted.sample(ref, num_inference_steps=2, seed=7)["images"]
    assert torch.equal(a, b)
    meta = json.loads((made["out"] / "mvlift.json").read_text())
    assert meta["attention"] == "sparse" and meta["view_embeddings"] == "facelift" and meta["rig"]["name"] == FACELIFT
    assert meta["converted_from"]["format"] == "facelift-mvdiffusion"
    assert meta["view_embeddings_info"]["file_view_order"] == list(FACELIFT_VIEW_ORDER)
    assert meta["view_embeddings_info"]["rows"] == [0, 1, 2, 3, 4, 5]
    for sub in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "image_normalizer"):
        assert (made["out"] / sub).is_dir(), sub  # self-contained: the pipeline folder is not needed any more
    assert not converted.view_embeddings.learnable


def test_view_order_of_the_file_is_mapped_to_the_rigs_by_camera_direction(made, tmp_path, capsys):
    src = torch.load(made["embeds"], weights_only=True).float()
    # a rig listing FaceLift's six cameras in another order
    d = load_rig(FACELIFT).to_dict()
    order = ["back", "left", "front_left", "front", "front_right", "right"]
    idx = [FACELIFT_VIEW_ORDER.index(v) for v in order]
    d.update(name="facelift_reordered", view_names=order, azimuths_deg=[d["azimuths_deg"][i] for i in idx],
             elevations_deg=[0.0] * 6)
    rig_file = tmp_path / "facelift_reordered.yaml"
    rig_file.write_text(yaml.safe_dump(d))
    out = tmp_path / "reordered"
    assert convert(["facelift-mvdiffusion", str(made["pipe"]), str(out), "--view-embeddings", str(made["embeds"]),
                    "--rig", str(rig_file), "--image-size", str(SIZE)]) == 0
    stored, _ = _stored_embeds(out)
    assert torch.equal(stored, src[idx])
    info = json.loads((out / "mvlift.json").read_text())["view_embeddings_info"]
    assert info["rows"] == idx and info["rig_view_order"] == order
    # a file in another row order, stated with --file-view-order: rig facelift_6view gets each view's own row
    file_order = ["right", "front_right", "front", "front_left", "left", "back"]
    out2 = tmp_path / "file_order"
    assert convert(["facelift-mvdiffusion", str(made["pipe"]), str(out2), "--view-embeddings", str(made["embeds"]),
                    "--file-view-order", ",".join(file_order), "--image-size", str(SIZE)]) == 0
    stored2, _ = _stored_embeds(out2)
    assert torch.equal(stored2, src[[file_order.index(v) for v in FACELIFT_VIEW_ORDER]])
    # the mouse rig's views (20 degrees up) have no FaceLift embedding: refused, naming the views
    capsys.readouterr()
    assert convert(["facelift-mvdiffusion", str(made["pipe"]), str(tmp_path / "mouse"), "--view-embeddings",
                    str(made["embeds"]), "--rig", MOUSE, "--image-size", str(SIZE)]) == 2
    err = capsys.readouterr().err
    assert MOUSE in err and "elevation 20" in err and "tools.view_embeddings" in err
    assert not (tmp_path / "mouse").exists()


def test_embeddings_that_do_not_fit_the_unet_are_a_named_error(made, tmp_path, capsys):
    wide = tmp_path / "wide.pt"
    torch.save(torch.randn(6, 77, 48), wide)  # like the user's [6, 77, 768] for a 1024-dim UNet
    assert convert(["facelift-mvdiffusion", str(made["pipe"]), str(tmp_path / "o"), "--view-embeddings", str(wide),
                    "--image-size", str(SIZE)]) == 2
    err = capsys.readouterr().err
    assert "[6, 77, 48]" in err and "48-dim" in err and f"{DIM}-dim" in err
    short = tmp_path / "short.pt"
    torch.save(torch.randn(6, 20, DIM), short)
    with pytest.raises(ViewEmbeddingShapeError, match="20 tokens where the pipeline's text context has 77"):
        from lightning_modules.facelift.convert import convert_facelift_mvdiffusion

        convert_facelift_mvdiffusion(made["pipe"], tmp_path / "o2", view_embeddings=short, image_size=SIZE)
    # a text encoder of another width than the UNet's cross-attention (768 vs 1024 in the user's case)
    other = tmp_path / "other_pipe"
    shutil.copytree(made["pipe"], other)
    shutil.rmtree(other / "text_encoder")
    build_tiny_text_encoder(48, vocab_size=600).save_pretrained(str(other / "text_encoder"))
    with pytest.raises(ViewEmbeddingShapeError, match="48-dim embeddings for a UNet whose cross-attention is 32-dim"):
        text_view_embeddings(other, MOUSE)
    assert view_embeddings(["--pipeline", str(other), "--rig", MOUSE, "--out", str(tmp_path / "e.safetensors")]) == 2
    assert not (tmp_path / "e.safetensors").exists()


def test_facelifts_real_embedding_file_is_in_facelift_view_order_and_too_wide_for_a_tiny_unet(made, tmp_path):
    real = SHARED / "facelift_fixed_prompt_embeds_6view.pt"
    if not real.is_file():
        pytest.skip(f"FaceLift compat files absent ({real})")
    e = torch.load(real, weights_only=True).float()
    assert tuple(e.shape) == (6, 77, 1024)

    def first_difference(i: int, j: int) -> int:
        return int(((e[i] - e[j]).abs().amax(-1) > 1e-3).nonzero()[0])

    # CLIP's causal text encoder: prompts sharing words share embeddings up to them. Rows 0, 1, 5 read "front", and
    # rows 1 and 5 go on together ("front_") one token further: front, front_right, ..., front_left
    assert first_difference(1, 5) > first_difference(0, 1) == first_difference(0, 5) > first_difference(0, 2)
    with pytest.raises(ViewEmbeddingShapeError, match="1024-dim embeddings for a UNet whose cross-attention is 32"):
        from lightning_modules.facelift.convert import convert_facelift_mvdiffusion

        convert_facelift_mvdiffusion(made["pipe"], tmp_path / "o", view_embeddings=real, image_size=SIZE)


def test_text_built_embeddings_shape_prompts_determinism_and_rig_binding(made, tmp_path, capsys):
    out_a, out_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert view_embeddings(["--pipeline", str(made["pipe"]), "--rig", MOUSE, "--out", str(out_a)]) == 0
    assert "from above at an angle" in capsys.readouterr().out
    assert view_embeddings(["--pipeline", str(made["pipe"]), "--rig", MOUSE, "--out", str(out_b)]) == 0
    a, b = ViewEmbeddings.load(out_a), ViewEmbeddings.load(out_b)
    assert tuple(a.embeds.shape) == (6, 77, DIM) and torch.equal(a.embeds, b.embeds)
    assert not torch.equal(a.embeds[0], a.embeds[1])  # one prompt per view
    _, meta = _stored_embeds(out_a)
    mouse = load_rig(MOUSE)
    assert meta["rig_fingerprint"] == mouse.fingerprint and meta["source"] == "text"
    prompts = json.loads(meta["info"])["prompts"]
    assert prompts == view_prompts(MOUSE) and prompts[3] == ("a rendering image of a 3D model, back view, from above "
                                                             "at an angle, color map.")
    assert view_prompts(FACELIFT, "{view} at {azimuth} deg, {elevation words}")[2] == "right at 90 deg, at eye level"
    with pytest.raises(ValueError, match="unknown field"):
        view_prompts(MOUSE, "{view} {colour}")
    # the diffusion module starts from it (view_embeddings: FILE), learnable, and says where it came from
    m = DiffusionModule(rig=MOUSE, pretrained=str(made["pipe"]), view_embeddings=str(out_a), image_size=SIZE)
    assert m.view_embeddings.source == "text" and m.view_embeddings.embeds.requires_grad
    assert torch.equal(m.view_embeddings.embeds.detach(), a.embeds)
    export = m.export(tmp_path / "mouse_export")
    assert json.loads((export / "mvlift.json").read_text())["view_embeddings_info"]["prompts"] == prompts
    assert DiffusionModule.from_export(export).view_embeddings.source == "text"
    # bound to its rig: a FaceLift-rig model refuses it, the rig guard reads its rig
    with pytest.raises(ValueError, match="mouse_oblique20_6view.*facelift_6view"):
        DiffusionModule(rig=FACELIFT, pretrained=str(made["pipe"]), view_embeddings=str(out_a), image_size=SIZE)
    assert checkpoint_rig(out_a).fingerprint == mouse.fingerprint
    rec_mouse = reconstruction_export(tmp_path / "rec_mouse", MOUSE)
    assert check_checkpoint_rigs(out_a, rec_mouse).ok
    with pytest.raises(RigMismatchError):
        check_checkpoint_rigs(out_a, reconstruction_export(tmp_path / "rec_facelift", FACELIFT))
    # a conversion can take it too, for its own rig
    conv = tmp_path / "text_converted"
    assert convert(["facelift-mvdiffusion", str(made["pipe"]), str(conv), "--view-embeddings", str(out_a), "--rig",
                    MOUSE, "--image-size", str(SIZE)]) == 0
    assert json.loads((conv / "mvlift.json").read_text())["view_embeddings"] == "text"


def test_infer_and_evaluate_accept_the_converted_export(made, tmp_path, capsys):
    from PIL import Image

    from tools.evaluate import main as evaluate
    from tools.infer import main as infer

    rec = reconstruction_export(tmp_path / "gslrm_facelift", FACELIFT)
    photo = tmp_path / "mouse.png"
    Image.new("RGB", (20, 20), (90, 60, 40)).save(photo)
    assert infer([str(photo), "--diffusion", str(made["out"]), "--reconstruction", str(rec), "--out",
                  str(tmp_path / "infer"), "--steps", "1", "--turntable-frames", "2", "--turntable-size", "16"]) == 0, \
        capsys.readouterr().err
    assert len(list((tmp_path / "infer" / "mouse" / "views").glob("*.png"))) == 6
    # the README's baseline: both FaceLift stages on mouse data, with the FaceLift rig's and the mouse rig's cameras
    assert evaluate(["--diffusion", str(made["out"]), "--ckpt", str(rec), "--data", str(DEMO), "--rig", FACELIFT,
                     "--rig", MOUSE, "--out", str(tmp_path / "eval"), "--batches", "1", "--batch-size", "1",
                     "--steps", "1"]) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert [(r["mode"], r["rig"], r["diffusion_rig_match"], r["rig_match"]) for r in rows] == [
        ("chained", FACELIFT, True, True), ("chained", MOUSE, True, False)]
    assert "diffusion rig match" in (tmp_path / "eval" / "results.md").read_text()
