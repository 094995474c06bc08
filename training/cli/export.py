"""rgbt-export: write the node weights file (safetensors + provenance) from a training checkpoint."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from rgbt_perception.core.defaults import WEIGHT_STORAGES
from rgbt_perception.io.console import console_script
from training.synth import parse_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-export",
        description="Turn an rgbt-train checkpoint (best.pt / last.pt) into the .safetensors weights file that "
        "rgbt_node, rgbt-infer and rgbt-eval load, with provenance metadata (data set, selection split, "
        "epochs, metrics, text encoder, git commit, command lines).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by rgbt-train")
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    parser.add_argument("--storage", choices=WEIGHT_STORAGES, default="fp32",
                        help="tensor storage precision (fp16 halves the file; loading casts back to fp32)")
    parser.add_argument("--input-size", type=parse_size, metavar="HxW",
                        help="network input size the node resizes frames to, multiples of 32 (default: the "
                        "training config's model.input_size, where validation scored the checkpoint)")
    return parser


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.export import export_checkpoint

    try:
        command = " ".join(shlex.quote(a) for a in ["rgbt-export"] + (sys.argv[1:] if argv is None else argv))
        path = export_checkpoint(args.checkpoint, args.out, storage=args.storage, export_command=command,
                                 input_size=args.input_size)
    except (ValueError, OSError, KeyError) as err:
        print(f"rgbt-export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
