"""The shipped rigs are package data: a non-editable install finds them (it found none: the rigs lived outside any
package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from geometry.rig import RIGS_DIR, available_rigs

ROOT = Path(__file__).resolve().parents[1]


def test_rigs_live_in_the_geometry_package_and_configs_rigs_is_the_same_folder():
    assert RIGS_DIR.parent == (ROOT / "geometry").resolve()
    assert (ROOT / "configs" / "rigs").resolve() == RIGS_DIR.resolve()
    assert {"facelift_6view", "mouse_oblique20_6view"} <= set(available_rigs())


@pytest.mark.slow
def test_the_wheel_carries_every_rig(tmp_path):
    build = ROOT / "build"
    existed = build.exists()
    try:
        _build_install_and_run(tmp_path)
    finally:
        if not existed:  # setuptools builds in the tree: leave the checkout as found
            shutil.rmtree(build, ignore_errors=True)


def _build_install_and_run(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in the venv")
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], check=True, capture_output=True, text=True, timeout=240)
    except subprocess.CalledProcessError as e:  # no network is needed: setuptools is the venv's
        pytest.fail(f"pip wheel failed:\n{e.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("mvlift-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rig in available_rigs():
        assert f"geometry/rigs/{rig}.yaml" in names, f"{rig} missing from {wheel.name}"
    # installed (not editable) and run from outside the checkout, the shipped rigs are found
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import geometry, tools.rig as r; print(geometry.__file__); r.main(['show', 'mouse_oblique20_6view'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert out.splitlines()[0].startswith(str(site)) and "mouse_oblique20_6view" in out
