"""The device scripts (bench/*.sh) run only on a lent GPU, where a typo costs a call: here each must parse, and every
config or test file it names (directly, or as $S/NAME.yaml with its S=... folder) must exist in the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.sh"))


def named_files(text: str) -> set[str]:
    names = set(re.findall(r"(?:configs|tests)/[A-Za-z0-9_./-]+\.(?:yaml|py)", text))
    folder = re.search(r"\bS=(\S+)", text)
    for name in re.findall(r"\$S/([A-Za-z0-9_.-]+\.yaml)", text):
        assert folder, f"$S/{name} without an S=... folder"
        names.add(f"{folder.group(1)}/{name}")
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_device_script_parses_and_names_only_files_that_exist(script):
    parsed = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    missing = sorted(n for n in named_files(script.read_text()) if not (ROOT / n).is_file())
    assert not missing, f"{script.name} names files the checkout lacks: {missing}"


def test_the_check_finds_a_missing_file_and_a_folder_variable():
    text = "S=configs/studies/phases\npython -m tools.fit -c $S/gslrm_phase2.yaml -c $S/no_such.yaml -c configs/x.yaml"
    names = named_files(text)
    assert names == {"configs/studies/phases/gslrm_phase2.yaml", "configs/studies/phases/no_such.yaml",
                     "configs/x.yaml"}
    assert sorted(n for n in names if not (ROOT / n).is_file()) == ["configs/studies/phases/no_such.yaml",
                                                                    "configs/x.yaml"]
