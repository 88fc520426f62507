"""A local, offline web viewer of mvlift results on viser (the ``viewer`` extra): ``python -m tools.view PATH``.

What PATH may be, and what the page shows (:func:`collect` reads it, :func:`build` puts it on a viser server):

- a ``.ply`` file: an interactive Gaussian-splat view of it (and, when it sits in an infer output folder, that
  folder's photo, views and cameras);
- an infer output folder of one image (``tools.infer``'s ``<out>/<stem>/``: input.png, views/cam_XXX.png,
  cameras.json, gaussians.ply, info.json): the splats, the rig cameras as frusta textured with the generated views, and
  in the side panel the input photo, the generated views (labelled with the rig's view names) and the run's facts;
- an infer ``--out`` folder of several images: the same, with a selector of the image;
- an evaluation folder (``tools.evaluate``'s results.md / results.json / grids/*.png): the table and the grids in a
  wide side panel, next to the 3D view (which shows the splats of any ``*.ply`` found there).

viser serves its web client from the installed package (no network needed) over HTTP and a websocket on one port.

Example (no browser needed; :func:`build` only fills the server's scene and panel):
    >>> import tempfile, torch
    >>> from geometry.render import Gaussians, save_ply
    >>> g = Gaussians.unbatched(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.1),
    ...                         torch.full((2,), 0.5), torch.full((2, 3), 0.25))
    >>> content = collect(save_ply(Path(tempfile.mkdtemp()) / "g.ply", g))
    >>> content.kind, [s.num_gaussians for s in content.scenes]
    ('ply', [2])
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import webbrowser
from pathlib import Path
from typing import Any

import numpy as np

from geometry.camera_files import CameraFile, read_camera_file
from geometry.render.gaussians import covariance_3d
from geometry.render.ply import load_ply

DEFAULT_PORT = 8080


@dataclasses.dataclass
class SceneContent:
    """One result: a PLY and what sits next to it (any of them may be missing)."""

    name: str
    ply: Path | None = None
    input_image: Path | None = None
    views: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (view name, png) in rig order
    cameras: CameraFile | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_gaussians: int = 0


@dataclasses.dataclass
class ViewerContent:
    """What :func:`collect` found in PATH: ``kind`` is "ply", "infer" or "evaluation"."""

    path: Path
    kind: str
    scenes: list[SceneContent]
    table_markdown: str | None = None
    grids: list[Path] = dataclasses.field(default_factory=list)


def _scene_from_folder(folder: Path, ply: Path | None = None) -> SceneContent:
    ply = ply if ply is not None else (folder / "gaussians.ply" if (folder / "gaussians.ply").is_file() else None)
    info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").is_file() else {}
    cams = read_camera_file(folder / "cameras.json") if (folder / "cameras.json").is_file() else None
    names = info.get("view_names") or []
    views = []
    if cams is not None:
        for i, rel in enumerate(cams.file_paths):
            if rel is not None and (folder / rel).is_file():
                views.append((names[i] if i < len(names) else f"view {i}", folder / rel))
    else:
        views = [(p.stem, p) for p in sorted((folder / "views").glob("*.png"))]
    return SceneContent(name=folder.name if ply is None or ply.name == "gaussians.ply" else ply.stem, ply=ply,
                        input_image=folder / "input.png" if (folder / "input.png").is_file() else None,
                        views=views, cameras=cams, info=info)


def collect(path: str | Path) -> ViewerContent:
    """Read PATH (module docstring) -> ViewerContent; a ValueError names PATH when it holds nothing to show."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".ply":
            raise ValueError(f"{path}: not a .ply file nor a folder (give a .ply, an infer output or an evaluation "
                             "folder)")
        content = ViewerContent(path, "ply", [_scene_from_folder(path.parent, ply=path)])
    elif (path / "results.md").is_file() or (path / "results.json").is_file():
        table = (path / "results.md").read_text() if (path / "results.md").is_file() else None
        plys = sorted(path.rglob("*.ply"))
        content = ViewerContent(path, "evaluation", [_scene_from_folder(p.parent, ply=p) for p in plys],
                                table_markdown=table, grids=sorted((path / "grids").glob("*.png")))
    elif (path / "gaussians.ply").is_file() or (path / "cameras.json").is_file():
        content = ViewerContent(path, "infer", [_scene_from_folder(path)])
    else:
        subs = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / "gaussians.ply").is_file()]
        if not subs:
            raise ValueError(f"{path}: nothing to view (no gaussians.ply, infer output sub-folders, results.md or "
                             "results.json)")
        content = ViewerContent(path, "infer", [_scene_from_folder(d) for d in subs])
    for scene in content.scenes:
        if scene.ply is not None:
            scene.num_gaussians = _ply_count(scene.ply)
    return content


