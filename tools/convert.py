"""Convert FaceLift's released checkpoints into mvlift exports: ``python -m tools.convert SUBCOMMAND ...``.

Subcommands (the conversions live in ``lightning_modules.facelift.convert``):
    facelift-gslrm CKPT OUT        FaceLift's GS-LRM checkpoint (model state under ``model`` / ``model_state_dict`` /
                                   ``state_dict``, or bare; .pt/.pth/.ckpt or .safetensors) -> a reconstruction export
                                   (model.safetensors, mvlift.json, rig.json) that ``init_from:``, tools.evaluate and
                                   tools.infer read. Unknown, missing or mis-shaped tensors are an error listing them.
                                   A .pt/.pth/.ckpt is read without unpickling code; one that holds other Python
                                   objects is refused naming the file and the types, ``--trust-checkpoint`` loads it
                                   anyway (only files you trust).
    facelift-mvdiffusion PIPECKPTS OUT
                                   FaceLift's diffusion pipeline folder (unet/ vae/ image_encoder/ ...) and its fixed
                                   view embeddings (``--view-embeddings``, default: found in or beside PIPECKPTS) -> a
                                   self-contained diffusion export (attention ``sparse``, as FaceLift trained) that
                                   tools.infer, tools.evaluate and tools.synthesize read like a trained one. The
                                   file's view order is mapped to the rig's by camera direction and stated in the
                                   export; a shape that does not fit the UNet (tokens, dim) is an error naming both.

Example:
    python -m tools.convert facelift-gslrm ckpts/gslrm.pt runs/facelift_gslrm --rig facelift_6view
    python -m tools.convert facelift-mvdiffusion ckpts/mvdiffusion/pipeckpts runs/facelift_mvdiffusion \\
        --view-embeddings ckpts/mvdiffusion/fixed_prompt_embeds_6view.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def cmd_facelift_gslrm(args: argparse.Namespace) -> int:
    from lightning_modules.facelift.convert import convert_facelift_gslrm

    s = convert_facelift_gslrm(args.ckpt, args.out, rig=args.rig, head_dim=args.head_dim,
                               image_size=args.image_size, trust=args.trust_checkpoint)
    print(f"converted {s['tensors']} tensors ({s['parameters'] / 1e6:.1f} M parameters) from {args.ckpt} -> "
          f"{args.out}")
    return 0


def cmd_facelift_mvdiffusion(args: argparse.Namespace) -> int:
    from lightning_modules.facelift.convert import convert_facelift_mvdiffusion

    order = args.file_view_order.split(",") if args.file_view_order else None
    s = convert_facelift_mvdiffusion(args.pipeckpts, args.out, view_embeddings=args.view_embeddings, rig=args.rig,
                                     image_size=args.image_size, file_view_order=order)
    print(f"converted {args.pipeckpts} ({s['unet_parameters'] / 1e6:.1f} M UNet parameters) with view embeddings "
          f"{s['view_embeddings']} {s['shape']} ({s['source']}; rig {s['rig']} view k = file row {s['rows']}) -> "
          f"{args.out}")
    return 0


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"facelift-gslrm": cmd_facelift_gslrm,
                                                               "facelift-mvdiffusion": cmd_facelift_mvdiffusion}


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
    d = sub.add_parser("facelift-mvdiffusion", help="FaceLift diffusion pipeline folder -> mvlift diffusion export")
    d.add_argument("pipeckpts", help="FaceLift's pipeline folder (pipeckpts/: unet/ vae/ image_encoder/ ...)")
    d.add_argument("out", help="output export folder")
    d.add_argument("--view-embeddings", default=None,
                   help="FaceLift's fixed view embeddings (.pt, [6, 77, 1024]) or an mvlift .safetensors "
                        "(tools.view_embeddings); default: looked for in and beside PIPECKPTS")
    d.add_argument("--rig", default="facelift_6view",
                   help="the export's rig (default facelift_6view); its views must be the embeddings' directions")
    d.add_argument("--file-view-order", default=None,
                   help="row order of a FaceLift .pt, comma-separated view names (default FaceLift's: "
                        "front,front_right,right,back,left,front_left)")
    d.add_argument("--image-size", type=int, default=None, help="generated view size (default the rig's: 512)")
    d.add_argument("--trust-checkpoint", action="store_true",
                   help="load a view embeddings .pt or pipeline .bin weights that need more than plain tensors (can "
                        "run code from the file: only for files you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lightning_modules.artifacts import trusting

    try:
        with trusting(args.trust_checkpoint):  # also the files the modules read while they are built
            return SUBCOMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
