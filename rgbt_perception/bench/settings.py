"""What one ``rgbt-bench`` run measures: its options, their validation and the fixed sizes.

Only the standard library at import time, so the command line parses (and ``--help`` answers)
without loading torch.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Sequence

DEFAULT_VARIANTS = ("micro", "tiny", "small", "base_plus")
SCALING_SIZES = ((240, 320), (480, 640), (720, 1280))
STEP_NAMES = ("channels_last", "autocast", "compile", "cuda_graphs")
SMOKE_SIZE = (64, 96)


class BenchError(ValueError):
    """A bad option or an unusable environment; the message names the problem."""


@dataclass
class BenchSettings:
    """Everything one run measures; filled from the command line."""

    variants: list[str]
    size: tuple[int, int]
    iters: int
    warmup: int
    device: str
    precision: str
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    threads: int = 0
    variant_budget_s: float = 120.0
    node: bool = False
    node_variant: str = "micro"
    node_timeout_s: float = 30.0
    scaling: bool = False
    scaling_sizes: list[tuple[int, int]] = field(default_factory=lambda: list(SCALING_SIZES))
    scaling_iters: int = 3
    steps: list[str] = field(default_factory=list)
    steps_variant: str = "micro"
    export_onnx: str | None = None
    weights: str | None = None
    seed: int = 0
    smoke: bool = False
    backend: str = "torch"
    ladder: bool = False
    baseline_tree: str | None = None
    soak_s: float = 0.0


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise BenchError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 480x640)") from None
    if height < 32 or width < 32:
        raise BenchError(f"size {text!r} is too small: height and width must be at least 32")
    return height, width


def network_input_size(frame_size: Sequence[int]) -> tuple[int, int]:
    """The network input for a frame size: each side rounded up to a multiple of 32 (Hiera's
    windowing needs it), so no pixel of the frame is lost by the resize."""
    return tuple(-(-int(v) // 32) * 32 for v in frame_size)  # type: ignore[return-value]

def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Validate the parsed options; raises :class:`BenchError` naming the bad one.

    The variant names are checked last: their list lives in the model package, whose import
    loads torch, so every other bad option is named without it.
    """
    size = parse_size(args.size)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants and not args.weights:
        raise BenchError("--variants is empty")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad_steps = [s for s in steps if s not in STEP_NAMES]
    if bad_steps:
        raise BenchError(f"unknown --steps {bad_steps}; known: {', '.join(STEP_NAMES)}")
    for name in ("iters", "scaling_iters"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads < 0:
        raise BenchError(f"--threads must be >= 0, got {args.threads}")
    if args.weights and not os.path.isfile(args.weights):
        raise BenchError(f"--weights {args.weights!r}: file not found")
    if args.baseline_tree and not os.path.isfile(os.path.join(args.baseline_tree, "rgbt_perception", "inference.py")):
        raise BenchError(f"--baseline-tree {args.baseline_tree!r} holds no rgbt_perception/inference.py "
                         "(unpack a commit there with `git archive COMMIT | tar -x -C DIR`)")
    if args.baseline_tree and not args.ladder:
        raise BenchError("--baseline-tree is measured by --ladder")
    if args.ladder and args.out:
        raise BenchError("--ladder prints its table and writes --json; it does not rewrite the --out results section")
    if args.soak_s < 0:
        raise BenchError(f"--soak must be >= 0 seconds, got {args.soak_s}")
    from rgbt_perception.model.config import VARIANTS

    unknown = [v for v in variants + [args.node_variant, args.steps_variant] if v not in VARIANTS]
    if unknown:
        raise BenchError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    # The options carry the settings' names (argparse ``dest``); the parsed lists replace their text.
    given = {f.name: getattr(args, f.name) for f in fields(BenchSettings) if hasattr(args, f.name)}
    settings = BenchSettings(**{**given, "variants": variants, "size": size, "steps": steps})
    if settings.smoke:
        settings.variants, settings.size = ["micro"], SMOKE_SIZE
        settings.iters, settings.warmup = 2, 1
        settings.node = settings.scaling = False
        settings.steps = []
        settings.weights = None
    return settings

