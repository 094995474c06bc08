"""Data set splits as rosbag2 recordings: a timeline of RGB and thermal captures with labels.

``rgbt-make-bag`` writes these; tests and benchmarks use :func:`write_scenes_bag` directly.
"""
from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgbt_perception.io.bag import (
    HOMOGRAPHY_KEY,
    LABEL_BOXES_TOPIC,
    LABEL_TOPIC,
    RGB_FRAME_ID,
    RGB_TOPIC,
    THERMAL_FRAME_ID,
    THERMAL_TOPIC,
    BagError,
    BagWriter,
)

#: First stamp of a made bag (2023-11-14T22:13:20Z): a plausible wall-clock time.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True)
class Capture:
    """One camera frame of the timeline: which scene it shows, its stamp and arrival time."""

    camera: str  # "rgb" or "thermal"
    scene: int
    stamp_ns: int
    arrival_ns: int


@dataclass(frozen=True)
class TimelineConfig:
    rgb_rate: float = 30.0
    thermal_rate: float = 8.7
    thermal_delay: float = 0.15
    jitter_ms: float = 3.0
    start_ns: int = DEFAULT_START_NS

    def validate(self) -> None:
        for name in ("rgb_rate", "thermal_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.thermal_delay < 0:
            raise ValueError(f"thermal-delay must not be negative, got {self.thermal_delay}")
        slow = min(self.rgb_rate, self.thermal_rate)
        if not 0 <= self.jitter_ms * 1e-3 < 0.25 / max(self.rgb_rate, self.thermal_rate):
            raise ValueError(f"jitter-ms must lie in [0, a quarter of the faster camera's period), "
                             f"got {self.jitter_ms}")
        if slow <= 0:
            raise ValueError("camera rates must be positive")


def scene_captures(scene: int, cfg: TimelineConfig, rng: np.random.Generator) -> list[Capture]:
    """Captures of both cameras during ``scene`` (scene k spans ``[k, k+1)`` slow periods)."""
    period_ns = 1e9 / min(cfg.rgb_rate, cfg.thermal_rate)
    begin, end = scene * period_ns, (scene + 1) * period_ns
    jitter_ns = cfg.jitter_ms * 1e6
    captures = []
    for camera, rate, delay in (("rgb", cfg.rgb_rate, 0.0), ("thermal", cfg.thermal_rate, cfg.thermal_delay)):
        camera_period = 1e9 / rate
        # Frames at (i + 0.5) periods: the slower camera lands in the middle of each scene.
        first = int(np.ceil(begin / camera_period - 0.5 - 1e-9))
        for i in itertools.count(first):
            t = (i + 0.5) * camera_period
            if t >= end - 1e-6:
                break
            stamp = cfg.start_ns + int(round(t + rng.uniform(-jitter_ns, jitter_ns)))
            arrival = stamp + int(round(delay * 1e9 + rng.uniform(0.0, jitter_ns)))
            captures.append(Capture(camera, scene, stamp, arrival))
    return captures


def thermal_encoding(thermal: np.ndarray) -> str:
    if thermal.dtype == np.uint16:
        return "mono16"
    if thermal.dtype == np.uint8:
        return "mono8"
    raise BagError(f"thermal frames must be uint8 or uint16, got {thermal.dtype}")


def write_scenes_bag(
    samples: Iterable[dict[str, Any]],
    out: str,
    class_names: list[str],
    timeline: TimelineConfig = TimelineConfig(),
    storage: str = "mcap",
    version: int = 9,
    seed: int = 0,
    custom_data: dict[str, str] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, int]:
    """Write data-set samples (the ``training/datasets`` sample dict) as a camera recording.

    Returns the message count per topic. Messages are written in arrival order.
    """
    timeline.validate()
    rng = np.random.default_rng(seed)
    pending: list[tuple[int, int, Capture, dict[str, Any]]] = []
    order = itertools.count()
    slow_period_ns = 1e9 / min(timeline.rgb_rate, timeline.thermal_rate)
    samples = progress(samples) if progress is not None else samples
    with BagWriter(out, storage=storage, version=version) as bag:
        for key, value in (custom_data or {}).items():
            bag.set_custom_data(key, value)
        scene = -1
        rig: np.ndarray | None = None
        for scene, sample in enumerate(samples):
            thermal_encoding(np.asarray(sample["thermal"]))  # fail before anything is written
            rig = _check_rig(scene, sample.get("homography"), rig)
            for cap in scene_captures(scene, timeline, rng):
                heapq.heappush(pending, (cap.arrival_ns, next(order), cap, sample))
            # Nothing of a later scene can arrive before that scene begins (minus one jitter).
            horizon = timeline.start_ns + (scene + 1) * slow_period_ns - timeline.jitter_ms * 1e6
            while pending and pending[0][0] < horizon:
                _, _, cap, payload = heapq.heappop(pending)
                _write_capture(bag, cap, payload, class_names)
        while pending:
            _, _, cap, payload = heapq.heappop(pending)
            _write_capture(bag, cap, payload, class_names)
        if scene < 0:
            raise BagError("the data set gave no frames")
        if rig is not None:
            bag.set_custom_data(HOMOGRAPHY_KEY, json.dumps([float(v) for v in rig.reshape(-1)]))
        return dict(bag.counts)


def _check_rig(scene: int, homography: Any, rig: np.ndarray | None) -> np.ndarray | None:
    """A bag records one camera rig: every frame must share the thermal->RGB homography."""
    current = None if homography is None else np.asarray(homography, np.float64).reshape(3, 3)
    if scene == 0:
        return current
    if (current is None) != (rig is None) or (current is not None and not np.allclose(current, rig)):
        raise BagError(f"frame {scene} has another thermal->RGB homography than frame 0; "
                       "a bag records one camera rig")
    return rig


def _write_capture(bag: BagWriter, cap: Capture, sample: dict[str, Any], class_names: list[str]) -> None:
    if cap.camera == "thermal":
        thermal = np.asarray(sample["thermal"])
        bag.write_image(THERMAL_TOPIC, thermal, thermal_encoding(thermal), cap.stamp_ns, THERMAL_FRAME_ID,
                        cap.arrival_ns)
        return
    bag.write_image(RGB_TOPIC, sample["rgb"], "rgb8", cap.stamp_ns, RGB_FRAME_ID, cap.arrival_ns)
    if sample.get("label") is not None:
        bag.write_image(LABEL_TOPIC, sample["label"], "mono8", cap.stamp_ns, RGB_FRAME_ID, cap.arrival_ns)
        boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        labels = np.asarray(sample.get("box_labels", np.zeros((0,))), np.int64).reshape(-1)
        bag.write_boxes(LABEL_BOXES_TOPIC, boxes, labels, class_names, cap.stamp_ns, RGB_FRAME_ID,
                        log_time_ns=cap.arrival_ns)


def load_split(dataset: str, root: str, split: str) -> Any:
    """The data set's split through ``training.datasets.build_dataset``."""
    from training.datasets import build_dataset

    return build_dataset(dataset, root=root, split=split)


def first_frames(dataset: Any, limit: int | None) -> Iterable[dict[str, Any]]:
    """The first ``limit`` samples of ``dataset`` (all with ``None``), read lazily."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return (dataset[i] for i in range(count))
