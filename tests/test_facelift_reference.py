"""FaceLift's weights give FaceLift's numbers: converted FaceLift checkpoints against FaceLift's own forward pass.

The fixtures (tests/fixtures/facelift_reference/, written by tests/fixtures/make_facelift_reference.py from FaceLift's
public code at commit 0a9420c1480db1e22daa6dee192b76a013295992; see its docstring) hold a tiny GS-LRM checkpoint in
FaceLift's layout with its inputs and the Gaussians FaceLift's forward pass made of them (scales at FaceLift's bias
-2.3 and cap -1.2), and a tiny FaceLift-layout pipeline folder with its UNet's output in FaceLift's sparse multi-view
attention. Every way into mvlift from FaceLift's files must reproduce them within 1e-4: tools.convert then
``from_export`` (also for exports the converter wrote before it stored the activation constants), the fit path's
``init_from``, tools.infer's (the Gaussians of its gaussians.ply), and tools.convert facelift-mvdiffusion then
``from_export``. About 1 s of test time on 2 CPU cores (4 s with imports).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from geometry.render import load_ply
from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.reconstruction.module import ACTIVATION_ARGUMENTS, ReconstructionModule
from tools.convert import main as convert
from tools.infer import main as infer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "facelift_reference"
ATOL = 1e-4
SIZE, WIDTH, DEPTH, HEAD_DIM, PATCH = 32, 64, 2, 16, 4  # the fixture's GS-LRM (reference.json)
FACELIFT_ACTIVATIONS = {"scale_bias": -2.3, "scale_max_log": -1.2, "opacity_bias": -2.0, "depth_range": 1.8,
                        "depth_preact_bias": 0.0}  # upstream's gslrm.py, constants in its code
FACELIFT_NAMES = {"means": "xyz", "scales": "scale", "quats": "rotation", "opacities": "opacity", "colors": "color"}


@pytest.fixture(scope="module")
def gslrm_io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "gslrm_io.safetensors"))


@pytest.fixture(scope="module")
def gslrm_export(tmp_path_factory) -> Path:
    """FaceLift's checkpoint as its trainer saves it ({"model": state_dict, ...} in a .pt) -> tools.convert."""
    tmp = tmp_path_factory.mktemp("facelift_gslrm")
    ckpt = tmp / "ckpt_0000000000021125.pt"
    torch.save({"model": load_file(str(FIXTURES / "gslrm_checkpoint.safetensors")), "fwdbwd_pass_step": 21125}, ckpt)
    out = tmp / "export"
    assert convert(["facelift-gslrm", str(ckpt), str(out), "--head-dim", str(HEAD_DIM), "--image-size", str(SIZE)]) == 0
    return out


@pytest.fixture(scope="module")
def diffusion_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("facelift_mvdiffusion") / "export"
    assert convert(["facelift-mvdiffusion", str(FIXTURES / "mvdiffusion_pipeckpts"), str(out),
                    "--image-size", str(SIZE)]) == 0
    return out


def assert_facelift_gaussians(gaussians, reference: dict[str, torch.Tensor]) -> None:
    for ours, theirs in FACELIFT_NAMES.items():
        got, want = getattr(gaussians, ours).float(), reference[theirs]
        assert got.shape == want.shape, f"{ours}: {tuple(got.shape)} vs FaceLift's {tuple(want.shape)}"
        err = (got - want).abs().max().item()
        assert err < ATOL, f"{ours}: max |mvlift - FaceLift| = {err:.3g} (FaceLift's values up to " \
                           f"{want.abs().max().item():.3g})"


def reconstruct(module: ReconstructionModule, io: dict[str, torch.Tensor]):
    with torch.no_grad():
        return module.eval().reconstruct(io["images"], io["c2w"], io["fxfycxcy"])


def test_converted_gslrm_export_gives_facelifts_gaussians(gslrm_export, gslrm_io):
    hparams = json.loads((gslrm_export / "mvlift.json").read_text())["hparams"]  # the constructor arguments
    assert {k: hparams[k] for k in ACTIVATION_ARGUMENTS} == FACELIFT_ACTIVATIONS
    module = ReconstructionModule.from_export(gslrm_export)
    assert_facelift_gaussians(reconstruct(module, gslrm_io), gslrm_io)


def test_gslrm_export_converted_before_the_constants_were_stored_gives_facelifts_gaussians(gslrm_export, gslrm_io,
                                                                                          tmp_path):
    old = shutil.copytree(gslrm_export, tmp_path / "old_export")
    meta = json.loads((old / "mvlift.json").read_text())
    for name in ACTIVATION_ARGUMENTS:  # what the converter wrote before: the size, no activation constants
        meta["hparams"].pop(name)
    (old / "mvlift.json").write_text(json.dumps(meta))
    assert_facelift_gaussians(reconstruct(ReconstructionModule.from_export(old), gslrm_io), gslrm_io)


def test_fit_init_from_a_converted_gslrm_gives_facelifts_gaussians(gslrm_export, gslrm_io):
    # the model arguments a fit config names next to init_from: the size, no activation constants
    module = ReconstructionModule(rig="facelift_6view", image_size=SIZE, width=WIDTH, depth=DEPTH, head_dim=HEAD_DIM,
                                  patch_size=PATCH, init_from=str(gslrm_export))
    assert_facelift_gaussians(reconstruct(module, gslrm_io), gslrm_io)


def test_infer_writes_facelifts_gaussians_from_a_converted_gslrm(gslrm_export, diffusion_export, gslrm_io, tmp_path,
                                                                 monkeypatch):
    """tools.infer with both converted exports; the diffusion stage's sampling is replaced by the fixture's views (the
    UNet has its own test below), so the GS-LRM sees FaceLift's inputs with the rig's cameras at its size."""

    def facelift_views(self, ref_images, **kwargs):
        c2w, fxfycxcy = self.rig.cameras(SIZE)
        return {"images": gslrm_io["images"].expand(ref_images.shape[0], -1, -1, -1, -1), "c2w": c2w,
                "fxfycxcy": fxfycxcy, "rig": self.rig.name}

    monkeypatch.setattr(DiffusionModule, "sample", facelift_views)
    photo = tmp_path / "photo.png"
    Image.fromarray((torch.rand(SIZE, SIZE, 3) * 255).byte().numpy()).save(photo)
    out = tmp_path / "out"
    assert infer([str(photo), "--diffusion", str(diffusion_export), "--reconstruction", str(gslrm_export), "--out",
                  str(out), "--turntable-frames", "1", "--turntable-size", "16"]) == 0
    assert_facelift_gaussians(load_ply(out / "photo" / "gaussians.ply"), gslrm_io)


def test_converted_facelift_unet_gives_facelifts_output_in_sparse_attention(diffusion_export):
    io = load_file(str(FIXTURES / "mvdiffusion_io.safetensors"))
    module = DiffusionModule.from_export(diffusion_export).eval()
    assert module.attention_mode == "sparse"
    scenes = io["noisy"].shape[0] // module.rig.num_views
    context = module.view_embeddings.for_batch(scenes)
    assert torch.equal(context, io["context"])  # FaceLift's embedding rows, each on its view
    with torch.no_grad():
        out = module.denoise(io["noisy"], io["timesteps"], io["ref_latents"], io["class_labels"], context)
    err = (out - io["output"]).abs().max().item()
    assert err < ATOL, f"UNet output: max |mvlift - FaceLift| = {err:.3g}"
