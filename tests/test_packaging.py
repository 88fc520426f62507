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


# --- the mvlift command and the shipped configs (issue 27) ---------------------------------------------------------

def test_mvlift_dispatches_to_the_tools_and_finds_shipped_configs_from_any_folder(tmp_path, monkeypatch, capsys):
    from tools.cli import TOOLS, main

    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("fit", "evaluate", "infer", "synthesize", "view", "rig", "convert", "import-captures"):
        assert name in TOOLS
    assert main(["rig", "show", "mouse_oblique20_6view"]) == 0
    assert "mouse_oblique20_6view" in capsys.readouterr().out
    assert main(["no-such-tool"]) == 2
    for config in ("recipes/gslrm_procedural_128.yaml", "configs/recipes/gslrm_procedural_128.yaml"):
        with pytest.raises(SystemExit) as e:  # LightningCLI's --print_config exits 0
            main(["fit", "-c", config, "--print_config"])
        assert e.value.code in (0, None)
        out = capsys.readouterr().out
        assert "ReconstructionModule" in out and "gslrm_procedural_128" in out
    # data configs too (tools.evaluate / inspect_data / synthesize read them with load_data_config)
    from datamodules.data_config import load_data_config
    assert load_data_config("data/demo.yaml")["sources"]


@pytest.mark.slow
def test_the_wheel_installs_the_mvlift_command_and_the_configs(tmp_path):
    build = ROOT / "build"
    existed = build.exists()
    try:
        _build_install_and_run_mvlift(tmp_path)
    finally:
        if not existed:
            shutil.rmtree(build, ignore_errors=True)


def _build_install_and_run_mvlift(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in the venv")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, text=True, timeout=240)
    (wheel,) = tmp_path.glob("mvlift-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "mvlift = tools.cli:main" in z.read(entry_points).decode()
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([str(site / "bin" / "mvlift"), "fit", "-c", "recipes/gslrm_procedural_128.yaml",
                          "--print_config"], check=False, cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ReconstructionModule" in out.stdout and "gslrm_procedural_128" in out.stdout
    where = subprocess.run([sys.executable, "-c", "import datamodules.data_config as d; print(d.CONFIGS_DIR)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert where == str(site / "configs")
