"""Offline replay of a recording through the inference engine (``rgbt-eval-bag`` without ``--live``).

The bag is read in recording order, RGB and thermal frames are paired by the synchroniser class
the node uses (fed through ``SimpleFilter.signalMessage``), every pair goes through the
``InferenceEngine`` as fast as it can, and masks and boxes are scored against ``labels/image`` /
``labels/boxes`` (matched to the RGB frame by stamp).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rgbt_perception.core.defaults import SYNC_QUEUE_SIZE, SYNC_SLOP
from rgbt_perception.core.registration import parse_homography
from rgbt_perception.core.sync import ApproximateTimeSynchronizer, SimpleFilter
from rgbt_perception.evaluation.ground_truth import GroundTruth, thing_ids_for
from rgbt_perception.evaluation.report import BoxSet, ReplayReport
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


class ReplayFault(RuntimeError):
    """A fault that ends a replay early; the report written so far is kept and flagged partial."""


def rig_homography(reader: BagReader, override: Sequence[float] | None) -> np.ndarray | None:
    """The thermal->RGB homography to use: the override, else the bag's (None: same field of view)."""
    if override is None:
        return reader.thermal_to_rgb()
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
    queue_size: int = SYNC_QUEUE_SIZE,
    slop: float = SYNC_SLOP,
    thermal_to_rgb: Sequence[float] | None = None,
    progress: Callable[..., Any] | None = None,
) -> None:
    """Pair, infer and score every pair of the bag; raises ``BagError`` at a fault (report kept).

    ``thermal_to_rgb`` (9 numbers) overrides the homography recorded in the bag.
    """
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


