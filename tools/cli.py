"""The ``mvlift`` command: ``mvlift TOOL [ARGS...]`` runs ``python -m tools.TOOL ARGS...`` (same arguments, output and
exit codes), e.g. ``mvlift fit -c recipes/gslrm_procedural_128.yaml`` or ``mvlift infer photo.png --diffusion ...``.

Installed as a console script (setup.cfg ``[options.entry_points]``); a tool's name takes ``-`` or ``_``
(``mvlift import-captures`` = ``mvlift import_captures``). ``mvlift --help`` lists the tools, ``mvlift TOOL --help``
prints the tool's own usage. Config files (``-c``) that are not there relative to the working directory are read from
the configs shipped with the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module under tools/, its entry function, one line for the listing)
TOOLS: dict[str, tuple[str, str, str]] = {
    "fit": ("fit", "cli_main", "train a stage (LightningCLI: -c CONFIG, overrides, --resume auto)"),
    "evaluate": ("evaluate", "main", "checkpoints x data configs x rigs in one table, with image grids"),
    "infer": ("infer", "main", "photo(s) -> views, cameras, Gaussians, turntable"),
    "synthesize": ("synthesize", "main", "write procedural scenes, or a diffusion model's views of inputs"),
    "view": ("view", "main", "a local web page with the splats, cameras and views"),
    "plot": ("plot", "main", "training curves of runs"),
    "rig": ("rig", "main", "show, compare and check camera rigs"),
    "convert": ("convert", "main", "FaceLift checkpoints -> export folders"),
    "import-captures": ("import_captures", "main", "multi-camera recordings -> scenes"),
    "make-shards": ("make_shards", "main", "scene folders <-> webdataset shards"),
    "inspect-data": ("inspect_data", "main", "what a data config draws: fractions, shapes, ms a sample"),
    "view-embeddings": ("view_embeddings", "main", "a rig's view embeddings from text"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, _, line) in TOOLS.items()]
    return ("usage: mvlift TOOL [ARGS...]   (mvlift TOOL --help for a tool's arguments)\n\n"
            + __doc__.split("\n\n")[0] + "\n\ntools:\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool named by ``argv[0]`` (default: sys.argv[1:]) with the rest; returns its exit code (2 for an
    unknown tool or none)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0].replace("_", "-")
    if name not in TOOLS:
        print(f"mvlift: error: unknown tool {argv[0]!r}; tools: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    module, function, _ = TOOLS[name]
    entry = getattr(importlib.import_module(f"tools.{module}"), function)
    code = entry(argv[1:])
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
