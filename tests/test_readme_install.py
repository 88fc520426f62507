"""The README's install lines are right on a plain CPU machine (PyTorch's CPU wheel index named, torch before the
package) and on a GPU machine (a CUDA index), and name the mvlift command (issue 27)."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _install_lines() -> list[str]:
    return [line.split("#")[0].strip() if not line.lstrip().startswith("#") else line.strip().lstrip("# ").strip()
            for line in README.splitlines() if "pip install" in line]


def test_the_cpu_install_names_pytorchs_cpu_index_before_the_package():
    lines = _install_lines()
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in lines, "README: no CPU install line"
    package = [i for i, line in enumerate(lines) if re.fullmatch(r"pip install (-e )?'?\.(\[[a-z,]+\])?'?", line)]
    assert package and lines.index(cpu) < package[0], "torch from the CPU index must come before the package"


def test_the_gpu_install_names_a_cuda_index():
    assert re.search(r"pip install torch --index-url https://download\.pytorch\.org/whl/cu\d+", README)
    assert "mvlift --help" in README
