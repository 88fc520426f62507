"""python -m tools.infer: photo -> rig views -> Gaussians (.ply, turntable .gif, views, cameras.json); the rig guard
on the user's failure (FaceLift-rig diffusion + mouse-rig GS-LRM); bad inputs; pluggable background removal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_checkpoints import SIZE, diffusion_checkpoint, reconstruction_export

from geometry.camera_files import read_camera_file
from geometry.render import check_video_formats, load_ply
from geometry.rig import load_rig
from tools.infer import main

FACELIFT, MOUSE = "facelift_6view", "mouse_oblique20_6view"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer_ckpts")
    torch.manual_seed(0)
    return {"diff_facelift": diffusion_checkpoint(root / "diffusion_facelift.ckpt", FACELIFT),
            "rec_facelift": reconstruction_export(root / "gslrm_facelift", FACELIFT),
            "rec_mouse": reconstruction_export(root / "gslrm_mouse", MOUSE)}


@pytest.fixture()
def images(tmp_path) -> dict[str, Path]:
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[6:18, 6:18] = [180, 120, 90, 255]  # an opaque square on a transparent (black) background
    Image.fromarray(rgba).save(tmp_path / "mouse_a.png")
    rgb = np.full((20, 20, 3), 60, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "mouse_b.jpg")
    return {"rgba": tmp_path / "mouse_a.png", "jpeg": tmp_path / "mouse_b.jpg"}


FAST = ["--steps", "2", "--turntable-frames", "3", "--turntable-size", "16"]


def _run(ckpts, images, out, *extra, rec="rec_facelift") -> int:
    return main([*map(str, images), "--diffusion", str(ckpts["diff_facelift"]), "--reconstruction", str(ckpts[rec]),
                 "--out", str(out), *FAST, *extra])


def test_infer_writes_views_cameras_ply_and_turntable_per_image(ckpts, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(ckpts, images.values(), out) == 0, capsys.readouterr().err
    c2w, k = load_rig(FACELIFT).cameras(SIZE)
    for stem in ("mouse_a", "mouse_b"):
        d = out / stem
        views = sorted((d / "views").glob("*.png"))
        assert [p.name for p in views] == [f"cam_{i:03d}.png" for i in range(6)]
        assert all(Image.open(p).size == (SIZE, SIZE) for p in views)
        cams = read_camera_file(d / "cameras.json")  # the layout geometry/camera_files writes
        torch.testing.assert_close(cams.c2w, c2w, atol=1e-5, rtol=0)
        torch.testing.assert_close(cams.fxfycxcy, k, atol=1e-4, rtol=0)
        assert cams.file_paths == [f"views/cam_{i:03d}.png" for i in range(6)] and cams.sizes == [(SIZE, SIZE)] * 6
        g = load_ply(d / "gaussians.ply")
        info = json.loads((d / "info.json").read_text())
        assert g.means.shape == (1, info["num_gaussians"], 3) and info["num_gaussians"] >= 6 * SIZE * SIZE
        assert torch.isfinite(g.means).all()
        gif = Image.open(d / "turntable.gif")
        assert gif.n_frames == 3 and gif.size == (16, 16)
        assert info["rigs"]["match"] and info["rigs"]["diffusion_rig"] == FACELIFT and info["seed"] == 0
    # alpha composited over white: the transparent corner is white in what the model saw
    ref = np.asarray(Image.open(out / "mouse_a" / "input.png"))
    assert (ref[0, 0] == 255).all() and tuple(ref[12, 12]) == (180, 120, 90)
    # seeded: a second run gives the same views
    again = tmp_path / "again"
    pytest.importorskip("imageio_ffmpeg", reason="the `video` extra (imageio-ffmpeg) writes MP4")
    assert _run(ckpts, [images["rgba"]], again, "--turntable-format", "gif,mp4") == 0
    a = np.asarray(Image.open(out / "mouse_a" / "views" / "cam_003.png"))
    assert np.array_equal(a, np.asarray(Image.open(again / "mouse_a" / "views" / "cam_003.png")))
    import imageio.v2 as imageio

    frames = imageio.mimread(str(again / "mouse_a" / "turntable.mp4"))
    gif_frames = imageio.mimread(str(again / "mouse_a" / "turntable.gif"))
    assert len(frames) == 3 and frames[0].shape[:2] == (16, 16)
    assert np.abs(frames[0][..., :3].astype(float) - gif_frames[0][..., :3]).mean() < 25  # same frames, lossy codec
    assert json.loads((again / "mouse_a" / "info.json").read_text())["turntables"] == ["turntable.gif",
                                                                                       "turntable.mp4"]


def test_turntable_formats_are_checked_before_any_model_runs(monkeypatch):
    with pytest.raises(ValueError, match="'webm'"):
        check_video_formats(["gif", "webm"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match="pip install imageio-ffmpeg"):
        check_video_formats(["mp4"])
    check_video_formats(["gif"])


def test_users_failure_facelift_diffusion_with_mouse_reconstruction_is_stopped_unless_allowed(
        ckpts, images, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert _run(ckpts, [images["rgba"]], out, rec="rec_mouse") == 2
    err = capsys.readouterr().err
    assert "infer: error: rig mismatch" in err and "'facelift_6view'" in err and "'mouse_oblique20_6view'" in err
    assert "front_right" in err and "20.00" in err  # the per-view difference
    assert not out.exists()  # before any work

    with caplog.at_level(logging.WARNING):
        assert _run(ckpts, [images["rgba"]], out, "--allow-rig-mismatch", rec="rec_mouse") == 0
    assert "rig mismatch" in caplog.text and "mouse_oblique20_6view" in caplog.text
    info = json.loads((out / "mouse_a" / "info.json").read_text())
    assert info["rigs"]["match"] is False and info["rigs"]["mismatch_allowed"] is True
    assert info["rigs"]["diff"]["worst_angle_deg"] == pytest.approx(20.0, abs=0.01)
    # the views keep their true cameras: the diffusion model's rig
    cams = read_camera_file(out / "mouse_a" / "cameras.json")
    torch.testing.assert_close(cams.c2w, load_rig(FACELIFT).cameras(SIZE)[0], atol=1e-5, rtol=0)
    assert (out / "mouse_a" / "gaussians.ply").is_file()


def test_bad_inputs_are_errors_naming_the_file(ckpts, images, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(wide)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    for bad, what, extra in ((broken, "broken.png", ()), (wide, "30x20", ("--center", "never")),
                             (tiny, "smaller than", ()), (tmp_path / "missing.png", "missing.png", ())):
        assert _run(ckpts, [images["rgba"], bad], tmp_path / "o", *extra) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and what in err, err
    assert not (tmp_path / "o").exists()
    # swapped stages are named
    assert main([str(images["rgba"]), "--diffusion", str(ckpts["rec_facelift"]), "--reconstruction",
                 str(ckpts["rec_facelift"]), "--out", str(tmp_path / "o")]) == 2
    assert "is a reconstruction checkpoint" in capsys.readouterr().err


def test_background_removal_is_pluggable(ckpts, images, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_matting.py").write_text(
        "import numpy as np\n"
        "def left_half(image):\n"
        "    mask = np.zeros((image.height, image.width), np.float32)\n"
        "    mask[:, : image.width // 2] = 1.0\n"
        "    return mask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert _run(ckpts, [images["jpeg"]], out, "--background-removal", "my_matting:left_half",
                "--background", "black") == 0, capsys.readouterr().err
    ref = np.asarray(Image.open(out / "mouse_b" / "input.png")).astype(int)
    assert abs(ref[5, 2] - 60).max() <= 2 and (ref[5, 15] == 0).all()
    assert "my_matting:left_half" in json.loads((out / "mouse_b" / "info.json").read_text())["background_removal"]
    assert _run(ckpts, [images["rgba"]], tmp_path / "none", "--background-removal", "none") == 0
    assert (np.asarray(Image.open(tmp_path / "none" / "mouse_a" / "input.png"))[0, 0] == 0).all()  # as is
    assert _run(ckpts, [images["rgba"]], tmp_path / "x", "--background-removal", "no_such_module:fn") == 2
    assert "no_such_module" in capsys.readouterr().err


def _corner(out: Path, stem: str = "mouse_a") -> np.ndarray:
    return np.asarray(Image.open(out / stem / "input.png")).astype(int)[0, 0]  # transparent in the photo


def test_background_defaults_to_the_trained_one_and_an_explicit_choice_wins(ckpts, images, tmp_path, caplog, capsys):
    from tiny_checkpoints import diffusion_module, reconstruction_module, save_lightning_checkpoint

    gray = diffusion_module(FACELIFT)
    gray.train_background.update(torch.full((4, 3), 0.5))  # as training on gray-background batches records it
    gray_ckpt = save_lightning_checkpoint(gray, tmp_path / "gray.ckpt")

    def run(diffusion: Path, out: Path, *extra, rec: Path = ckpts["rec_facelift"]) -> dict:
        assert main([str(images["rgba"]), "--diffusion", str(diffusion), "--reconstruction", str(rec), "--out",
                     str(out), *FAST, *extra]) == 0, capsys.readouterr().err
        return json.loads((out / "mouse_a" / "info.json").read_text())

    info = run(gray_ckpt, tmp_path / "gray")
    assert abs(_corner(tmp_path / "gray") - 128).max() <= 1
    assert info["background"] == [0.5, 0.5, 0.5] and info["background_from"] == "diffusion checkpoint"
    assert info["trained_backgrounds"]["diffusion"]["samples"] == 4
    assert info["trained_backgrounds"]["reconstruction"] is None

    info = run(gray_ckpt, tmp_path / "black", "--background", "black")  # explicit wins
    assert (_corner(tmp_path / "black") == 0).all() and info["background_from"] == "--background"

    # varied training backgrounds (random / as_is sources): white, with a note
    varied = diffusion_module(FACELIFT)
    varied.train_background.update(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.9, 0.8]]))
    varied_ckpt = save_lightning_checkpoint(varied, tmp_path / "varied.ckpt")
    with caplog.at_level(logging.INFO, logger="mvlift.infer"):
        info = run(varied_ckpt, tmp_path / "varied")
    assert (_corner(tmp_path / "varied") == 255).all() and info["background_from"] == "default (white)"
    assert info["trained_backgrounds"]["diffusion"]["varied"] is True
    assert "no single training background" in caplog.text and "varied" in caplog.text

    # nothing recorded with the diffusion model: the reconstruction export's (mvlift.json) is used
    rec = reconstruction_module(FACELIFT)
    rec.train_background.update(torch.tensor([[0.0, 0.0, 0.0]]))
    rec_export = rec.export(tmp_path / "rec_black")
    info = run(ckpts["diff_facelift"], tmp_path / "rec", rec=rec_export)
    assert (_corner(tmp_path / "rec") == 0).all() and info["background_from"] == "reconstruction checkpoint"
    from lightning_modules.reconstruction.module import ReconstructionModule

    assert ReconstructionModule.from_export(rec_export).mvlift_metadata()["background"]["color"] == [0.0, 0.0, 0.0]


def test_non_square_photo_is_centred_on_its_alpha(ckpts, tmp_path):
    wide = tmp_path / "wide_mouse.png"
    rgba = np.zeros((24, 40, 4), np.uint8)
    rgba[6:14, 26:34] = [180, 120, 90, 255]  # an object off-centre in a wide photo
    Image.fromarray(rgba).save(wide)
    assert _run(ckpts, [wide], tmp_path / "o") == 0
    info = json.loads((tmp_path / "o" / "wide_mouse" / "info.json").read_text())
    assert "centred on its mask box" in info["background_removal"]
