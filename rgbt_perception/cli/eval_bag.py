"""``rgbt-eval-bag``: score a recorded drive (rosbag2) with the inference engine or the live node.

Offline (default): the bag is read in recording order, RGB and thermal frames are paired by
the synchroniser class the node uses (``rgbt_perception.core.sync``, fed through
``SimpleFilter.signalMessage``), every pair goes through the ``InferenceEngine`` as fast as it
can, and the masks and boxes are scored against ``labels/image`` / ``labels/boxes`` (matched
to the RGB frame by stamp).

``--live``: this process plays the bag into the ROS graph at the recorded rate (times
``--rate``), the real ``rgbt_node`` runs as another process, its ``semantic``, ``detections``
and ``status`` outputs are recorded into ``DIR/node_outputs`` and scored from there, so drops
and latency (receipt of an output - publication of its RGB frame) are what a vehicle sees.

A bad bag (missing topic, unknown encoding, truncated or corrupt storage) stops the replay
with a one-line error and exit status 1; the frames scored before the fault stay in the
report, which is flagged as partial.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgbt_perception.io.bag import (
    LABEL_BOXES_TOPIC,
    LABEL_TOPIC,
    RGB_TOPIC,
    THERMAL_TOPIC,
    BagError,
    BagReader,
    BoxesFrame,
    ImageFrame,
)
from rgbt_perception.evaluation.report import BoxSet, ReplayReport

#: Synchroniser settings shared with the node's defaults (30 Hz RGB, thermal 150 ms late).
DEFAULT_QUEUE_SIZE = 10
DEFAULT_SLOP = 0.05
#: Detections down to this score are kept for box mAP (the value ``rgbt-eval`` uses).
DEFAULT_SCORE_THRESHOLD = 0.05


class ReplayFault(RuntimeError):
    """A fault that ends a replay early; the report written so far is kept and flagged partial."""


@dataclass
class GroundTruth:
    """Labels and boxes of the bag, looked up by RGB stamp."""

    labels: dict[int, np.ndarray]
    boxes: dict[int, BoxSet]
    thing_ids: tuple[int, ...] | None

    def take(self, stamp_ns: int) -> tuple[np.ndarray | None, BoxSet | None]:
        label = self.labels.pop(stamp_ns, None)
        boxes = self.boxes.pop(stamp_ns, None)
        if label is not None and boxes is None and self.thing_ids is not None:
            from rgbt_perception.core.boxes import boxes_from_label

            derived, classes = boxes_from_label(label, self.thing_ids)
            boxes = BoxSet(derived, classes)
        return label, boxes

    def forget_before(self, stamp_ns: int) -> None:
        """Drop labels of RGB frames that can no longer be paired (keeps memory bounded)."""
        for table in (self.labels, self.boxes):
            for stamp in [s for s in table if s < stamp_ns]:
                del table[stamp]


def thing_ids_for(class_names: list[str]) -> tuple[int, ...] | None:
    """Thing classes of the class set whose names the weights carry (for boxes from labels)."""
    from rgbt_perception.core.classes import CLASS_SETS

    for class_set in CLASS_SETS.values():
        if list(class_set.names) == list(class_names):
            return tuple(class_set.thing_ids)
    return None


def rig_homography(reader: BagReader, override: Sequence[float] | None) -> np.ndarray | None:
    """The thermal->RGB homography to use: the override, else the bag's (None: same field of view)."""
    if override is None:
        return reader.thermal_to_rgb()
    from rgbt_perception.core.registration import parse_homography

    try:
        return parse_homography(list(override))
    except ValueError as exc:
        raise ReplayFault(f"--thermal-to-rgb: {exc}") from None


def expected_frames(reader: BagReader) -> int:
    """About how many pairs a replay forms: one per frame of the slower camera."""
    return min(reader.count(RGB_TOPIC), reader.count(THERMAL_TOPIC))


def open_bag(path: str) -> BagReader:
    reader = BagReader(path)
    try:
        reader.require_topics([RGB_TOPIC, THERMAL_TOPIC])
    except BagError:
        reader.close()
        raise
    return reader


