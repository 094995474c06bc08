"""rgbt-text-embed: precompute class text embeddings for language-aided distillation."""
from __future__ import annotations

import argparse
import sys

from rgbt_perception.core.classes import CLASS_SETS
from rgbt_perception.io.console import console_script
from training.text_embeddings import (
    DEFAULT_PROMPT,
    TextEmbeddingError,
    compute_text_embeddings,
    make_text_encoder,
    save_text_embeddings,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-text-embed",
        description="Embed the class names of a class set with CLIP (when --clip-weights points at a local "
        "open_clip checkpoint) or the bundled all-MiniLM-L6-v2 sentence-transformer, and save a "
        ".safetensors file (K x D tensor + the encoder's name). Nothing is downloaded.",
    )
    parser.add_argument("--classes", required=True, choices=sorted(CLASS_SETS), help="class set to embed")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--clip-weights", default=None, help="local open_clip weights file (default: use MiniLM)")
    parser.add_argument("--clip-model", default="ViT-B-32",
                        help="open_clip model name of --clip-weights (default ViT-B-32)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"prompt template (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    class_set = CLASS_SETS[args.classes]
    try:
        encoder = make_text_encoder(args.clip_weights, args.clip_model, args.device)
        embeddings, encoder_name = compute_text_embeddings(class_set.names, encoder, args.prompt)
        save_text_embeddings(args.out, embeddings, encoder_name, class_set.names, args.prompt)
    except (TextEmbeddingError, OSError) as err:
        print(f"rgbt-text-embed: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {tuple(embeddings.shape)} embeddings of {args.classes} ({encoder_name}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