def _ply_count(path: Path) -> int:
    with open(path, "rb") as f:
        for _ in range(64):
            words = f.readline().split()
            if words[:2] == [b"element", b"vertex"]:
                return int(words[2])
    raise ValueError(f"{path}: PLY header has no vertex element")


def splat_arrays(ply: Path) -> dict[str, np.ndarray]:
    """The arrays viser's ``add_gaussian_splats`` takes, from a 3DGS PLY: centers [N, 3], covariances [N, 3, 3],
    rgbs [N, 3] in [0, 1], opacities [N, 1]."""
    g = load_ply(ply)
    cov = covariance_3d(g.quats[0].double(), g.scales[0].double())
    return {"centers": g.means[0].numpy().astype(np.float32), "covariances": cov.numpy().astype(np.float32),
            "rgbs": g.colors[0].clamp(0, 1).numpy().astype(np.float32),
            "opacities": g.opacities[0, :, None].numpy().astype(np.float32)}


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _wxyz(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix [3, 3]."""
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(rot).wxyz


def _up_direction(c2w: np.ndarray) -> np.ndarray:
    """The rig's up: the mean of the cameras' up vectors (-y of OpenCV cameras), snapped to an axis when close."""
    up = -c2w[:, :3, 1].mean(0)
    up = up / max(np.linalg.norm(up), 1e-9)
    axis = int(np.argmax(np.abs(up)))
    if abs(up[axis]) > 0.9:
        up = np.eye(3)[axis] * np.sign(up[axis])
    return up


def _markdown_facts(scene: SceneContent) -> str:
    info = scene.info
    rows = [("Gaussians", f"{scene.num_gaussians:,}")]
    rigs = info.get("rigs") or {}
    for key, label in (("diffusion_rig", "rig"), ("match", "rigs match")):
        if key in rigs:
            rows.append((label, str(rigs[key])))
    for key in ("image", "diffusion", "reconstruction", "steps", "guidance", "seed", "scheduler", "background"):
        if key in info:
            rows.append((key, str(info[key])))
    if scene.ply is not None:
        rows.append(("PLY", str(scene.ply)))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in rows)


def build(server: Any, content: ViewerContent) -> dict[str, Any]:
    """Fill a ``viser.ViserServer`` with ``content``: splats, frusta and the side panel. Returns the handles
    ({"splats": {scene: handle}, "frusta": {scene: [handles]}, "images": [gui handles], "markdown": [...]})."""
    handles: dict[str, Any] = {"splats": {}, "frusta": {}, "images": [], "markdown": []}
    server.scene.configure_environment_map(hdri=None)  # nothing to fetch; the splats carry their own colours
    server.gui.configure_theme(control_width="large" if content.kind == "evaluation" else "medium",
                               show_share_button=False, dark_mode=False)
    server.gui.add_markdown(f"**mvlift viewer** · {content.kind} · `{content.path}`")
    cams_all = [s.cameras for s in content.scenes if s.cameras is not None]
    if cams_all:
        c2w = cams_all[0].c2w.double().numpy()
        up = _up_direction(c2w)
        server.scene.set_up_direction(tuple(float(x) for x in up))
        front = c2w[0, :3, 3]  # behind and above the rig's first (front) camera, so the rig is in view
        server.initial_camera.position = tuple(float(x) for x in front * 1.6 + up * 0.4 * np.linalg.norm(front))
        server.initial_camera.look_at = (0.0, 0.0, 0.0)
        server.initial_camera.up = tuple(float(x) for x in up)
    else:
        server.scene.set_up_direction("+z")
        server.initial_camera.position = (0.0, -2.5, 0.8)
        server.initial_camera.look_at = (0.0, 0.0, 0.0)
    for i, scene in enumerate(content.scenes):
        root = f"/scene_{i}"
        visible = i == 0
        if scene.ply is not None:
            arrays = splat_arrays(scene.ply)
            handles["splats"][scene.name] = server.scene.add_gaussian_splats(f"{root}/splats", **arrays,
                                                                              visible=visible)
        handles["frusta"][scene.name] = _add_frusta(server, root, scene, visible)
    if len(content.scenes) > 1:
        _add_scene_selector(server, content, handles)
    if content.kind == "evaluation":
        _add_evaluation_panel(server, content, handles)
    for scene in content.scenes[:1] if content.kind == "evaluation" else content.scenes:
        _add_scene_panel(server, scene, handles, several=len(content.scenes) > 1)
    return handles


def _add_frusta(server: Any, root: str, scene: SceneContent, visible: bool) -> list[Any]:
    if scene.cameras is None:
        return []
    cams = scene.cameras
    images = {p.name: p for _, p in scene.views}
    out = []
    for v in range(cams.c2w.shape[0]):
        c2w = cams.c2w[v].double().numpy()
        h, w = cams.sizes[v]
        fy = float(cams.fxfycxcy[v, 1])
        rel = cams.file_paths[v]
        img = _read_rgb(images[Path(rel).name]) if rel is not None and Path(rel).name in images else None
        out.append(server.scene.add_camera_frustum(
            f"{root}/cameras/cam_{v:03d}", fov=2.0 * math.atan(h / (2.0 * fy)), aspect=w / h, scale=0.15,
            color=(40, 90, 200), image=img, wxyz=_wxyz(c2w[:3, :3]), position=c2w[:3, 3], visible=visible))
    return out


def show_scene(handles: dict[str, Any], name: str) -> None:
    """Show the splats and frusta of result ``name`` (handles from :func:`build`) and hide the others'."""
    for scene, splats in handles["splats"].items():
        splats.visible = scene == name
    for scene, frusta in handles["frusta"].items():
        for frustum in frusta:
            frustum.visible = scene == name


def _add_scene_selector(server: Any, content: ViewerContent, handles: dict[str, Any]) -> None:
    names = [s.name for s in content.scenes]
    dropdown = server.gui.add_dropdown("Result", options=names, initial_value=names[0])
    handles["selector"] = dropdown

    @dropdown.on_update
    def _(_event) -> None:
        show_scene(handles, dropdown.value)


def _add_scene_panel(server: Any, scene: SceneContent, handles: dict[str, Any], several: bool) -> None:
    with server.gui.add_folder(scene.name if several else "Result", expand_by_default=True):
        if scene.input_image is not None:
            handles["images"].append(server.gui.add_image(_read_rgb(scene.input_image), label="input photo"))
        if scene.views:
            with server.gui.add_folder("Generated views", expand_by_default=True):
                for name, png in scene.views:
                    handles["images"].append(server.gui.add_image(_read_rgb(png), label=name))
        handles["markdown"].append(server.gui.add_markdown(_markdown_facts(scene)))


def _add_evaluation_panel(server: Any, content: ViewerContent, handles: dict[str, Any]) -> None:
    tabs = server.gui.add_tab_group()
    with tabs.add_tab("Table"):
        text = content.table_markdown or "_no results.md in this folder (results.json only)_"
        handles["markdown"].append(server.gui.add_markdown(text))
    with tabs.add_tab("Grids"):
        if not content.grids:
            handles["markdown"].append(server.gui.add_markdown("_no grids/*.png_"))
        for png in content.grids:
            handles["images"].append(server.gui.add_image(_read_rgb(png), label=png.stem))


def serve(path: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, verbose: bool = True) -> Any:
    """Start a viser server on ``host:port`` showing PATH; returns the running server (``server.stop()`` ends it)."""
    try:
        import viser
    except ImportError as e:
        raise ImportError("the viewer needs viser: pip install 'mvlift[viewer]' (or pip install viser)") from e
    content = collect(path)
    server = viser.ViserServer(host=host, port=port, label=f"mvlift · {Path(path).name}", verbose=verbose)
    try:
        build(server, content)
    except BaseException:
        server.stop()
        raise
    return server


def serve_until_interrupted(path: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                            open_browser: bool = False) -> int:
    """Serve ``path`` (a .ply, an infer output or an evaluation folder), print the address and block until Ctrl-C (``tools.view``, ``tools.infer --view``)."""
    server = serve(path, host=host, port=port, verbose=False)
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{server.get_port()}"
    print(f"viewer of {path} at {url} (Ctrl-C stops it)", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


__all__ = ["DEFAULT_PORT", "SceneContent", "ViewerContent", "build", "collect", "serve", "serve_until_interrupted",
           "show_scene", "splat_arrays"]
