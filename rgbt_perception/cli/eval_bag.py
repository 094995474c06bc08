"""``rgbt-eval-bag``: score a recorded drive (rosbag2) with the inference engine or the live node.

Offline (default): :mod:`rgbt_perception.evaluation.offline`. ``--live``: the bag is played
into the graph through the real ``rgbt_node`` (:mod:`rgbt_perception.evaluation.live`), so drops
and latency are what a vehicle sees.

A bad bag (missing topic, unknown encoding, truncated or corrupt storage) stops the replay
with a one-line error and exit status 1; the frames scored before the fault stay in the
report, which is flagged as partial. A path that does not open as a bag at all (a folder
without ``metadata.yaml``, another kind of file) gets the same kind of error and no report.
A bag without ``labels/image`` / ``labels/boxes`` is replayed and scored for latency, drops
and sync only; the console says so before the replay starts.
"""
from __future__ import annotations

import argparse
import os
import sys

from rgbt_perception.core.defaults import BACKEND_CHOICES, MAP_SCORE_THRESHOLD, SYNC_QUEUE_SIZE, SYNC_SLOP
from rgbt_perception.io.console import console_script


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-eval-bag",
        description="Score a rosbag2 recording (rgb/image, thermal/image, labels/image) offline with the "
                    "inference engine, or live through the real rgbt_node; writes metrics.json, report.md, "
                    "plots, overlay frames and an overlay video.",
    )
    parser.add_argument("bag", help="rosbag2 directory (or a single .mcap/.db3 file)")
    parser.add_argument("--weights", required=True, help="node weights file (.safetensors)")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--live", action="store_true", help="replay through the real rgbt_node over DDS")
    parser.add_argument("--rate", type=float, default=1.0, help="live playback speed, multiple of recorded (default 1)")
    parser.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                        help="inference backend of the engine (offline) or the node (--live) (default torch)")
    parser.add_argument("--limit", type=int, default=None, help="offline: infer at most N pairs; live: play the "
                        "RGB/thermal messages of the first N seconds' worth of pairs")
    parser.add_argument("--queue-size", type=int, default=SYNC_QUEUE_SIZE,
                        help=f"synchroniser queue size per camera (default {SYNC_QUEUE_SIZE})")
    parser.add_argument("--slop", type=float, default=SYNC_SLOP,
                        help=f"synchroniser slop in seconds (default {SYNC_SLOP})")
    parser.add_argument("--score-threshold", type=float, default=MAP_SCORE_THRESHOLD,
                        help=f"lowest detection score kept; low for mAP (default {MAP_SCORE_THRESHOLD}, "
                        "as rgbt-eval)")
    parser.add_argument("--thermal-to-rgb", type=float, nargs=9, default=None, metavar="H",
                        help="thermal->RGB homography, 9 numbers row-major (default: the one recorded in the bag)")
    parser.add_argument("--overlays", type=int, default=4, help="overlay PNGs to keep (default 4)")
    parser.add_argument("--no-video", action="store_true", help="skip the overlay video")
    parser.add_argument("--node-timeout", type=float, default=120.0,
                        help="live: seconds to wait for the node to come up and to drain (default 120)")
    return parser


def _fail(message: str) -> int:
    print(f"rgbt-eval-bag: {message}", file=sys.stderr)
    return 1


def scoring_note(label_counts: dict[str, int]) -> str | None:
    """What a replay of a bag with these label message counts scores, when it is less than everything."""
    from rgbt_perception.io.bag import LABEL_BOXES_TOPIC, LABEL_TOPIC

    masks, boxes = label_counts.get(LABEL_TOPIC, 0) > 0, label_counts.get(LABEL_BOXES_TOPIC, 0) > 0
    if not masks and not boxes:
        return (f"note: the bag has no {LABEL_TOPIC} or {LABEL_BOXES_TOPIC} messages: scoring latency, drops and "
                f"sync only (no segmentation or detection metrics)")
    if not boxes:
        return f"note: the bag has no {LABEL_BOXES_TOPIC} messages: detection is not scored"
    if not masks:
        return f"note: the bag has no {LABEL_TOPIC} messages: segmentation is not scored"
    return None


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        return _fail(f"--rate must be positive, got {args.rate}")
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if not os.path.exists(args.bag):
        return _fail(f"bag {args.bag} does not exist")
    from tqdm import tqdm

    from rgbt_perception.evaluation.offline import ReplayFault, evaluate_offline
    from rgbt_perception.evaluation.report import ReplayReport, ReportPictures
    from rgbt_perception.io.bag import LABEL_BOXES_TOPIC, LABEL_TOPIC, BagError, BagOpenError, BagReader
    from rgbt_perception.io.weights import WeightsError, read_metadata

    # A path that never opens as a bag gets no report: there is nothing to report on.
    try:
        with BagReader(args.bag) as probe:
            label_counts = {topic: probe.count(topic) for topic in (LABEL_TOPIC, LABEL_BOXES_TOPIC)}
    except BagOpenError as exc:
        return _fail(str(exc))
    try:
        metadata = read_metadata(args.weights)
    except (WeightsError, OSError) as exc:
        return _fail(str(exc))
    note = scoring_note(label_counts)
    if note is not None:
        print(note, flush=True)
    mode = "live" if args.live else "offline"
    pictures = ReportPictures(max_overlay_frames=args.overlays, video=not args.no_video,
                              video_fps=min(30.0, 10.0 * args.rate) if args.live else 10.0)
    report = ReplayReport(args.out, metadata.class_names, metadata.palette, mode=mode, bag=os.path.abspath(args.bag),
                          weights=os.path.abspath(args.weights), pictures=pictures)
    fault: str | None = None
    try:
        if args.live:
            from rgbt_perception.evaluation.live import LiveReplayOptions, evaluate_live

            evaluate_live(args.bag, args.weights, report, LiveReplayOptions(
                rate=args.rate, device=args.device, backend=args.backend, limit=args.limit,
                queue_size=args.queue_size, slop=args.slop, score_threshold=args.score_threshold,
                thermal_to_rgb=args.thermal_to_rgb, timeout=args.node_timeout, progress=tqdm))
        else:
            from rgbt_perception.backends.base import DecodeSettings
            from rgbt_perception.backends.factory import create_engine

            try:
                engine = create_engine(args.weights, device=args.device, backend=args.backend,
                                       decode=DecodeSettings(score_threshold=args.score_threshold))
            except (ValueError, RuntimeError, OSError) as exc:  # WeightsError is a ValueError
                raise ReplayFault(f"cannot start the inference engine: {exc}") from None
            try:
                evaluate_offline(args.bag, engine, report, limit=args.limit, queue_size=args.queue_size,
                                 slop=args.slop, thermal_to_rgb=args.thermal_to_rgb, progress=tqdm)
            finally:
                engine.release()
    except BagOpenError as exc:  # opened for the probe above, but not for the replay (it changed meanwhile)
        return _fail(str(exc))
    except (BagError, ReplayFault, WeightsError) as exc:
        fault = str(exc)
    except KeyboardInterrupt:
        fault = "interrupted"
    report.write(partial_reason=fault)
    report_path = os.path.join(args.out, "report.md")
    if fault is not None:
        print(f"rgbt-eval-bag: {fault}", file=sys.stderr)
        print(f"partial report: {report_path}", file=sys.stderr)
        return 1
    c = report.counters
    print(f"{mode}: {c.pairs_formed} pairs, {c.frames_scored} scored, {c.frames_dropped} dropped")
    print(f"report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
