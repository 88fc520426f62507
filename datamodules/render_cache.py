"""An on-disk cache of GPU pre-rendered procedural scenes, shared by the processes of one machine.

Every process that pre-renders a procedural source on a GPU (``ProceduralSource(device="cuda")``: each training, each
evaluation, each synthesis) renders all its scenes before its first batch: 1,000 realistic scenes at 64 px took
12.4 s on an H100 alone and 21.4 s beside four busy processes (docs/benchmarks.md). Trainings that run side by side,
or one after the other, render the same scenes again. With
``MVLIFT_PRERENDER_CACHE=DIR`` set, scenes are rendered in chunks of :data:`CHUNK` consecutive scene numbers, and each
chunk is written to ``DIR`` once and read by every later process:

- a chunk's file is named by a hash of everything its pixels depend on: the rig's fingerprint, views, size, realistic,
  seed, camera jitter, the chunk's first scene, and the rendering code (the bytes of ``datamodules/procedural.py``,
  the rasterizers of ``geometry/render/``, the rig and camera code, and gsplat's version), so a changed renderer never
  reads old pixels;
- processes that start together share the work: each renders the chunks no other process is rendering (a
  non-blocking ``flock`` on the chunk's lock file) and then reads the others' chunks, waiting for them if needed;
- files are written atomically (a temporary file, then ``os.replace``) as safetensors (no pickle); a file that cannot be
  read, or holds other shapes, is rendered again and replaced, with a warning; a write that fails (a full disk) is
  warned about and the process goes on with what it rendered.

The cache holds 8-bit RGBA and cameras, as the source keeps them in memory: num_scenes x views x 4 x size^2 bytes
(390 MB for 4,000 scenes of 6 views at 64 px). Nothing removes old files: delete the folder to reclaim it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

log = logging.getLogger("mvlift.data")
ENV = "MVLIFT_PRERENDER_CACHE"
CHUNK = 128  # scenes a chunk: chunk k holds scenes k*CHUNK .. (k+1)*CHUNK - 1 (absolute scene numbers)
_CODE = ("datamodules/procedural.py", "geometry/render/gaussians.py", "geometry/render/gsplat_backend.py",
         "geometry/render/rasterizer.py", "geometry/render/torch_rasterizer.py", "geometry/rig.py",
         "geometry/cameras.py")


def code_version() -> str:
    """A hash of the rendering code (the files in ``_CODE`` and gsplat's version)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for name in _CODE:
        h.update((root / name).read_bytes())
    try:
        from importlib.metadata import version

        h.update(version("gsplat").encode())
    except Exception:  # noqa: BLE001  (gsplat absent: CPU renders only)
        h.update(b"no gsplat")
    return h.hexdigest()[:16]


def chunk_bounds(first: int, count: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """The aligned chunks [(start, stop)] of absolute scene numbers that cover scenes ``first`` .. ``first+count-1``.

    Example:
        >>> chunk_bounds(100, 100, chunk=64)
        [(64, 128), (128, 192), (192, 256)]
    """
    chunk = chunk or CHUNK
    lo, hi = first // chunk, (first + count - 1) // chunk
    return [(k * chunk, (k + 1) * chunk) for k in range(lo, hi + 1)]


class RenderCache:
    """Chunks of one source's settings in ``folder`` (module docstring). ``settings``: JSON-able values that, with the
    chunk's start, decide its pixels; its ``views`` and ``size`` give a chunk's shapes (:func:`buffer_shapes`)."""

    def __init__(self, folder: str | Path, settings: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = {**settings, "code": code_version(), "chunk": CHUNK}
        self.shapes = buffer_shapes(CHUNK, settings["views"], settings["size"])
        self.counts = {"read": 0, "rendered": 0, "waited": 0}

    @classmethod
    def from_env(cls, settings: dict) -> RenderCache | None:
        folder = os.environ.get(ENV)
        return cls(folder, settings) if folder else None

    def path(self, start: int) -> Path:
        key = json.dumps({**self.settings, "start": start}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def load(self, start: int) -> dict[str, Tensor] | None:
        """Chunk ``start``'s tensors, or None when it is not written yet or cannot be used (warned)."""
        path = self.path(start)
        if not path.exists():
            return None
        try:
            got = load_file(str(path))
            for k, shape in self.shapes.items():
                if tuple(got[k].shape) != shape:
                    raise ValueError(f"{k} has shape {tuple(got[k].shape)}, expected {shape}")
        except Exception as e:  # noqa: BLE001  (a truncated or foreign file: render it again)
            log.warning("%s: pre-rendered chunk unreadable (%s); rendering it again", path, e)
            return None
        return got

    def save(self, start: int, chunk: dict[str, Tensor]) -> None:
        """Write chunk ``start`` atomically; a failed write (a full disk) is warned about and the chunk stays in
        memory only: the process that rendered it goes on."""
        path = self.path(start)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            save_file({k: chunk[k].contiguous() for k in self.shapes}, str(tmp),
                      metadata={"settings": json.dumps({**self.settings, "start": start}, sort_keys=True)})
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("%s: cannot write the pre-rendered chunk (%s); going on without it", path, e)

    @contextlib.contextmanager
    def _lock(self, start: int, wait: bool) -> Iterator[bool]:
        with open(self.path(start).with_suffix(".lock"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def chunks(self, starts: list[int], render: Callable[[int], dict[str, Tensor]]) -> Iterator[tuple[int, dict]]:
        """(start, tensors) of every chunk in ``starts``: read when written, else rendered by ``render(start)`` and
        written; chunks that another process is rendering come last, once it has written them. ``counts`` tells
        each chunk's one outcome: ``read`` (written before), ``rendered`` (here) or ``waited`` (written by another
        process while this one waited for it)."""
        later = []
        for start in starts:
            got = self.load(start)
            if got is None:
                with self._lock(start, wait=False) as mine:
                    if not mine:
                        later.append(start)
                        continue
                    got = self._get_or_render(start, render, found="read")
            else:
                self.counts["read"] += 1
            yield start, got
        for start in later:
            with self._lock(start, wait=True):
                yield start, self._get_or_render(start, render, found="waited")

    def _get_or_render(self, start: int, render: Callable[[int], dict[str, Tensor]], found: str) -> dict[str, Tensor]:
        got = self.load(start)  # (written by another process since we looked: counted as ``found``)
        if got is not None:
            self.counts[found] += 1
            return got
        got = render(start)
        self.save(start, got)
        self.counts["rendered"] += 1
        return got


def buffer_shapes(num: int, views: int, size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of ``num`` pre-rendered scenes as ``ProceduralSource`` keeps them: 8-bit RGBA and the cameras."""
    return {"rgba": (num, views, 4, size, size), "c2w": (num, views, 4, 4), "fxfycxcy": (num, views, 4)}


def host_buffers(num: int, views: int, size: int) -> dict[str, Tensor]:
    """Host tensors for ``num`` scenes (:func:`buffer_shapes`; pixels as uint8, cameras as float32)."""
    return {k: torch.empty(shape, dtype=torch.uint8 if k == "rgba" else torch.float32)
            for k, shape in buffer_shapes(num, views, size).items()}
