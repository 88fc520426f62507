"""tools.view: what it finds in a PATH, the page and scene its viser server serves, and the page in a real headless
browser (Chromium through playwright; skipped with the reason when neither is installed)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from geometry.camera_files import CameraFile, write_camera_file
from geometry.render import Gaussians, load_ply, rasterize, save_ply, viewer
from geometry.render.viewer import collect, splat_arrays
from geometry.rig import load_rig
from tools import view

RIG = "mouse_oblique20_6view"


def _png(path, rgb: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def make_infer_folder(folder, n: int = 300, size: int = 32, seed: int = 0):
    """A folder laid out like tools.infer's output for one image: a coloured blob and the rig's views of it."""
    rig = load_rig(RIG)
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * torch.tensor([0.35, 0.15, 0.12])
    g = Gaussians.unbatched(means, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.06),
                            torch.full((n,), 0.9), (means / 0.7 + 0.5).clamp(0, 1))
    save_ply(folder / "gaussians.ply", g)
    c2w, k = rig.cameras(size)
    rgb = rasterize(g, c2w[None], k[None], size, size, torch.ones(3), backend="torch")["rgb"][0]
    names = [f"views/cam_{i:03d}.png" for i in range(rig.num_views)]
    for i, name in enumerate(names):
        _png(folder / name, rgb[i])
    _png(folder / "input.png", rgb[0])
    write_camera_file(folder / "cameras.json", CameraFile(folder.name, c2w, k, [(size, size)] * rig.num_views, names))
    (folder / "info.json").write_text(json.dumps({"view_names": list(rig.view_names), "num_gaussians": n,
                                                  "rigs": {"diffusion_rig": RIG, "match": True}}))
    return g, rig


def test_collect_reads_ply_infer_and_evaluation_folders(tmp_path):
    _, rig = make_infer_folder(tmp_path / "out" / "mouse")
    make_infer_folder(tmp_path / "out" / "rat", n=50, seed=1)
    one = collect(tmp_path / "out" / "mouse")
    assert one.kind == "infer" and len(one.scenes) == 1
    scene = one.scenes[0]
    assert scene.num_gaussians == 300 and scene.input_image.name == "input.png"
    assert [name for name, _ in scene.views] == list(rig.view_names)  # labelled with the rig's names, in rig order
    assert scene.cameras.c2w.shape == (6, 4, 4)
    both = collect(tmp_path / "out")
    assert [s.name for s in both.scenes] == ["mouse", "rat"] and [s.num_gaussians for s in both.scenes] == [300, 50]
    ply = collect(tmp_path / "out" / "rat" / "gaussians.ply")
    assert ply.kind == "ply" and ply.scenes[0].cameras is not None  # the folder around it comes along
    ev = tmp_path / "eval"
    _png(ev / "grids" / "ckpt_a.png", torch.rand(3, 8, 24))
    (ev / "results.md").write_text("| checkpoint | psnr |\n|---|---|\n| a | 20.1 |\n")
    got = collect(ev)
    assert got.kind == "evaluation" and "20.1" in got.table_markdown and [p.name for p in got.grids] == ["ckpt_a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to view"):
        collect(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "missing.ply")


def test_splat_arrays_are_the_plys_gaussians(tmp_path):
    g, _ = make_infer_folder(tmp_path, n=20)
    a = splat_arrays(tmp_path / "gaussians.ply")
    assert a["centers"].shape == (20, 3) and a["covariances"].shape == (20, 3, 3) and a["opacities"].shape == (20, 1)
    np.testing.assert_allclose(a["centers"], g.means[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(a["covariances"], np.broadcast_to(np.eye(3) * 0.06**2, (20, 3, 3)), atol=1e-7)
    np.testing.assert_allclose(a["opacities"][:, 0], 0.9, atol=1e-5)
    np.testing.assert_allclose(a["rgbs"], g.colors[0].numpy(), atol=1e-5)


viser = pytest.importorskip("viser", reason="the viewer needs viser (the `viewer` / `dev` extras)")


@pytest.fixture
def served(tmp_path):
    from geometry.render.viewer import build

    make_infer_folder(tmp_path / "res")
    server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    try:
        handles = build(server, collect(tmp_path / "res"))
        yield server, handles, tmp_path / "res"
    finally:
        server.stop()


def test_server_serves_the_offline_page_with_splats_frusta_and_views(served):
    server, handles, _ = served
    with urllib.request.urlopen(f"http://127.0.0.1:{server.get_port()}/", timeout=10) as r:
        assert r.status == 200
        html = r.read().decode()
    assert "<canvas" in html or "<script" in html
    external = [u for u in ("https://", "http://") if f'src="{u}' in html or f"href=\"{u}" in html]
    assert not external, "the page loads something from the network (it must work offline)"
    (splats,) = handles["splats"].values()
    assert splats.visible
    (frusta,) = handles["frusta"].values()
    assert len(frusta) == 6
    cams = load_rig(RIG).cameras(32)[0]
    np.testing.assert_allclose(np.stack([f.position for f in frusta]), cams[:, :3, 3].numpy(), atol=1e-5)
    assert len(handles["images"]) == 1 + 6  # the input photo and the generated views


def test_several_results_are_switched_by_the_selector(tmp_path):
    from geometry.render.viewer import build, show_scene

    make_infer_folder(tmp_path / "out" / "mouse", n=30)
    make_infer_folder(tmp_path / "out" / "rat", n=20, seed=1)
    server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    try:
        handles = build(server, collect(tmp_path / "out"))
        assert handles["selector"].options == ("mouse", "rat")
        visible = lambda: {k: (h.visible, [f.visible for f in handles["frusta"][k]]) for k, h in
                           handles["splats"].items()}
        assert visible() == {"mouse": (True, [True] * 6), "rat": (False, [False] * 6)}
        show_scene(handles, "rat")
        assert visible() == {"mouse": (False, [False] * 6), "rat": (True, [True] * 6)}
    finally:
        server.stop()


def test_view_cli_writes_the_inria_folder_and_rejects_bad_paths(tmp_path, capsys):
    g, _ = make_infer_folder(tmp_path / "res", n=10)
    assert view.main([str(tmp_path / "res"), "--inria-folder", str(tmp_path / "inria"), "--iteration", "100"]) == 0
    back = load_ply(tmp_path / "inria" / "point_cloud" / "iteration_100" / "point_cloud.ply")
    assert torch.allclose(back.means, g.means, atol=1e-6) and (tmp_path / "inria" / "cfg_args").is_file()
    assert view.main([str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


# ---- a real browser -------------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in (os.environ.get("MVLIFT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _canvas_png(page) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(page.locator("canvas").first.screenshot())).convert("RGB")).astype(float)


def _splat_area(img: np.ndarray) -> np.ndarray:
    """Around the scene's origin, clear of the side panel (right), the notices (top) and the axes (bottom left)."""
    h, w = img.shape[:2]
    return img[int(0.3 * h): int(0.8 * h), int(0.08 * w): int(0.6 * w)]


