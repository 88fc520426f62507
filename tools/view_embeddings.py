"""Make view embeddings for a rig from text: ``python -m tools.view_embeddings --pipeline FOLDER --rig NAME --out FILE``.

One prompt per rig view, built from the template with the view's name, azimuth and elevation (``{view}``,
``{elevation words}`` such as "from above at an angle" for an oblique rig, ``{azimuth}``, ``{elevation}``), encoded
with the pipeline folder's own ``text_encoder/`` and ``tokenizer/`` (local files only, nothing downloaded), checked
against its UNet's cross-attention dim (a 768-dim text model for a 1024-dim UNet is an error naming both) and saved
as safetensors with the rig (name, fingerprint) and the prompts. A diffusion config starts from it with
``view_embeddings: FILE``; the file is bound to its rig (another rig's model refuses it, the rig guard reads it).

Example:
    python -m tools.view_embeddings --pipeline ckpts/mvdiffusion/pipeckpts --rig mouse_oblique20_6view \\
        --out runs/mouse_text_view_embeddings.safetensors
"""

from __future__ import annotations

import argparse
import sys

from lightning_modules.diffusion.view_conditioning import DEFAULT_TEMPLATE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.view_embeddings", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="pipeline folder with text_encoder/, tokenizer/ and unet/")
    p.add_argument("--rig", required=True, help="rig name or YAML file")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"per-view prompt template (default {DEFAULT_TEMPLATE!r})")
    p.add_argument("--print-prompts", action="store_true", help="only print the prompts (no encoder is loaded)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a text encoder .bin that needs more than plain tensors with the types it asks for "
                        "allowed (can run code from the file: only for files you trust)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lightning_modules.artifacts import trusting
    from lightning_modules.diffusion.view_conditioning import text_view_embeddings, view_prompts

    try:
        if args.print_prompts:
            print("\n".join(view_prompts(args.rig, args.template)))
            return 0
        if not args.out.endswith(".safetensors"):
            raise ValueError(f"--out {args.out}: view embeddings are written as .safetensors")
        with trusting(args.trust_checkpoint):
            emb = text_view_embeddings(args.pipeline, args.rig, args.template)
        path = emb.save(args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, prompt in zip(emb.rig.view_names, emb.info["prompts"]):
        print(f"{name:<14} {prompt}")
    print(f"{list(emb.embeds.shape)} view embeddings for rig {emb.rig_name} ({emb.rig_fingerprint}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
