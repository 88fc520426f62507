"""Readers that turn a source (procedural generator, FaceLift-layout folders, webdataset shards) into raw scenes.

A source is random-access: ``len(source)`` scenes; ``source.cameras(i)`` is cheap (camera file only) and
``source.pixels(i, views)`` decodes just the requested views. Raw pixels are straight RGB [v, 3, H, W] and alpha
[v, 1, H, W] (or None) in [0, 1]; ``has_background`` says the RGB already holds a real background.

Source config (one dict of the DataModule's ``sources``):
    name, kind (synthetic | real; a procedural source is synthetic), format (procedural | facelift |
    facelift_mvdiffusion | shards), weight, realistic (a synthetic source of captured-looking scenes: its samples'
    ``kind`` is ``realistic``, shown as "synthetic (realistic)", never "real"; procedural: also how it renders),
    background (white | gray | black | random | as_is), up_axis (data world up, for normalization; default the rig's),
    augment (optional: domain-gap ops ``{op: {p, ...}}`` that replace its kind's ops for this source's scenes,
    datamodules.augment; ``{}`` or null: none)
    procedural: num_scenes, realistic, num_views, seed, camera_jitter_deg, rig (default: the stage's rig),
        device (auto | cpu | cuda: where its scenes are rendered, ProceduralSource), truth (realistic sources:
        ``capture`` (default): the captured photos and masks are the views; ``clean``: the views are the clean render of
        the same scene — creature and cameras are those of the clean source of the same seed — and the captures are
        what the model sees, ``Source.observed``: the samples' ``input_images`` / ``input_alpha``, so a realistic
        photo is scored against its scene's clean truth)
    facelift / facelift_mvdiffusion: path (folder of sample dirs, one sample dir) or list_file; mvdiffusion: rig;
        cache_mb (default 0: off): keep up to this many MB of decoded views per loader worker (``DecodedViews``),
        for small sets read over and over (the one-scene overfit): a view is then decoded once per worker
    shards: urls (paths, brace patterns ``shard-{000000..000009}.tar``, globs or a directory of .tar files)

Shard layout (written by ``tools.make_shards``): one webdataset sample per scene, key ``NNNNNNNN_<scene dir>``,
members ``KEY.cameras.json`` (the scene's ``opencv_cameras.json`` bytes, verbatim) and ``KEY.VVV.png`` (view VVV's PNG
bytes, verbatim, in camera-frame order). Views are looked up by their number VVV, never by position; the PNG members
must be exactly one per camera frame (a SampleError naming the sample and the missing members otherwise).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import tarfile
from pathlib import Path
from typing import Any

import torch
from braceexpand import braceexpand
from torch import Tensor

from datamodules import render_cache
from datamodules.augment import check_ops
from datamodules.io import BACKGROUND_CHOICES, SampleError, load_png_views, png_header, read_bytes, validate_cameras
from datamodules.procedural import ScenePlanner, make_scene, make_scenes, scene_id
from geometry.camera_files import PathEscapeError, check_relative, frame_image_path, read_camera_file
from geometry.cameras import invert_rigid
from geometry.render import gsplat_available
from geometry.rig import Rig, load_rig

log = logging.getLogger("mvlift.data")
FORMATS = ("procedural", "facelift", "facelift_mvdiffusion", "shards")
KINDS = ("synthetic", "real")  # a source's kind, as configs write it
# A sample's ``kind``: its source's kind, except that a synthetic source of realistic captures (``realistic: true``)
# is "realistic": metrics and tables keep it apart from the clean synthetic scenes and never call it "real".
SAMPLE_KINDS = ("synthetic", "realistic", "real")
CAMERA_FILE = "opencv_cameras.json"
SOURCE_KEYS = {
    "name", "kind", "format", "weight", "background", "up_axis", "path", "list_file", "urls", "num_scenes",
    "realistic", "num_views", "seed", "camera_jitter_deg", "rig", "index_offset", "augment", "device", "cache_mb",
    "truth",
}
TRUTHS = ("capture", "clean")


@dataclasses.dataclass
class SceneCameras:
    """One scene's cameras: c2w [V, 4, 4], fxfycxcy [V, 4] for images of ``sizes`` [(H, W)] (None: not declared)."""

    scene_id: str
    where: str  # what errors name: a sample directory, shard member or procedural index
    c2w: Tensor
    fxfycxcy: Tensor
    sizes: list[tuple[int, int]] | None = None


