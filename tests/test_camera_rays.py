"""Camera conditioning of the diffusion UNet (``camera_rays``): each view's Plücker rays in the reference camera's
frame. The rays depend only on where the views are relative to the reference; the reference's own view is
recognisable; the module trains, samples from the rig or a batch's cameras, and keeps the choice in exports."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.rig import load_rig
from lightning_modules.diffusion.module import DiffusionModule, batch_cameras
from tests.test_diffusion_pixel import RIG, SIZE, make_batch, pixel_module, train_on


def rig_batch(ref_view: int, b: int = 2) -> dict:
    """make_batch with the rig's cameras: targets in rig order, the reference = rig view ``ref_view``."""
    batch = make_batch(b=b, ref_view=ref_view)
    c2w, k = load_rig(RIG).cameras(SIZE)
    batch.update(c2w=c2w.expand(b, -1, -1, -1).clone(), fxfycxcy=k.expand(b, -1, -1).clone(),
                 ref_c2w=c2w[ref_view].expand(b, 1, -1, -1).clone())
    return batch


def test_rays_are_relative_to_the_reference_camera():
    m = pixel_module(camera_rays=True)
    c2w, k, ref = batch_cameras(rig_batch(ref_view=2))
    rays = m.camera_rays(c2w, k, ref).view(2, 6, 6, SIZE, SIZE)
    # the reference's own view: rays from the origin (zero moment), the centre pixel looks down +z
    own = rays[0, 2]
    torch.testing.assert_close(own[3:], torch.zeros_like(own[3:]), atol=1e-5, rtol=0)
    centre = own[:3, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1].mean((1, 2))
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    # other views: offset cameras (non-zero moments)
    assert rays[0, 0, 3:].abs().max() > 0.1
    # moving the whole rig rigidly (a different world frame) changes nothing
    a = math.radians(37.0)
    rot = torch.eye(4)
    rot[:3, :3] = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rot[:3, 3] = torch.tensor([0.3, -1.0, 2.0])
    moved = m.camera_rays(rot @ c2w, k, rot @ ref).view(2, 6, 6, SIZE, SIZE)
    torch.testing.assert_close(moved, rays, atol=1e-5, rtol=0)
    # another reference view: other rays for the same targets
    other = m.camera_rays(*batch_cameras(rig_batch(ref_view=0))).view(2, 6, 6, SIZE, SIZE)
    assert (other - rays).abs().max() > 0.1


def test_rig_cameras_are_the_rig_with_the_photo_as_the_named_view():
    m = pixel_module(camera_rays=True)
    c2w, k, ref = m.rig_cameras(3, 4, "cpu")
    rig_c2w, rig_k = load_rig(RIG).cameras(SIZE)
    assert c2w.shape == (3, 6, 4, 4) and k.shape == (3, 6, 4) and ref.shape == (3, 4, 4)
    torch.testing.assert_close(ref[1], rig_c2w[4])
    torch.testing.assert_close(k[2], rig_k)
    with pytest.raises(ValueError, match="reference_view 6: the rig 'mouse_oblique20_6view' has 6 views"):
        m.rig_cameras(1, 6, "cpu")


def test_module_with_camera_rays_trains_and_samples_from_rig_or_batch_cameras():
    torch.manual_seed(0)
    m = pixel_module(camera_rays=True)
    assert m.unet.config.in_channels == 12  # noisy RGB + reference RGB + 6 ray channels
    assert pixel_module().unet.config.in_channels == 6  # off by default
    batch = rig_batch(ref_view=1)
    losses = train_on(m, batch, 15)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    grad = m.unet.conv_in.weight.grad[:, 6:]  # the ray channels reach the loss
    assert grad.abs().sum() > 0
    m.eval()
    ref = batch["ref_images"][:, 0]
    as_view1 = m.sample(ref, 2, seed=3, reference_view=1)["images"]
    from_batch = m.sample(ref, 2, seed=3, cameras=batch_cameras(batch))["images"]
    torch.testing.assert_close(from_batch, as_view1, atol=1e-5, rtol=0)  # the batch's cameras are the rig's here
    as_view0 = m.sample(ref, 2, seed=3)["images"]
    assert (as_view0 - as_view1).abs().max() > 1e-4  # the cameras change what is generated
    no_cameras = {k: v for k, v in batch.items() if k not in ("c2w", "ref_c2w")}
    with pytest.raises(ValueError, match="camera_rays: the batch has no cameras"):
        m.diffusion_loss(no_cameras)


