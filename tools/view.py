"""Look at results in the browser: a local web page (viser, works offline) with the Gaussian splats in 3D.

    python -m tools.view PATH [--host 127.0.0.1] [--port 8080] [--open] [--inria-folder DIR [--iteration 30000]]

PATH: a ``.ply`` (3DGS), an infer output folder (one image's ``<out>/<stem>/`` or the whole ``--out``), or an
evaluation folder (results.md / results.json / grids/). The page shows the input photo, the generated views with
their rig names, the rig cameras as frusta and an interactive splat view; for an evaluation the table and the grids.
Open the printed address (``--open`` opens the default browser); on a remote machine forward the port first
(``ssh -L 8080:localhost:8080 HOST``). Ctrl-C stops the server.

``--inria-folder DIR`` writes the PLY (a ``.ply`` PATH or an infer folder's gaussians.ply) as Inria 3DGS's model
folder (``cfg_args``, ``point_cloud/iteration_N/point_cloud.ply``) for its SIBR viewer, and serves nothing.
The viewer needs the ``viewer`` extra (``pip install -e '.[viewer]'``, i.e. viser).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from geometry.render.ply import DEFAULT_SH_DEGREE, INRIA_ITERATION, load_ply, save_inria_model
from geometry.render.viewer import DEFAULT_PORT, collect, serve_until_interrupted
from tools import log_to_stderr

log = logging.getLogger("mvlift.view")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.view", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("path", type=Path, help="a .ply, an infer output folder or an evaluation folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the page (HTTP and websocket)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--inria-folder", type=Path, default=None,
                   help="write Inria 3DGS's model folder of the PLY here instead of serving")
    p.add_argument("--iteration", type=int, default=INRIA_ITERATION, help="iteration number of --inria-folder")
    p.add_argument("--sh-degree", type=int, default=DEFAULT_SH_DEGREE, help="SH degree of --inria-folder's PLY")
    return p


def write_inria_folder(path: Path, folder: Path, iteration: int, sh_degree: int) -> Path:
    """The PLY of ``path`` (tools.view's PATH) as Inria's model folder; returns the folder."""
    scenes = [s for s in collect(path).scenes if s.ply is not None]
    if len(scenes) != 1:
        raise ValueError(f"{path}: --inria-folder needs exactly one PLY, found {len(scenes)} (give the .ply or one "
                         "image's folder)")
    g, rest = load_ply(scenes[0].ply, with_sh_rest=True)
    return save_inria_model(folder, g, iteration=iteration, sh_degree=sh_degree, sh_rest=rest)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    try:
        if args.inria_folder is not None:
            out = write_inria_folder(args.path, args.inria_folder, args.iteration, args.sh_degree)
            print(f"wrote {out} (open with: SIBR_gaussianViewer_app -m {out})")
            return 0
        return serve_until_interrupted(args.path, args.host, args.port, args.open)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"view: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