class Source:
    """Base: name, kind, weight, background, augment (its own ops, None: its kind's), realistic (synthetic captures:
    ``sample_kind`` "realistic"); subclasses implement __len__, cameras, pixels. ``observed``: None, or a source of the same scenes and cameras whose pixels are what the model
    sees instead of this source's (the samples' ``input_images``; ``ProceduralSource(truth="clean")``)."""

    observed: Source | None = None

    def __init__(self, name: str, kind: str, weight: float = 1.0, background: str = "white",
                 up_axis: str | None = None, augment: dict[str, Any] | None = None, realistic: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"source {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if realistic and kind != "synthetic":
            raise ValueError(f"source {name!r}: realistic: true marks synthetic captures; kind must be synthetic, "
                             f"got {kind!r}")
        if background not in BACKGROUND_CHOICES:
            raise ValueError(f"source {name!r}: background must be one of {BACKGROUND_CHOICES}, got {background!r}")
        if not weight >= 0:
            raise ValueError(f"source {name!r}: weight must be >= 0, got {weight}")
        self.name, self.kind, self.weight, self.background, self.up_axis = name, kind, float(weight), background, up_axis
        self.augment = augment
        self.sample_kind = "realistic" if realistic else kind  # the samples' kind (SAMPLE_KINDS)

    def __len__(self) -> int:
        raise NotImplementedError

    def cameras(self, i: int) -> SceneCameras:
        raise NotImplementedError

    def pixels(self, i: int, views: list[int]) -> tuple[Tensor, Tensor | None, bool]:
        """(rgb [v, 3, H, W], alpha [v, 1, H, W] | None, has_background) of the requested views."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.sample_kind}, scenes={len(self)}, weight={self.weight})"


# ---- procedural ----------------------------------------------------------------------------------------------------
_PRERENDERED: dict[tuple, dict[str, Tensor]] = {}  # this process's last 4 GPU pre-renderings, by their settings


class _SceneCache:
    """Scenes rendered on the CPU, by (rig, views, size, realistic, seed, jitter, index), least recently used dropped
    beyond ``max_mb``: a scene is the same whichever source object asks (``tools.evaluate`` builds its sources anew
    for every row; a realistic source with ``truth: clean`` shares its clean twin with the clean source)."""

    def __init__(self, max_mb: float = 128.0) -> None:
        self.max_bytes, self.bytes = int(max_mb * 2**20), 0
        self._scenes: collections.OrderedDict[tuple, tuple[dict[str, Any], int]] = collections.OrderedDict()

    def get(self, key: tuple) -> dict[str, Any] | None:
        if key not in self._scenes:
            return None
        self._scenes.move_to_end(key)
        return self._scenes[key][0]

    def put(self, key: tuple, scene: dict[str, Any]) -> None:
        size = sum(v.numel() * v.element_size() for v in scene.values() if isinstance(v, Tensor))
        if size > self.max_bytes:
            return
        self._scenes[key] = (scene, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._scenes.popitem(last=False)
            self.bytes -= old


_RENDERED_SCENES = _SceneCache()


PLANNER_MIN_SCENES = 8192


def planner_workers(num_scenes: int) -> int:
    """Processes that plan a GPU pre-rendering of ``num_scenes`` scenes: one per two cores, at most 8; none for fewer
    than 8,192 scenes, where starting them (10-11 s for 8 spawned processes on an H100 machine) costs more than
    planning in this process (1.2-1.5 s a 1,000 scenes; docs/benchmarks.md, "Where a pre-render's time goes")."""
    return min(8, (os.cpu_count() or 1) // 2) if num_scenes >= PLANNER_MIN_SCENES else 0


class ProceduralSource(Source):
    """Scenes from ``datamodules.procedural`` at the stage's image size, deterministic per index.

    ``device``: ``cpu`` renders each scene when it is read (the torch rasterizer: ~0.3 s a scene at 128 px, in the
    loader workers); ``cuda`` renders every scene once, at construction, in batches on this process's GPU (gsplat:
    thousands of scenes in seconds) and keeps them in host memory as 8-bit RGBA (num_scenes x views x 4 x size^2
    bytes: 1 GB for 4,000 scenes of 8 views at 128 px); ``auto``: ``cuda`` when CUDA and gsplat are available.

    ``truth="clean"`` (realistic only): this source's pixels are the clean render of each scene (the clean source of
    the same seed draws the same creature and cameras, ``datamodules.procedural.plan_scene``) and ``observed`` is the
    realistic source itself: the captures the model sees."""

    def __init__(self, name: str, kind: str, rig: Rig, num_scenes: int, num_views: int, size: int,
                 realistic: bool = False, seed: int = 0, camera_jitter_deg: float = 0.0, index_offset: int = 0,
                 device: str = "auto", truth: str = "capture", **kw: Any) -> None:
        if kind != "synthetic":
            raise ValueError(f"source {name!r}: a procedural source is synthetic (kind: synthetic; realistic: true for "
                             f"captured-looking scenes), got kind {kind!r}")
        super().__init__(name, kind, realistic=bool(realistic), **kw)
        if num_scenes < 1 or num_views < 1:
            raise ValueError(f"source {name!r}: num_scenes and num_views must be >= 1")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"source {name!r}: device must be auto|cpu|cuda, got {device!r}")
        if truth not in TRUTHS:
            raise ValueError(f"source {name!r}: truth must be one of {TRUTHS}, got {truth!r}")
        if truth == "clean" and not realistic:
            raise ValueError(f"source {name!r}: truth: clean is for realistic sources (a clean source's views are "
                             "its truth already)")
        self.truth = truth
        if truth == "clean":  # the captures are what the model sees; this source's own pixels are the clean render
            self.observed = ProceduralSource(name, kind, rig, num_scenes, num_views, size, True, seed,
                                             camera_jitter_deg, index_offset, device, **kw)
            # its samples stay "realistic": the model sees the captures
            realistic = False
        self.rig, self.num_scenes, self.num_views, self.size = rig, int(num_scenes), int(num_views), int(size)
        self.realistic, self.seed, self.jitter = bool(realistic), int(seed), float(camera_jitter_deg)
        self.index_offset = int(index_offset)
        self._cache: dict[int, dict[str, Any]] = {}
        self._rendered: dict[str, Tensor] | None = None
        if device == "cuda" or (device == "auto" and torch.cuda.is_available() and gsplat_available()):
            key = (rig.fingerprint, *self._args()[1:], self.index_offset, self.num_scenes)
            if key not in _PRERENDERED:  # one rendering per process (tools.evaluate builds a source per row)
                while len(_PRERENDERED) >= 4:
                    _PRERENDERED.pop(next(iter(_PRERENDERED)))
                _PRERENDERED[key] = self._render_all(torch.device("cuda", torch.cuda.current_device()))
            self._rendered = _PRERENDERED[key]

    def __len__(self) -> int:
        return self.num_scenes

    def _args(self) -> tuple:
        return self.rig, self.num_views, self.size, self.realistic, self.seed, self.jitter

    def _render_all(self, device: torch.device, chunk: int = render_cache.CHUNK) -> dict[str, Tensor]:
        """Every scene rendered on ``device`` in batches of ``chunk`` (by default a cache chunk's scenes), planned by
        :func:`planner_workers` processes; with ``MVLIFT_PRERENDER_CACHE`` set, read from or written to that folder in aligned chunks of
        ``render_cache.CHUNK`` scenes, shared with the other processes (``datamodules.render_cache``)."""

        v, s, off = self.num_views, self.size, self.index_offset
        out = render_cache.host_buffers(self.num_scenes, v, s)
        with contextlib.ExitStack() as stack:
            planner = None

            def render_into(dst: dict[str, Tensor], first: int, stop: int) -> dict[str, Tensor]:
                """Scenes first .. stop-1 (absolute numbers) into dst[0 ..]."""
                nonlocal planner
                if planner is None:  # (not started when every chunk is read from the cache)
                    planner = stack.enter_context(ScenePlanner(*self._args(),
                                                               workers=planner_workers(self.num_scenes)))
                for a in range(first, stop, chunk):
                    b = min(a + chunk, stop)
                    scenes = make_scenes(list(range(a, b)), *self._args(), device=device, planner=planner)
                    for k, t in self._pack(scenes).items():
                        dst[k][a - first: b - first] = t
                return dst

            cache = render_cache.RenderCache.from_env(
                {"rig": self.rig.fingerprint, "views": v, "size": s, "realistic": self.realistic, "seed": self.seed,
                 "jitter": self.jitter})
            if cache is None:
                return render_into(out, off, off + self.num_scenes)
            starts, n = [a for a, _ in render_cache.chunk_bounds(off, self.num_scenes)], render_cache.CHUNK
            chunks = cache.chunks(starts, lambda a: render_into(render_cache.host_buffers(n, v, s), a, a + n))
            for a, got in chunks:
                lo, hi = max(a, off), min(a + n, off + self.num_scenes)
                for k in out:
                    out[k][lo - off: hi - off] = got[k][lo - a: hi - a]
            log.info("source %r (%s): %d scenes pre-rendered through %s: %s chunks of %d", self.name,
                     "captures" if self.realistic else "clean renders", self.num_scenes, cache.folder, cache.counts, n)
        return out

    @staticmethod
    def _pack(scenes: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Rendered scene dicts as the host tensors the source keeps (pixels as 8-bit RGBA)."""
        rgba = torch.stack([torch.cat([sc["images"], sc["alpha"]], 1) for sc in scenes])
        return {"rgba": (rgba * 255.0 + 0.5).to(torch.uint8).cpu(),
                "c2w": torch.stack([sc["c2w"] for sc in scenes]).cpu(),
                "fxfycxcy": torch.stack([sc["fxfycxcy"] for sc in scenes]).cpu()}

    def _scene(self, i: int) -> dict[str, Any]:
        if i not in self._cache:
            key = (self.rig.fingerprint, *self._args()[1:], i + self.index_offset)
            scene = _RENDERED_SCENES.get(key)
            if scene is None:
                scene = make_scene(i + self.index_offset, *self._args())
                _RENDERED_SCENES.put(key, scene)
            self._cache = {i: scene}
        return self._cache[i]

    def cameras(self, i: int) -> SceneCameras:
        where = f"{self.name} procedural scene {i + self.index_offset}"
        if self._rendered is not None:

            return SceneCameras(scene_id(self.seed, i + self.index_offset), where, self._rendered["c2w"][i],
                                self._rendered["fxfycxcy"][i])
        s = self._scene(i)
        return SceneCameras(s["scene_id"], where, s["c2w"], s["fxfycxcy"])

    def pixels(self, i: int, views: list[int]) -> tuple[Tensor, Tensor | None, bool]:
        if self._rendered is not None:
            rgba = self._rendered["rgba"][i, views].float() / 255.0
            return rgba[:, :3], rgba[:, 3:], False
        s = self._scene(i)
        return s["images"][views], s["alpha"][views], bool(s["has_background"])


# ---- FaceLift folders ----------------------------------------------------------------------------------------------
def resolve_list_entries(list_file: str | Path) -> list[Path]:
    """Sample directories named by a list file: an absolute entry as is when it exists, a relative one against the
    list file's folder (never the working directory first), else by its trailing path components under the list
    file's folder or its parent; otherwise FileNotFoundError naming the entries. Two entries naming one folder are
    an error (the scene would count twice)."""
    list_file = Path(list_file)
    try:
        entries = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        raise FileNotFoundError(f"{list_file}: cannot read list file ({e.strerror or e})") from None
    base = list_file.resolve().parent
    found, missing = [], []
    for entry in entries:
        p = resolve_entry(entry, base)
        (found if p is not None else missing).append(p if p is not None else entry)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{list_file}: {len(missing)} of {len(entries)} entries not found as given nor "
                                f"relative to {base}: {shown}")
    if not found:
        raise ValueError(f"{list_file}: list file has no entries")
    seen: dict[Path, str] = {}
    for entry, p in zip(entries, found):
        key = p.resolve()
        if key in seen:
            raise ValueError(f"{list_file}: entries {seen[key]!r} and {entry!r} name the same folder {key}")
        seen[key] = entry
    return found