def test_camera_rays_survive_export_a_plain_unet_is_widened_and_a_ray_unet_is_not_cut(tmp_path):
    m = pixel_module(camera_rays=True).eval()
    out = m.export(tmp_path / "rays")
    back = DiffusionModule.from_export(out).eval()
    assert back.hparams.camera_rays and back.unet.config.in_channels == 12
    ref = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(back.sample(ref, 2, seed=1, reference_view=3)["images"],
                               m.sample(ref, 2, seed=1, reference_view=3)["images"])
    plain_module = pixel_module().eval()
    plain = plain_module.export(tmp_path / "plain")
    args = {"rig": RIG, "pretrained": str(plain), "autoencoder": "pixel", "view_embeddings": "learned",
            "view_init": "scratch", "view_tokens": 4, "image_size": SIZE}
    widened = DiffusionModule(**args, camera_rays=True).eval()  # e.g. FaceLift's UNet: ray inputs start at zero
    assert widened.unet.config.in_channels == 12 and widened.unet.conv_in.weight[:, 6:].abs().max() == 0
    widened.view_embeddings.load_state_dict(plain_module.view_embeddings.state_dict())
    torch.testing.assert_close(widened.sample(ref, 2, seed=1, reference_view=2)["images"],
                               plain_module.sample(ref, 2, seed=1)["images"])  # it starts as the plain model
    with pytest.raises(ValueError, match="conv_in has 12 inputs; this model gives it 6.*camera_rays: true"):
        DiffusionModule(**{**args, "pretrained": str(out)})


def test_tools_take_the_photos_rig_view_from_sampling_settings():
    from lightning_modules.diffusion.sampling import Sampling
    from lightning_modules.pipeline import generate_views

    m = pixel_module(camera_rays=True).eval()
    ref = torch.rand(1, 3, SIZE, SIZE)
    as_view3 = generate_views(m, ref, Sampling(steps=2, guidance=1.0, reference_view=3), seed=0)["images"]
    torch.testing.assert_close(as_view3, m.sample(ref, 2, guidance_scale=1.0, seed=0, reference_view=3)["images"])
    default = generate_views(m, ref, Sampling(steps=2, guidance=1.0), seed=0)  # a photo is rig view 0 by default
    torch.testing.assert_close(default["images"], m.sample(ref, 2, guidance_scale=1.0, seed=0)["images"])
    with pytest.raises(ValueError, match="--reference-view must be >= 0"):
        Sampling(reference_view=-1)
    with pytest.raises(ValueError, match="reference_view 9: the rig"):
        generate_views(m, ref, Sampling(steps=2, reference_view=9), seed=0)


def test_a_data_view_becomes_the_photos_rig_view_and_a_model_without_rays_says_it_ignores_one(caplog):
    from lightning_modules.diffusion.sampling import Sampling
    from lightning_modules.pipeline import generate_views, sampling_for_data_view

    rays = pixel_module(camera_rays=True).eval()
    base = Sampling(steps=2, guidance=1.0)
    assert sampling_for_data_view(base, rays, 4).reference_view == 4  # data view 4 of a rig-ordered scene
    with pytest.raises(ValueError, match="--reference-view 7: not one of the rig 'mouse_oblique20_6view''s 6 views"):
        sampling_for_data_view(base, rays, 7)
    plain = pixel_module().eval()
    assert sampling_for_data_view(base, plain, 7) is base  # nothing to tell a model without rays
    ref = torch.rand(1, 3, SIZE, SIZE)
    with caplog.at_level("WARNING", logger="mvlift.infer"):
        generate_views(plain, ref, Sampling(steps=2, guidance=1.0, reference_view=2), seed=0)
        generate_views(plain, ref, Sampling(steps=2, guidance=1.0, reference_view=2), seed=1)
    notes = [r.getMessage() for r in caplog.records if "no camera rays" in r.getMessage()]
    assert len(notes) == 1 and "--reference-view 2" in notes[0]  # said once per model, not per batch
    caplog.clear()
    with caplog.at_level("WARNING", logger="mvlift.infer"):
        generate_views(pixel_module().eval(), ref, Sampling(steps=2, guidance=1.0), seed=0)
    assert not [r for r in caplog.records if "no camera rays" in r.getMessage()]  # view 0: nothing to say
