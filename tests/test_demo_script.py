"""tools/demo.sh parses, and every ``python -m tools.X`` command line in README.md and demo.sh names a tool whose
``--help`` works and lists each ``--flag`` used (one process: the help texts are built in-process, a few seconds)."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = ROOT / "tools" / "demo.sh"
SUBCOMMANDS = {"tools.rig", "tools.convert", "lightning_modules.diffusion.pretrained"}
COMMAND = re.compile(r"-m\s+(tools\.\w+|lightning_modules\.pretrained)\b([^`\n]*)")


def command_lines(text: str) -> list[tuple[str, str]]:
    """(module, rest of the command line) for every ``-m tools.X ...`` in ``text`` (backslash continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", text)
    return [(m.group(1), m.group(2)) for m in COMMAND.finditer(text)]


def subcommand(module: str, rest: str) -> str | None:
    if module not in SUBCOMMANDS:
        return None
    words = [w for w in rest.split() if not w.startswith(("-", "[", '"', "$"))]
    return words[0] if words else None


def help_text(module: str, sub: str | None) -> str:
    argv = [module] + ([sub] if sub else []) + ["--help"]
    out = io.StringIO()
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": the module is imported already
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved
    assert exit_info.value.code in (0, None), f"{' '.join(argv)} exited {exit_info.value.code}"
    return out.getvalue()


def flag_known(flag: str, help_out: str) -> bool:
    """A flag is known when --help lists it; LightningCLI's nested ``--data.init_args.X`` / ``--model.init_args.X``
    are listed as ``--data`` / ``--model``."""
    if re.search(re.escape(flag) + r"(?![\w-])", help_out):
        return True
    head = flag.split(".init_args.")[0]
    return head != flag and re.search(re.escape(head) + r"(?![\w.-])", help_out) is not None


def test_demo_script_parses():
    bash = shutil.which("bash")
    assert bash, "bash not found"
    subprocess.run([bash, "-n", str(DEMO)], check=True)
    text = DEMO.read_text()
    assert "set -euo pipefail" in text


def test_documented_command_lines_match_the_tools():
    found = command_lines(README.read_text()) + command_lines(DEMO.read_text())
    modules = {m for m, _ in found}
    assert {"tools.fit", "tools.evaluate", "tools.infer", "tools.synthesize", "tools.make_shards",
            "tools.inspect_data", "tools.rig", "tools.convert"} <= modules
    helps: dict[tuple[str, str | None], str] = {}
    problems = []
    for module, rest in found:
        sub = subcommand(module, rest)
        key = (module, sub)
        if key not in helps:
            helps[key] = help_text(module, sub)
        for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w.-]*", rest):
            if not flag_known(flag, helps[key]):
                problems.append(f"{module} {sub or ''}: {flag} (in: {rest.strip()[:80]})")
    assert not problems, "flags not in --help:\n" + "\n".join(problems)