def resolve_entry(entry: str, base: Path) -> Path | None:
    """``entry`` if it is an absolute directory, base/entry if it is relative, else base/<trailing components of
    entry> (longest first, also under base's parent); else None."""
    p = Path(entry)
    if p.is_absolute() and p.is_dir():
        return p
    if not p.is_absolute() and (base / p).is_dir():
        return base / p
    parts = [x for x in p.parts if x not in ("/", "")]
    for n in range(len(parts), 0, -1):
        for root in (base, base.parent):
            cand = root.joinpath(*parts[-n:])
            if cand.is_dir():
                return cand
    return None


def sample_dirs(path: str | Path, marker: str | None = CAMERA_FILE) -> list[Path]:
    """Sample directories under ``path``: itself when it holds ``marker``, else its sorted sub-directories that do
    (marker None: sub-directories holding PNGs). A ``.txt`` path is a list file."""
    path = Path(path)
    if path.is_file():
        return resolve_list_entries(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: data folder does not exist")

    def is_sample(d: Path) -> bool:
        return (d / marker).is_file() if marker else any(d.glob("*.png"))

    if is_sample(path):
        return [path]
    subdirs = sorted(d for d in path.iterdir() if d.is_dir())
    dirs = [d for d in subdirs if is_sample(d)]
    what = marker or "PNG images"
    if not dirs:
        raise FileNotFoundError(f"{path}: no sample directories (sub-folders with {what}) found")
    left_out = [d.name for d in subdirs if not is_sample(d)]
    if left_out:  # e.g. a scene whose camera file is missing: said, never silently dropped
        log.warning("%s: %d of %d sub-folders have no %s and are left out: %s%s", path, len(left_out), len(subdirs),
                    what, ", ".join(left_out[:5]), ", ..." if len(left_out) > 5 else "")
    return dirs


class DecodedViews:
    """Decoded views (rgb, alpha) by file path, least recently used dropped beyond ``max_mb`` (0: keep nothing).

    Each loader worker holds its own copy (the dataset is pickled into it), so the memory is ``max_mb`` per worker.
    Errors are never cached: a bad file raises again on every read.
    """

    def __init__(self, max_mb: float = 0.0) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self._views: collections.OrderedDict[str, tuple[Tensor, Tensor | None]] = collections.OrderedDict()

    def load(self, paths: list[Path]) -> tuple[Tensor, Tensor | None]:
        """load_png_views of ``paths`` (same errors), each view decoded at most once while it stays cached."""
        keys = [str(p) for p in paths]
        if self.max_bytes <= 0:
            return load_png_views([read_bytes(p) for p in paths], keys)
        views = {k: self._views[k] for k in keys if k in self._views}
        missing = [p for p, k in zip(paths, keys) if k not in views]
        if missing:
            rgb, alpha = load_png_views([read_bytes(p) for p in missing], [str(p) for p in missing])
            views.update({str(p): (rgb[i], None if alpha is None else alpha[i]) for i, p in enumerate(missing)})
        alphas = [views[k][1] for k in keys]
        if any(a is None for a in alphas) and not all(a is None for a in alphas):
            return load_png_views([read_bytes(p) for p in paths], keys)  # cached and new views mix alpha: its error
        for k in keys:
            if k in self._views:
                self._views.move_to_end(k)
            else:
                self._put(k, views[k])
        return torch.stack([views[k][0] for k in keys]), (None if alphas[0] is None else torch.stack(alphas))

    @staticmethod
    def _nbytes(value: tuple[Tensor, Tensor | None]) -> int:
        return sum(t.numel() * t.element_size() for t in value if t is not None)

    def _put(self, key: str, value: tuple[Tensor, Tensor | None]) -> None:
        size = self._nbytes(value)
        if size > self.max_bytes:
            return
        self._views[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._views.popitem(last=False)
            self.bytes -= self._nbytes(old)


class FaceLiftFolderSource(Source):
    """FaceLift layout: ``sample_x/opencv_cameras.json`` + ``sample_x/images/cam_XXX.png`` (RGBA, 8/16-bit)."""

    def __init__(self, name: str, kind: str, path: str | None = None, list_file: str | None = None,
                 cache_mb: float = 0.0, **kw: Any) -> None:
        super().__init__(name, kind, **kw)
        if (path is None) == (list_file is None):
            raise ValueError(f"source {name!r}: give exactly one of path / list_file")
        self.dirs = resolve_list_entries(list_file) if list_file else sample_dirs(path)
        self.decoded = DecodedViews(cache_mb)
        self._paths: dict[int, list[Path]] = {}

    def __len__(self) -> int:
        return len(self.dirs)

    def cameras(self, i: int) -> SceneCameras:
        d = self.dirs[i]
        try:
            cams = read_camera_file(d / CAMERA_FILE)
        except (ValueError, FileNotFoundError) as e:
            raise SampleError(str(e)) from None
        return SceneCameras(cams.scene_id, str(d), cams.c2w, cams.fxfycxcy, cams.sizes)

    def image_paths(self, i: int) -> list[Path]:
        """Each camera frame's image; a ``file_path`` leading outside the scene folder is a SampleError. Kept per
        scene while decoded views are cached (``cache_mb``)."""
        if i in self._paths:
            return self._paths[i]
        paths = self._image_paths(i)
        if self.decoded.max_bytes > 0:
            self._paths[i] = paths
        return paths

    def _image_paths(self, i: int) -> list[Path]:
        d = self.dirs[i]
        cams = json.loads((d / CAMERA_FILE).read_text())["frames"]
        try:
            return [frame_image_path(d, fr.get("file_path"), v, str(d / CAMERA_FILE)) for v, fr in enumerate(cams)]
        except PathEscapeError as e:
            raise SampleError(str(e)) from None

    def pixels(self, i: int, views: list[int]) -> tuple[Tensor, Tensor | None, bool]:
        paths = self.image_paths(i)
        rgb, alpha = self.decoded.load([paths[v] for v in views])
        return rgb, alpha, False


class MVDiffusionFolderSource(Source):
    """FaceLift's mvdiffusion layout: ``sample_x/cam_000.png ...`` with no camera file; the PNGs are the rig's
    views in rig order (checked on FaceLift's sample: front, front-right, right, back, left, front-left — the
    [2, 1, 0, 5, 4, 3] permutation of its camera file is already applied to the file names), so cameras come from
    the rig at the images' size."""

    def __init__(self, name: str, kind: str, rig: Rig, path: str | None = None, list_file: str | None = None,
                 cache_mb: float = 0.0, **kw: Any) -> None:
        super().__init__(name, kind, **kw)
        if (path is None) == (list_file is None):
            raise ValueError(f"source {name!r}: give exactly one of path / list_file")
        self.rig = rig
        self.dirs = resolve_list_entries(list_file) if list_file else sample_dirs(path, marker=None)
        self.decoded = DecodedViews(cache_mb)

    def __len__(self) -> int:
        return len(self.dirs)

    def _files(self, i: int) -> list[Path]:
        files = sorted(self.dirs[i].glob("*.png"))
        if len(files) != self.rig.num_views:
            raise SampleError(f"{self.dirs[i]}: {len(files)} PNG views, but rig {self.rig.name} has "
                              f"{self.rig.num_views}")
        return files

    def cameras(self, i: int) -> SceneCameras:
        files = self._files(i)
        w, h, _, _ = png_header(read_bytes(files[0])[:64], str(files[0]))
        if w != h:
            raise SampleError(f"{files[0]}: rig views must be square, got {w}x{h}")
        c2w, k = self.rig.cameras(w)
        return SceneCameras(self.dirs[i].name, str(self.dirs[i]), c2w, k, [(h, w)] * len(files))

    def pixels(self, i: int, views: list[int]) -> tuple[Tensor, Tensor | None, bool]:
        files = self._files(i)
        rgb, alpha = self.decoded.load([files[v] for v in views])
        return rgb, alpha, False


# ---- webdataset shards ---------------------------------------------------------------------------------------------
def expand_urls(urls: str | list[str]) -> list[str]:
    """Local shard paths from paths, brace patterns, globs or directories (sorted within each pattern)."""

    out: list[str] = []
    for spec in [urls] if isinstance(urls, str) else list(urls):
        if "://" in spec or spec.startswith("pipe:"):
            raise ValueError(f"shard url {spec!r}: only local tar files are supported (random access by index)")
        for item in braceexpand(spec):
            if os.path.isdir(item):
                out.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
            elif any(c in item for c in "*?["):
                out.extend(sorted(glob.glob(item)))
            else:
                out.append(item)
    missing = [u for u in out if not os.path.isfile(u)]
    if missing or not out:
        raise FileNotFoundError(f"shards not found: {missing[:5] or urls}")
    return out


def split_member(name: str) -> tuple[str, str]:
    """webdataset's (key, extension): the key is the path up to the first dot of the file name."""
    d, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (os.path.join(d, key) if d else key), ext


def index_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {extension: (byte offset, size)})] of one tar shard, in file order. A member name that is absolute or
    holds ``..`` (a tar made to write outside its folder when unpacked) is a SampleError naming the shard and member."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile():
                    if m.name.startswith(("/", "\\")) or ".." in m.name.replace("\\", "/").split("/"):
                        raise SampleError(f"{path}: member {m.name!r} is an absolute path or holds '..': shard "
                                          "members must be relative names inside the shard")
                    key, ext = split_member(m.name)
                    samples.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as e:
        raise SampleError(f"{path}: cannot read tar shard ({e})") from None
    return list(samples.items())


