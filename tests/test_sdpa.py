"""attention_backend: which SDPA kernel the stages' networks try first (lightning_modules.sdpa)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from callbacks.run_identity import EXECUTION_ONLY, run_identity
from lightning_modules.hparams import RUNTIME
from lightning_modules.reconstruction.module import ReconstructionModule
from lightning_modules.sdpa import BACKENDS, attention_backend, check_attention_backend
from tests.test_diffusion import make_batch, tiny_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GSLRM_ARGS = {"rig": "facelift_6view", "image_size": 16, "width": 128, "depth": 1, "head_dim": 64,
              "num_input_views": 2}


def order() -> list[int]:
    return list(torch._C._get_sdp_priority_order())


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_named_kernel_goes_first_and_the_rest_keep_torchs_order_inside_the_block_only(name):
    before = order()
    with attention_backend(name):
        inside = order()
    assert inside[0] == BACKENDS[name].value
    assert [v for v in inside[1:] if v in {b.value for b in BACKENDS.values()}] == \
        [v for v in before if v != BACKENDS[name].value and v in {b.value for b in BACKENDS.values()}]
    assert order() == before


def test_auto_changes_nothing_and_an_error_inside_restores_the_order():
    before = order()
    with attention_backend("auto"):
        assert order() == before
    with pytest.raises(RuntimeError, match="boom"), attention_backend("cudnn"):
        raise RuntimeError("boom")
    assert order() == before


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"attention_backend must be one of .*'cudnn'.*got 'xformers'"):
        check_attention_backend("xformers")
    with pytest.raises(ValueError, match="attention_backend"):
        tiny_module(attention_backend="xformers")
    with pytest.raises(ValueError, match="attention_backend"):
        ReconstructionModule(**GSLRM_ARGS, attention_backend="fa3")


def test_a_backend_cpu_sdpa_cannot_use_falls_back_to_the_same_result():
    q, k, v = torch.randn(3, 1, 2, 9, 16).unbind(0)
    with attention_backend("cudnn"):  # no cuDNN kernel on CPU: torch's order takes over, same numbers
        out = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def _first_during_forward(net: torch.nn.Module, run) -> list[int]:
    seen = []
    handle = net.register_forward_pre_hook(lambda *_: seen.append(order()[0]))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_diffusion_module_runs_its_unet_inside_its_backend():
    m = tiny_module(attention_backend="cudnn")
    batch = make_batch(b=1)
    with torch.no_grad():
        seen = _first_during_forward(m.unet, lambda: m.diffusion_loss(batch, generator=m.training_generator(0)))
    assert seen == [BACKENDS["cudnn"].value]
    auto = tiny_module()
    with torch.no_grad():
        seen = _first_during_forward(auto.unet, lambda: auto.diffusion_loss(batch, generator=auto.training_generator(0)))
    assert seen == [order()[0]]


def test_reconstruction_module_runs_its_network_inside_its_backend():
    m = ReconstructionModule(**GSLRM_ARGS, attention_backend="flash")
    images, c2w = torch.rand(1, 2, 3, 16, 16), torch.eye(4).expand(1, 2, 4, 4).clone()
    c2w[..., 2, 3] = 2.0
    fxfycxcy = torch.tensor([16.0, 16.0, 8.0, 8.0]).expand(1, 2, 4)
    with torch.no_grad():
        seen = _first_during_forward(m.net, lambda: m.reconstruct(images, c2w, fxfycxcy))
    assert seen == [BACKENDS["flash"].value]


def test_backend_is_a_machine_setting_not_part_of_exports_or_run_identity(tmp_path):
    assert set(RUNTIME) <= EXECUTION_ONLY
    a, b = ReconstructionModule(**GSLRM_ARGS), ReconstructionModule(**GSLRM_ARGS, attention_backend="cudnn")
    assert run_identity(a)["config_hash"] == run_identity(b)["config_hash"]
    config = json.loads((b.export(tmp_path / "r") / "mvlift.json").read_text())
    assert "attention_backend" not in config["hparams"] and "compile" not in config["hparams"]
    assert ReconstructionModule.from_export(tmp_path / "r", attention_backend="flash").attention_backend == "flash"
    d = tiny_module(attention_backend="cudnn")
    meta = json.loads((d.export(tmp_path / "d") / "mvlift.json").read_text())
    assert "attention_backend" not in meta["hparams"]
    assert type(d).from_export(tmp_path / "d").attention_backend == "auto"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name,kernel", [("cudnn", "cudnn"), ("flash", "flash")])
def test_gpu_the_named_kernel_runs_in_the_reconstruction_forward_and_backward(name, kernel):
    """On the device: GS-LRM (head dim 64, bf16) under ``attention_backend`` runs that kernel, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    m = ReconstructionModule(**GSLRM_ARGS, attention_backend=name).cuda()
    images = torch.rand(1, 2, 3, 16, 16, device="cuda")
    c2w = torch.eye(4, device="cuda").expand(1, 2, 4, 4).clone()
    c2w[..., 2, 3] = 2.0
    fxfycxcy = torch.tensor([16.0, 16.0, 8.0, 8.0], device="cuda").expand(1, 2, 4)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            g = m.reconstruct(images, c2w, fxfycxcy)
        (g.means.float().sum() + g.colors.float().sum()).backward()
        torch.cuda.synchronize()
    names = [e.key.lower() for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    attention = [n for n in names if kernel in n]
    assert len(attention) >= 2, names  # forward and backward kernels
