"""Convert foreign checkpoints into mvlift exports: ``python -m tools.convert SUBCOMMAND ...``.

Subcommands:
    facelift-gslrm CKPT OUT   FaceLift's GS-LRM checkpoint (model state under ``model`` / ``model_state_dict`` /
                              ``state_dict``, or bare; .pt/.pth/.ckpt or .safetensors) -> an export folder
                              (model.safetensors, mvlift.json, rig.json) that ``ReconstructionModule.from_export``,
                              ``init_from:`` in a fit config and tools.evaluate read. Unknown, missing or mis-shaped
                              tensors are an error listing them. A .pt/.pth/.ckpt is read without
                              unpickling code (``weights_only``, ``lightning_modules.artifacts``); one that holds
                              other Python objects (optimizer state classes, configs) is refused naming the file and
                              the types, ``--trust-checkpoint`` loads it anyway (only files you trust).

Example:
    python -m tools.convert facelift-gslrm ckpts/gslrm.pt runs/facelift_gslrm --rig facelift_6view
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from geometry.files import make_readable

if TYPE_CHECKING:
    from lightning_modules.gslrm import GSLRMConfig

# Name mapping FaceLift -> mvlift. mvlift's GS-LRM keeps FaceLift's parameter names, so the mapping only strips
# wrappers that training frameworks add (DDP ``module.``, torch.compile ``_orig_mod.``, a ``model.`` prefix) and
# drops FaceLift's loss networks (LPIPS/VGG inside ``loss_calculator``), which are not part of the model.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
IGNORED_PREFIXES = ("loss_calculator.",)
STATE_KEYS = ("model", "model_state_dict", "state_dict")


def load_checkpoint_state(path: Path, trust: bool = False) -> dict[str, Tensor]:
    """The tensor state dict inside a checkpoint file (see module docstring for accepted layouts); ``trust``: full
    unpickling for a file that needs more than ``weights_only`` (never done without it)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from lightning_modules.artifacts import load_checkpoint

    obj = load_checkpoint(path, trust=trust, mmap=zipfile.is_zipfile(path))  # mmap needs the zip format
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no tensor state dict found (looked under {STATE_KEYS} and at the top level)")
    return dict(obj)


def facelift_gslrm_name(name: str) -> str | None:
    """mvlift name of a FaceLift GS-LRM tensor, or None for tensors that are deliberately dropped."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    if name.startswith(IGNORED_PREFIXES):
        return None
    return name


def convert_facelift_gslrm_state(state: dict[str, Tensor], where: str, head_dim: int = 64
                                 ) -> tuple[dict[str, Tensor], GSLRMConfig]:
    """Rename, validate against the network built from the inferred size, and return (state, config)."""
    from lightning_modules.gslrm import check_state_dict, config_from_state_dict, gslrm_state_dict_shapes

    renamed: dict[str, Tensor] = {}
    for k, v in state.items():
        new = facelift_gslrm_name(k)
        if new is None:
            continue
        if new in renamed:
            raise ValueError(f"{where}: two tensors map to {new!r}")
        renamed[new] = v
    config = config_from_state_dict(renamed, head_dim=head_dim)
    check_state_dict(gslrm_state_dict_shapes(config), renamed, where)
    return {k: v.float().contiguous() for k, v in renamed.items()}, config


def cmd_facelift_gslrm(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from geometry.rig import load_rig
    from lightning_modules.artifacts import FORMAT_VERSION, WEIGHTS, write_export_metadata

    ckpt, out = Path(args.ckpt), Path(args.out)
    state, config = convert_facelift_gslrm_state(load_checkpoint_state(ckpt, trust=args.trust_checkpoint), str(ckpt),
                                                 head_dim=args.head_dim)
    config.image_size = args.image_size
    rig = load_rig(args.rig)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS["reconstruction"]
    save_file(state, str(weights))
    make_readable(weights)  # safetensors writes 0600 whatever the umask
    hparams = {"rig": rig.name, "image_size": args.image_size, "width": config.width, "depth": config.depth,
               "head_dim": config.head_dim, "patch_size": config.patch_size,
               "num_global_tokens": config.num_global_tokens, "mlp_ratio": config.mlp_ratio,
               "sh_degree": config.sh_degree, "clip_xyz": config.clip_xyz}
    meta = {"stage": "reconstruction", "rig": rig.to_dict(), "version": FORMAT_VERSION,
            "model_config": config.to_dict(),
            "converted_from": {"format": "facelift-gslrm", "path": str(ckpt.resolve())}}
    write_export_metadata(out, meta, hparams, rig)
    n = sum(v.numel() for v in state.values())
    print(f"converted {len(state)} tensors ({n / 1e6:.1f} M parameters) from {ckpt} -> {out}")
    return 0


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"facelift-gslrm": cmd_facelift_gslrm}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("facelift-gslrm", help="FaceLift GS-LRM checkpoint -> mvlift GS-LRM export folder")
    p.add_argument("ckpt", help="FaceLift checkpoint (.pt/.pth/.ckpt/.safetensors)")
    p.add_argument("out", help="output export folder")
    p.add_argument("--rig", default="facelift_6view", help="rig stored with the weights (default facelift_6view)")
    p.add_argument("--head-dim", type=int, default=64, help="attention head dim (not visible in shapes; 64)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a .pt/.ckpt holding other Python objects with full unpickling (can run code from the "
                        "file: only for files you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