class ShardSource(Source):
    """webdataset tar shards, random access through a member index built at construction."""

    def __init__(self, name: str, kind: str, urls: str | list[str], **kw: Any) -> None:
        super().__init__(name, kind, **kw)
        self.shards = expand_urls(urls)
        self.entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = [
            (s, key, members) for s, path in enumerate(self.shards) for key, members in index_shard(path)
        ]

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, i: int, ext: str) -> bytes:
        s, key, members = self.entries[i]
        if ext not in members:
            raise SampleError(f"{self.shards[s]} sample {key}: member '{key}.{ext}' is missing")
        off, size = members[ext]
        with open(self.shards[s], "rb") as f:
            f.seek(off)
            return f.read(size)

    def where(self, i: int) -> str:
        s, key, _ = self.entries[i]
        return f"{self.shards[s]} sample {key}"

    def cameras(self, i: int) -> SceneCameras:
        cams = parse_camera_json(self._read(i, "cameras.json"), self.where(i))
        self.check_views(i, len(cams.sizes))
        return cams

    def view_members(self, i: int) -> dict[int, str]:
        """{view number: member extension} of the sample's numbered PNGs (``VVV.png``); two members of one number
        (``1.png`` and ``001.png``) are a SampleError."""
        out: dict[int, str] = {}
        for e in self.entries[i][2]:
            if e.endswith(".png") and e[:-4].isdigit():
                v = int(e[:-4])
                if v in out:
                    raise SampleError(f"{self.where(i)}: members {out[v]!r} and {e!r} are both view {v}")
                out[v] = e
        return dict(sorted(out.items()))

    def view_exts(self, i: int) -> list[str]:
        """The numbered PNG members in view order (after :meth:`check_views`: view v is the v-th)."""
        return list(self.view_members(i).values())

    def check_views(self, i: int, num_frames: int) -> None:
        """The sample's PNG members must be exactly views 0 .. num_frames - 1, one per camera frame: else a
        SampleError naming the sample and the missing / extra members (never images paired with other cameras)."""
        have = self.view_members(i)
        if set(have) == set(range(num_frames)):
            return
        key = self.entries[i][1]
        missing = [f"{key}.{v:03d}.png" for v in range(num_frames) if v not in have]
        extra = [f"{key}.{e}" for v, e in have.items() if v >= num_frames]
        raise SampleError(f"{self.where(i)}: {num_frames} camera frames but {len(have)} PNG members"
                          + (f"; missing {missing}" if missing else "") + (f"; no camera frame for {extra}" if extra
                                                                            else ""))

    def pixels(self, i: int, views: list[int]) -> tuple[Tensor, Tensor | None, bool]:
        """The PNGs of ``views``, looked up by their number (member ``VVV.png`` is camera frame VVV)."""
        members = self.view_members(i)
        missing = [v for v in views if v not in members]
        if missing:
            key = self.entries[i][1]
            raise SampleError(f"{self.where(i)}: views {missing} requested, members "
                              f"{[f'{key}.{v:03d}.png' for v in missing]} are missing")
        blobs = [self._read(i, members[v]) for v in views]
        rgb, alpha = load_png_views(blobs, [f"{self.where(i)} member {members[v]}" for v in views])
        return rgb, alpha, False


