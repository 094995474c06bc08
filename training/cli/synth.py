"""rgbt-synth: write a seeded synthetic RGB-T road-scene data set in the MFNet layout, or (``--layout``)
in the layout of a box-only detection set (LLVIP, FLIR-aligned, M3FD, KAIST)."""
from __future__ import annotations

import argparse
import sys
import time

from rgbt_perception.io.console import console_script
from training.synth import parse_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-synth",
        description="Generate synthetic RGB + thermal road scenes (day, night, fog, glare) in the MFNet "
        "layout, plus 16-bit thermal at its own resolution, a thermal->RGB homography, COCO boxes and "
        "per-frame conditions. The same seed gives byte-identical files.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--num-train", type=int, default=100, help="training frames (default 100)")
    parser.add_argument("--num-val", type=int, default=20, help="validation frames (default 20)")
    parser.add_argument("--num-test", type=int, default=20, help="test frames (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=parse_size, default=(480, 640), help="RGB size HxW (default 480x640)")
    parser.add_argument("--thermal-size", type=parse_size, default=(240, 320),
                        help="thermal size HxW (default 240x320)")
    parser.add_argument("--layout", choices=("mfnet", "llvip", "flir_aligned", "m3fd", "kaist"), default="mfnet",
                        help="mfnet (default): the segmentation set described above; llvip, flir_aligned, m3fd, "
                        "kaist: boxes only, in that release's layout, --num-train train frames and --num-test frames "
                        "of its evaluation split (test; val for flir_aligned and m3fd); --num-val is not used")
    parser.add_argument("--condition", choices=("day", "night", "fog", "glare"), default="night",
                        help="scene condition of a detection --layout (default night; kaist alternates day and "
                        "night by set)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.layout != "mfnet":
        return _detection_layout(args)
    from training.synth.scenes import SynthConfig, generate_dataset

    try:
        cfg = SynthConfig(size=args.size, thermal_size=args.thermal_size)
        start = time.perf_counter()
        splits = generate_dataset(args.out, args.num_train, args.num_val, args.num_test, seed=args.seed, cfg=cfg,
                                  progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"rgbt-synth: error: {err}", file=sys.stderr)
        return 2
    total = sum(len(v) for v in splits.values())
    print(f"wrote {total} frames ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _detection_layout(args: argparse.Namespace) -> int:
    from training.datasets.synthetic_layouts import write_detection_scenes

    try:
        start = time.perf_counter()
        splits = write_detection_scenes(args.out, args.layout, args.num_train, args.num_test, seed=args.seed,
                                        size=args.size, condition=args.condition)
    except (ValueError, OSError) as err:
        print(f"rgbt-synth: error: {err}", file=sys.stderr)
        return 2
    total = sum(len(v) for v in splits.values())
    print(f"wrote {total} frames ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}) in the {args.layout} "
          f"layout to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
