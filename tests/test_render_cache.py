"""The on-disk pre-render cache (datamodules.render_cache): what one process renders, the next reads; processes
starting together share the chunks; a bad file is rendered again; other settings never read another's pixels."""

from __future__ import annotations

import fcntl
import threading

import pytest
import torch

from datamodules import render_cache, sources
from datamodules.render_cache import RenderCache, chunk_bounds
from datamodules.sources import ProceduralSource
from geometry.rig import load_rig

RIG = load_rig("mouse_oblique20_6view")


def _source(num: int, offset: int = 0, seed: int = 0, realistic: bool = False) -> ProceduralSource:
    return ProceduralSource("s", "synthetic", RIG, num, 2, 16, realistic=realistic, seed=seed, index_offset=offset,
                            device="cpu")


def _render(src: ProceduralSource) -> dict[str, torch.Tensor]:
    return src._render_all(torch.device("cpu"), chunk=4)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(render_cache, "CHUNK", 8)
    monkeypatch.setenv(render_cache.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_chunk_bounds_cover_the_scenes_with_aligned_chunks():
    assert chunk_bounds(0, 8, chunk=8) == [(0, 8)]
    assert chunk_bounds(3, 10, chunk=8) == [(0, 8), (8, 16)]
    assert chunk_bounds(9, 1, chunk=8) == [(8, 16)]


def test_cached_scenes_equal_rendered_ones_and_later_sources_read_them(cache_dir, monkeypatch, caplog):
    monkeypatch.delenv(render_cache.ENV)
    plain = _render(_source(10, offset=3))  # no cache: rendered as before
    monkeypatch.setenv(render_cache.ENV, str(cache_dir))
    first = _render(_source(10, offset=3))
    assert len(list(cache_dir.glob("*.safetensors"))) == 2  # scenes 3..12: chunks 0..7 and 8..15
    for k in plain:
        torch.testing.assert_close(first[k], plain[k], atol=1, rtol=0)  # rgba: 8-bit, the same scenes

    def no_render(*a, **kw):
        raise AssertionError("rendered a scene the cache holds")

    monkeypatch.setattr(sources, "make_scenes", no_render)
    with caplog.at_level("INFO", logger=sources.log.name):
        again = _render(_source(6, offset=6))  # scenes 6..11: from both chunks, read back
    assert "(clean renders): 6 scenes pre-rendered" in caplog.text  # a realistic source's clean twin is told apart
    assert "{'read': 2, 'rendered': 0, 'waited': 0}" in caplog.text
    for k in plain:
        assert torch.equal(again[k], first[k][3:9])
    with pytest.raises(AssertionError, match="rendered a scene"):
        _render(_source(5, offset=9, seed=1))  # another seed: its own chunks, never the seed-0 pixels


def test_a_bad_chunk_file_is_rendered_again_and_replaced(cache_dir, caplog):
    first = _render(_source(8))
    (path,) = cache_dir.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = _render(_source(8))
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert torch.equal(again["rgba"], first["rgba"])
    assert torch.equal(_render(_source(8))["rgba"], first["rgba"])  # the replaced file reads back


def test_a_chunk_another_process_is_rendering_is_waited_for_and_read(cache_dir, monkeypatch, caplog):
    """Chunk 0 is locked by "another process" (this test) that writes it a second later: the source renders chunk 1
    itself, then reads chunk 0 as written, without rendering it."""
    src = _source(12)
    cache = RenderCache.from_env(
        {"rig": RIG.fingerprint, "views": 2, "size": 16, "realistic": False, "seed": 0, "jitter": 0.0})
    lock = open(cache.path(0).with_suffix(".lock"), "a")  # noqa: SIM115  (held across the thread below)
    fcntl.flock(lock, fcntl.LOCK_EX)
    marked = render_cache.host_buffers(8, 2, 16)
    marked["rgba"].fill_(7)
    marked["c2w"].zero_()
    marked["fxfycxcy"].zero_()

    def other_process_writes_then_unlocks():
        cache.save(0, marked)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()

    rendered = []
    real = sources.make_scenes
    monkeypatch.setattr(sources, "make_scenes", lambda idx, *a, **kw: rendered.extend(idx) or real(idx, *a, **kw))
    threading.Timer(1.0, other_process_writes_then_unlocks).start()
    with caplog.at_level("INFO", logger=sources.log.name):
        out = _render(src)
    assert "{'read': 0, 'rendered': 1, 'waited': 1}" in caplog.text  # each chunk counted once, by its outcome
    assert sorted(rendered) == list(range(8, 16))  # chunk 1 only (its last 4 scenes beyond the source's 12: kept)
    assert (out["rgba"][:8] == 7).all()  # chunk 0: the other process's pixels
    assert not (out["rgba"][8:] == 7).all()


def test_a_chunk_whose_other_renderer_gave_up_is_rendered_here_and_counted_so(cache_dir, caplog):
    """The other process unlocks chunk 0 without writing it (it died): this one renders it after waiting."""
    cache = RenderCache.from_env(
        {"rig": RIG.fingerprint, "views": 2, "size": 16, "realistic": False, "seed": 0, "jitter": 0.0})
    held = open(cache.path(0).with_suffix(".lock"), "a")  # noqa: SIM115  (released by the timer below)
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(0.5, held.close).start()
    with caplog.at_level("INFO", logger=sources.log.name):
        out = _render(_source(12))
    assert "{'read': 0, 'rendered': 2, 'waited': 0}" in caplog.text
    assert len(list(cache_dir.glob("*.safetensors"))) == 2 and out["rgba"].float().std() > 1


@pytest.mark.gpu
def test_gpu_prerender_is_read_back_from_the_cache(tmp_path, monkeypatch):
    """ProceduralSource(device="cuda") as trainings build it: the second source reads every chunk the first wrote."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (gpu marker); run on the device machine")
    monkeypatch.setenv(render_cache.ENV, str(tmp_path))
    sources._PRERENDERED.clear()
    first = ProceduralSource("s", "synthetic", RIG, 300, 6, 64, realistic=True, seed=3, device="cuda")._rendered
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # chunks of 128 scenes
    sources._PRERENDERED.clear()
    monkeypatch.setattr(sources, "make_scenes", lambda *a, **kw: pytest.fail("rendered a cached scene"))
    again = ProceduralSource("s", "synthetic", RIG, 300, 6, 64, realistic=True, seed=3, device="cuda")._rendered
    for k in first:
        assert torch.equal(again[k], first[k])
    assert first["rgba"].float().std() > 10  # real pictures, not an empty buffer


def test_a_failed_write_is_warned_about_and_the_render_goes_on(cache_dir, monkeypatch, caplog):
    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render_cache, "save_file", disk_full)
    out = _render(_source(8))
    assert "cannot write the pre-rendered chunk" in caplog.text and "No space left" in caplog.text
    assert not list(cache_dir.glob("*.safetensors*"))  # neither the chunk nor its partial temporary file
    monkeypatch.delenv(render_cache.ENV)
    assert torch.equal(out["rgba"], _render(_source(8))["rgba"])
