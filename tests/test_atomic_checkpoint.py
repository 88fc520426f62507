"""A run killed while saving leaves the previous checkpoint loadable, and a partial file is never taken as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from callbacks.atomic import AtomicCheckpointIO, is_complete_checkpoint
from callbacks.run_layout import RunPaths
from geometry.files import atomic_directory, is_temporary, remove_stale_temporaries

REPO = Path(__file__).resolve().parent.parent

SLOW_SAVER = textwrap.dedent("""
    import io, sys, time
    from pathlib import Path
    import torch
    from callbacks.atomic import AtomicCheckpointIO

    path, marker = Path(sys.argv[1]), Path(sys.argv[2])

    class SlowIO(AtomicCheckpointIO):
        # the real serializer, but the bytes reach the file slowly: a wide window to be killed in
        def write_checkpoint(self, checkpoint, fileobj):
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            data = buf.getvalue()
            step = len(data) // 50
            for i in range(0, len(data), step):
                fileobj.write(data[i:i + step])
                fileobj.flush()
                if i == step:
                    marker.write_text("half-written")
                time.sleep(0.1)

    SlowIO().save_checkpoint({"global_step": 2, "state_dict": {"w": torch.full((500_000,), 2.0)}}, path)
""")


def _old_checkpoint(path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "state_dict": {"w": torch.full((500_000,), 1.0)}}, path)


def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    paths = RunPaths(tmp_path, "exp", "run").create()
    target = paths.last_checkpoint
    _old_checkpoint(target)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVER, str(target), str(marker)], cwd=REPO, env=env)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert child.poll() is None, "the saver exited before the kill"
            assert time.time() < deadline, "the saver never started writing"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    partial = [p for p in paths.checkpoint_dir.iterdir() if is_temporary(p)]
    assert len(partial) == 1 and partial[0].stat().st_size > 0, "the killed write left its partial temp file"
    assert not is_complete_checkpoint(partial[0])
    ckpt = AtomicCheckpointIO().load_checkpoint(target)
    assert ckpt["global_step"] == 1 and float(ckpt["state_dict"]["w"][0]) == 1.0
    assert paths.checkpoints() == [target], "only the complete checkpoint counts"
    assert remove_stale_temporaries(paths.checkpoint_dir) == partial
    assert sorted(p.name for p in paths.checkpoint_dir.iterdir()) == ["last.ckpt"]


def test_a_truncated_checkpoint_is_recognised_without_loading_it(tmp_path):
    good = tmp_path / "good.ckpt"
    _old_checkpoint(good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # what a non-atomic writer leaves when killed
    assert is_complete_checkpoint(good)
    assert not is_complete_checkpoint(cut)
    with pytest.raises((RuntimeError, EOFError, OSError)):
        torch.load(cut, weights_only=True)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    _old_checkpoint(target)

    class Failing(AtomicCheckpointIO):
        def write_checkpoint(self, checkpoint, fileobj):
            fileobj.write(b"PK partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Failing().save_checkpoint({"global_step": 2}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_directory_replaces_a_folder_only_when_complete(tmp_path):
    target = tmp_path / "export" / "step_5"
    with atomic_directory(target) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a.txt").write_text("new, unfinished")
        raise RuntimeError("export failed")
    assert (target / "a.txt").read_text() == "old"
    with atomic_directory(target) as d:
        (d / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["step_5"]
