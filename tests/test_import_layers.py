"""The floors of the code and their arrows (docs/ARCHITECTURE.md): tools -> callbacks -> lightning_modules ->
datamodules -> geometry. A module imports only from its own floor or lower ones, and no two modules import each
other, directly or round a loop; imports inside functions count as well (a deferred import is still an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["geometry", "datamodules", "lightning_modules", "callbacks", "tools"]  # lowest first


def modules() -> dict[str, Path]:
    out = {}
    for floor in FLOORS:
        for path in (ROOT / floor).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts as a.b.c when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in known)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(p, known) - {m} for m, p in known.items()}


def test_no_module_imports_a_higher_floor():
    bad = []
    for mod, deps in graph().items():
        floor = FLOORS.index(mod.split(".")[0])
        bad += [f"{mod} -> {d}" for d in deps if FLOORS.index(d.split(".")[0]) > floor]
    assert not bad, "imports that run up the floors:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    for pkg in list(g):  # a package's __init__ that imports its submodules is not a cycle with them
        g[pkg] = {d for d in g[pkg] if not d.startswith(pkg + ".") or not (ROOT / pkg.replace(".", "/")).is_dir()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_stage_is_a_subpackage():
    lm = ROOT / "lightning_modules"
    for stage in ("diffusion", "reconstruction", "facelift"):
        assert (lm / stage / "__init__.py").is_file(), stage
    flat = {p.stem for p in lm.glob("*.py")}
    assert not flat & {"diffusion", "reconstruction", "gslrm", "losses", "mv_pipeline", "pretrained",
                       "facelift_convert", "diffusion_sampling", "diffusion_conditioning", "view_conditioning",
                       "mv_attention"}, flat


def test_every_class_path_in_the_shipped_configs_resolves():
    """Each ``class_path`` of configs/**.yaml names a class that imports (the stages' public paths,
    ``lightning_modules.diffusion.DiffusionModule`` / ``lightning_modules.reconstruction.ReconstructionModule``)."""
    import importlib
    import re

    paths = {m for cfg in (ROOT / "configs").rglob("*.yaml")
             for m in re.findall(r"class_path:\s*([\w.]+)", cfg.read_text())}
    assert "lightning_modules.diffusion.DiffusionModule" in paths
    for path in sorted(paths):
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), path