def parse_camera_json(data: bytes, where: str) -> SceneCameras:
    """Cameras from ``opencv_cameras.json`` bytes (w2c per frame) — the same checks as geometry.camera_files."""
    try:
        frames = json.loads(data)["frames"]
        w2c = torch.tensor([fr["w2c"] for fr in frames], dtype=torch.float64)
        k = torch.tensor([[fr["fx"], fr["fy"], fr["cx"], fr["cy"]] for fr in frames], dtype=torch.float64)
        sizes = [(int(fr["h"]), int(fr["w"])) for fr in frames]
        scene_id = str(json.loads(data).get("id", where))
    except (ValueError, KeyError, TypeError) as e:
        raise SampleError(f"{where}: bad camera json ({type(e).__name__}: {e})") from None
    for v, fr in enumerate(frames):  # refused on read as make_shards --to-folders refuses to write them
        if fr.get("file_path") is not None:
            try:
                check_relative(fr["file_path"], f"{where} member cameras.json frame {v}: file_path", "the scene folder")
            except PathEscapeError as e:
                raise SampleError(str(e)) from None
    validate_cameras(w2c, k, where)  # w2c is rigid iff c2w is: the same checks, messages naming the view
    return SceneCameras(scene_id, where, invert_rigid(w2c).float(), k.float(), sizes)