def evaluate_offline(
    bag_path: str,
    engine: Any,
    report: ReplayReport,
    limit: int | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    slop: float = DEFAULT_SLOP,
    thermal_to_rgb: Sequence[float] | None = None,
    progress: Callable[..., Any] | None = None,
) -> None:
    """Pair, infer and score every pair of the bag; raises ``BagError`` at a fault (report kept).

    ``thermal_to_rgb`` (9 numbers) overrides the homography recorded in the bag.
    """
    from rgbt_perception.core.sync import ApproximateTimeSynchronizer, SimpleFilter

    with open_bag(bag_path) as reader:
        homography = rig_homography(reader, thermal_to_rgb)
        report.spread_overlays(expected_frames(reader))
        truth = GroundTruth({}, {}, thing_ids_for(list(engine.class_names)))
        rgb_input, thermal_input = SimpleFilter(), SimpleFilter()
        sync = ApproximateTimeSynchronizer([rgb_input, thermal_input], queue_size, slop)
        pairs: deque[tuple[ImageFrame, ImageFrame]] = deque()
        sync.registerCallback(lambda rgb, thermal: pairs.append((rgb, thermal)))
        topics = [RGB_TOPIC, THERMAL_TOPIC, LABEL_TOPIC, LABEL_BOXES_TOPIC]
        total = sum(reader.count(t) for t in topics)
        bar = progress(total=total, desc="offline replay", unit="msg") if progress else None
        inputs = {RGB_TOPIC: rgb_input, THERMAL_TOPIC: thermal_input}
        inferred = 0

        def run_pairs(before_log_time: int | None) -> bool:
            """Infer the formed pairs whose RGB frame (and so its label) was read; False at the limit."""
            nonlocal inferred
            while pairs and (before_log_time is None or pairs[0][0].log_time_ns < before_log_time):
                if limit is not None and inferred >= limit:
                    return False
                rgb, thermal = pairs.popleft()
                report.add_pair(rgb.stamp_ns, thermal.stamp_ns)
                label, boxes = truth.take(rgb.stamp_ns)
                try:
                    result = engine.infer(rgb.image, thermal.image, homography=homography)
                except ValueError as exc:
                    raise BagError(f"pair at RGB stamp {rgb.stamp_ns} ns rejected by the engine: {exc}") from None
                try:
                    report.add_frame(rgb.image, result.mask, BoxSet.from_detections(result.detections), label, boxes,
                                     latency_ms=result.timings_ms.get("total"))
                except ValueError as exc:
                    raise BagError(f"label at RGB stamp {rgb.stamp_ns} ns: {exc}") from None
                truth.forget_before(rgb.stamp_ns - int(2e9))
                inferred += 1
            return True

        try:
            try:
                for frame in reader.frames(topics):
                    if bar is not None:
                        bar.update(1)
                    if not run_pairs(frame.log_time_ns):
                        return
                    if isinstance(frame, BoxesFrame):
                        truth.boxes[frame.stamp_ns] = BoxSet(frame.boxes, frame.labels)
                    elif frame.topic == LABEL_TOPIC:
                        if frame.image.ndim != 2 or frame.image.dtype != np.uint8:
                            raise BagError(f"{LABEL_TOPIC} at stamp {frame.stamp_ns} ns must be mono8, "
                                           f"got {frame.encoding}")
                        truth.labels[frame.stamp_ns] = frame.image
                    else:
                        inputs[frame.topic].signalMessage(frame)
            except BagError:
                run_pairs(None)  # pairs formed before the fault still count
                raise
            run_pairs(None)
        finally:
            if bar is not None:
                bar.close()


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
    parser.add_argument("--limit", type=int, default=None, help="offline: infer at most N pairs; live: play the "
                        "RGB/thermal messages of the first N seconds' worth of pairs")
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                        help=f"synchroniser queue size per camera (default {DEFAULT_QUEUE_SIZE})")
    parser.add_argument("--slop", type=float, default=DEFAULT_SLOP,
                        help=f"synchroniser slop in seconds (default {DEFAULT_SLOP})")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help=f"lowest detection score kept; low for mAP (default {DEFAULT_SCORE_THRESHOLD}, as rgbt-eval)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        return _fail(f"--rate must be positive, got {args.rate}")
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if not os.path.exists(args.bag):
        return _fail(f"bag {args.bag} does not exist")
    from tqdm import tqdm

    from rgbt_perception.io.weights import WeightsError, read_metadata

    try:
        metadata = read_metadata(args.weights)
    except (WeightsError, OSError) as exc:
        return _fail(str(exc))
    mode = "live" if args.live else "offline"
    report = ReplayReport(
        args.out, metadata.class_names, metadata.palette, mode=mode, bag=os.path.abspath(args.bag),
        weights=os.path.abspath(args.weights), max_overlay_frames=args.overlays, video=not args.no_video,
        video_fps=min(30.0, 10.0 * args.rate) if args.live else 10.0,
    )
    fault: str | None = None
    try:
        if args.live:
            from rgbt_perception.evaluation.live import evaluate_live

            evaluate_live(args.bag, args.weights, report, rate=args.rate, device=args.device, limit=args.limit,
                          queue_size=args.queue_size, slop=args.slop, score_threshold=args.score_threshold,
                          thermal_to_rgb=args.thermal_to_rgb, timeout=args.node_timeout, progress=tqdm)
        else:
            from rgbt_perception.inference import InferenceEngine

            try:
                engine = InferenceEngine(args.weights, device=args.device, score_threshold=args.score_threshold)
            except (ValueError, RuntimeError, OSError) as exc:  # WeightsError is a ValueError
                raise ReplayFault(f"cannot start the inference engine: {exc}") from None
            try:
                evaluate_offline(args.bag, engine, report, limit=args.limit, queue_size=args.queue_size,
                                 slop=args.slop, thermal_to_rgb=args.thermal_to_rgb, progress=tqdm)
            finally:
                engine.release()
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
    # Run from the importable module so that exception classes are the ones live_replay raises.
    from rgbt_perception.cli.eval_bag import main as _main

    sys.exit(_main())
