"""``rgbt-make-bag``: a data-set split as a rosbag2 recording of an RGB and a thermal camera.

Data-set frames are independent scenes, so each scene is held for one period of the slower
camera and both cameras sample it at their own rates: the slower camera once (centred in
the scene), the faster one ``fast_rate / slow_rate`` times. Stamps are capture times plus
uniform jitter; a message is recorded when it would arrive, i.e. at its stamp plus the
camera's delay (``--thermal-delay`` for the thermal camera; RGB arrives at once) plus up to
one jitter. The rig's thermal->RGB homography (when the data set has one) goes into
metadata.yaml ``custom_data["rgbt.thermal_to_rgb"]``. Labels (``labels/image``) and ground-truth
boxes (``labels/boxes``) are stamped and recorded like the RGB frame that shows their scene.
"""
from __future__ import annotations

import argparse
import sys

from rgbt_perception.io.bag_storage import METADATA_VERSIONS, STORAGE_FORMATS
from rgbt_perception.io.console import console_script

DATASETS = ("synthetic", "mfnet", "pst900", "fmb", "folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-make-bag",
        description="Write a data-set split as a rosbag2 recording (rgb/image, thermal/image, "
                    "labels/image, labels/boxes) with cameras at their own rates, thermal delay and jitter.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="data-set loader")
    parser.add_argument("--root", required=True, help="data-set root directory")
    parser.add_argument("--split", default="val", help="split to record (default: val)")
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--storage", default="mcap", choices=STORAGE_FORMATS, help="storage plugin (default: mcap)")
    parser.add_argument("--version", type=int, default=9, choices=METADATA_VERSIONS,
                        help="metadata version: 8 for Humble readers, 9 for Jazzy and later (default: 9)")
    parser.add_argument("--rgb-rate", type=float, default=30.0, help="RGB camera rate, Hz (default: 30)")
    parser.add_argument("--thermal-rate", type=float, default=8.7, help="thermal camera rate, Hz (default: 8.7)")
    parser.add_argument("--thermal-delay", type=float, default=0.15,
                        help="seconds a thermal frame arrives after its stamp (default: 0.15)")
    parser.add_argument("--jitter-ms", type=float, default=3.0, help="stamp and arrival jitter, ms (default: 3)")
    parser.add_argument("--limit", type=int, default=None, help="record at most N data-set frames")
    parser.add_argument("--seed", type=int, default=0, help="jitter seed (default: 0)")
    return parser


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from rgbt_perception.io.bag import BagError
    from training.recording import TimelineConfig, first_frames, load_split, write_scenes_bag

    if args.limit is not None and args.limit < 1:
        print(f"rgbt-make-bag: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    timeline = TimelineConfig(args.rgb_rate, args.thermal_rate, args.thermal_delay, args.jitter_ms)
    try:
        timeline.validate()
        dataset = load_split(args.dataset, args.root, args.split)
        total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        counts = write_scenes_bag(
            first_frames(dataset, args.limit), args.out, list(dataset.class_set.names), timeline,
            storage=args.storage, version=args.version, seed=args.seed,
            custom_data={"rgbt.dataset": args.dataset, "rgbt.split": args.split,
                         "rgbt.class_set": dataset.class_set.name},
            progress=lambda it: tqdm(it, total=total, desc="recording", unit="scene"),
        )
    except (BagError, ValueError, OSError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"rgbt-make-bag: {message}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{topic}: {n}" for topic, n in sorted(counts.items()))
    print(f"wrote {args.out} ({args.storage}, metadata v{args.version}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