# ---- factory -------------------------------------------------------------------------------------------------------
def _number(cfg: dict[str, Any], key: str, default: float, name: str, kind: type = float,
            minimum: float | None = None) -> Any:
    """``cfg[key]`` as ``kind``, finite and >= ``minimum``; a ValueError naming the source and the key otherwise."""
    value = cfg.get(key, default)
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = kind(value)
        if not math.isfinite(out) or (minimum is not None and out < minimum):
            raise ValueError
    except (TypeError, ValueError):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"source {name!r}: {key} must be a finite {kind.__name__}{bound}, got {value!r}") from None
    return out


def build_source(cfg: dict[str, Any], rig: Rig, num_views: int, size: int) -> Source:
    """A Source from one config dict (module docstring). ``rig``/``num_views``/``size``: the stage's defaults."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a source must be a mapping ({{name: ..., kind: ..., format: ...}}), got {cfg!r}")  # noqa: TRY004
    cfg = dict(cfg)
    name = str(cfg.get("name") or cfg.get("format", "source"))
    unknown = set(cfg) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"source {name!r}: unknown keys {sorted(unknown)}; known: {sorted(SOURCE_KEYS)}")
    fmt = cfg.get("format", "procedural")
    if fmt not in FORMATS:
        raise ValueError(f"source {name!r}: format must be one of {FORMATS}, got {fmt!r}")
    if "truth" in cfg and fmt != "procedural":
        raise ValueError(f"source {name!r}: truth is for procedural sources (a capture's clean truth is known only "
                         f"for a generated scene), not {fmt!r}")
    if "cache_mb" in cfg and fmt not in ("facelift", "facelift_mvdiffusion"):
        raise ValueError(f"source {name!r}: cache_mb is for the folder formats (facelift, facelift_mvdiffusion), "
                         f"not {fmt!r}")
    kind = cfg.get("kind", "synthetic")
    base = {"weight": _number(cfg, "weight", 1.0, name, minimum=0.0), "up_axis": cfg.get("up_axis")}
    if not isinstance(cfg.get("realistic", False), bool):
        raise ValueError(f"source {name!r}: realistic must be true or false, got {cfg['realistic']!r}")  # noqa: TRY004
    if "augment" in cfg:

        base["augment"] = check_ops(cfg["augment"], f"source {name!r} augment")
    src_rig = load_rig(cfg["rig"]) if cfg.get("rig") else rig
    if fmt == "procedural":
        return ProceduralSource(name, kind, src_rig, _number(cfg, "num_scenes", 1000, name, int, 1),
                                _number(cfg, "num_views", num_views, name, int, 1), size,
                                bool(cfg.get("realistic", False)), _number(cfg, "seed", 0, name, int),
                                _number(cfg, "camera_jitter_deg", 0.0, name, minimum=0.0),
                                _number(cfg, "index_offset", 0, name, int, 0), str(cfg.get("device", "auto")),
                                str(cfg.get("truth", "capture")), background=cfg.get("background", "white"), **base)
    background = cfg.get("background", "white")
    base["realistic"] = cfg.get("realistic", False)  # folders / shards of synthesized captures: labels only
    cache_mb = _number(cfg, "cache_mb", 0.0, name, minimum=0.0)
    if fmt == "facelift":
        return FaceLiftFolderSource(name, kind, cfg.get("path"), cfg.get("list_file"), cache_mb,
                                    background=background, **base)
    if fmt == "facelift_mvdiffusion":
        return MVDiffusionFolderSource(name, kind, src_rig, cfg.get("path"), cfg.get("list_file"), cache_mb,
                                       background=background, **base)
    if not cfg.get("urls"):
        raise ValueError(f"source {name!r}: format shards needs 'urls'")
    return ShardSource(name, kind, cfg["urls"], background=background, **base)


__all__ = [
    "SAMPLE_KINDS",
    "DecodedViews",
    "FaceLiftFolderSource",
    "MVDiffusionFolderSource",
    "ProceduralSource",
    "SceneCameras",
    "ShardSource",
    "Source",
    "build_source",
    "expand_urls",
    "index_shard",
    "parse_camera_json",
    "planner_workers",
    "resolve_entry",
    "resolve_list_entries",
    "sample_dirs",
]