@pytest.mark.slow
def test_page_in_headless_chromium_shows_splats_that_move_with_the_camera(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the `dev` extra) drives the browser")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt install chromium, or set MVLIFT_CHROMIUM): the browser test did not run")
    server, handles, _ = served
    for frustum in next(iter(handles["frusta"].values())):
        frustum.visible = False  # only the splats are coloured now (the frusta are checked server-side above)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                                                               "--ignore-gpu-blocklist"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(f"http://127.0.0.1:{server.get_port()}/")
            page.wait_for_selector("canvas", timeout=30_000)
            deadline, before = time.time() + 40, None
            while time.time() < deadline:  # the splats arrive over the websocket and are sorted in a worker
                img = _splat_area(_canvas_png(page))
                coloured = (img.max(-1) - img.min(-1) > 60).mean()  # saturated splat pixels (background is white)
                if coloured > 0.02:
                    before = img
                    break
                time.sleep(0.5)
            assert before is not None, "the splat area stayed blank"
            page.screenshot(path=str(tmp_path / "viewer.png"))
            box = page.locator("canvas").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 180, cy + 40, steps=8)
            page.mouse.up()
            time.sleep(1.5)
            after = _splat_area(_canvas_png(page))
            assert np.abs(after - before).mean() > 2.0, "the view did not change when the camera moved"
            assert (after.max(-1) - after.min(-1) > 60).mean() > 0.01, "the splats left the view after the move"
        finally:
            browser.close()


def test_infer_view_serves_the_run_outputs_at_the_end(tmp_path, monkeypatch, capsys):
    from tools import infer

    make_infer_folder(tmp_path / "out" / "photo", n=10)
    monkeypatch.setattr(infer, "run", lambda args: [args.out / "photo"])
    served_paths = []

    def sleep(_seconds):  # the page is up: check it, then stop as Ctrl-C would
        served_paths.append(capsys.readouterr().out)
        raise KeyboardInterrupt

    monkeypatch.setattr(viewer.time, "sleep", sleep)
    argv = ["photo.png", "--diffusion", "d", "--reconstruction", "r", "--out", str(tmp_path / "out")]
    assert infer.main(argv + ["--view", "--view-port", "0"]) == 0
    assert len(served_paths) == 1 and f"viewer of {tmp_path / 'out' / 'photo'} at http://localhost:" in served_paths[0]
    assert infer.main(argv) == 0 and len(served_paths) == 1  # without --view nothing is served
