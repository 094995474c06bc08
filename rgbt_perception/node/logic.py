"""What the perception node decides without a ROS graph.

Input validation and decoding, the newest-only hand-over to the
inference worker with its counters, latency and rate statistics, degraded-mode tracking and
rate-limited rejection reports. ``node.py`` wires these to rclpy; everything here is tested
and reused without ROS (messages are read duck-typed).
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from rgbt_perception.core.defaults import CAMERAS
from rgbt_perception.core.image_codec import (
    BRIDGE_ERRORS,
    RGB_INPUT_ENCODINGS,
    THERMAL_INPUT_ENCODINGS,
    UnsupportedEncodingError,
    image_to_rgb8,
    image_to_thermal,
)
from rgbt_perception.core.registration import check_thermal
from rgbt_perception.core.stamps import message_stamp_ns

MODALITIES = CAMERAS
#: What each camera input accepts (Image encodings; CompressedImage too, as image_transport sends it).
RGB_ENCODINGS = RGB_INPUT_ENCODINGS
# 32FC1 is radiometric temperature; the engine scales float thermal like raw counts.
THERMAL_ENCODINGS = THERMAL_INPUT_ENCODINGS

# --------------------------------------------------------------------------------------------
# Input frames


class InputRejected(ValueError):
    """An input message that cannot be used; the text names the problem."""


class UnsupportedEncoding(InputRejected):
    """A camera publishes an encoding its input cannot use: every frame of it will be refused.

    ``encoding`` names it; ``size`` (the message's ``(height, width)``, None when unknown) and
    ``frame_id`` still describe the camera's geometry.
    """

    def __init__(self, message: str, modality: str, encoding: str, size: tuple[int, int] | None,
                 frame_id: str = "") -> None:
        super().__init__(message)
        self.modality = modality
        self.encoding = encoding
        self.size = size
        self.frame_id = frame_id


@dataclass
class Frame:
    """One decoded camera frame; ``header`` is the message's (the synchroniser reads it)."""

    modality: str
    header: Any
    image: np.ndarray
    stamp_ns: int
    arrival_ns: int


class FrameDecoder:
    """Validates and decodes one camera's messages into :class:`Frame` objects.

    RGB comes out as ``H, W, 3`` uint8 RGB from any encoding that converts to colour (Bayer
    demosaiced, YUV converted, ``8UC3`` read as OpenCV's BGR, 16 bit scaled); thermal as ``H, W``
    at its own depth: uint8 / uint16 raw counts (never squeezed to 8 bit) or float32. Both read
    ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` (a 16-bit thermal PNG keeps its
    counts). The first accepted frame fixes the stream's ``frame_id``: a later frame with another
    one is rejected (a remapping mistake or a second camera on the topic).
    """

    def __init__(self, modality: str) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        self.encodings = RGB_ENCODINGS if modality == "rgb" else THERMAL_ENCODINGS
        self.frame_id: str | None = None

    def reset(self) -> None:
        self.frame_id = None

    def decode(self, msg: Any, arrival_ns: int | None = None) -> Frame:
        """Decode an Image or a CompressedImage; raises :class:`InputRejected` (:class:`UnsupportedEncoding`
        for an encoding this input cannot use)."""
        arrival_ns = time.time_ns() if arrival_ns is None else arrival_ns
        try:
            stamp_ns = message_stamp_ns(msg)
        except TypeError as exc:
            raise InputRejected(f"{self.modality}: {exc}") from None
        if stamp_ns is None:
            raise InputRejected(f"{self.modality}: message has no header stamp")
        try:
            if self.modality == "rgb":
                image = image_to_rgb8(msg)
            else:
                image = check_thermal(image_to_thermal(msg), "thermal")
        except UnsupportedEncodingError as exc:
            size = (int(msg.height), int(msg.width)) if hasattr(msg, "height") else None
            raise UnsupportedEncoding(f"{self.modality}: {exc}", self.modality, exc.encoding,
                                      size if size and min(size) > 0 else None, str(msg.header.frame_id)) from None
        except BRIDGE_ERRORS as exc:
            raise InputRejected(f"{self.modality}: {exc}") from None
        except ValueError as exc:
            raise InputRejected(f"{self.modality}: {exc}") from None
        frame_id = msg.header.frame_id
        if self.frame_id is not None and frame_id != self.frame_id:
            raise InputRejected(f"{self.modality}: frame_id changed from {self.frame_id!r} to {frame_id!r}")
        self.frame_id = frame_id
        return Frame(self.modality, msg.header, image, stamp_ns, arrival_ns)


class OutputGeometry:
    """The pixel grid outputs are published on: the RGB camera's once its geometry is known.

    Thermal-only frames are then warped onto that grid (the engine's ``output_size``) and their
    outputs carry the RGB camera's ``frame_id`` with the thermal frame's stamp, so ``semantic``
    never changes size when the node falls back to thermal alone. Before any RGB frame (size
    known from an accepted frame, or from a frame refused only for its encoding) they stay in
    thermal pixels.
    """

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self.frame_id: str | None = None

    def observe_rgb(self, size: tuple[int, int], frame_id: str | None) -> None:
        self.size = (int(size[0]), int(size[1]))
        if frame_id:
            self.frame_id = frame_id

    def work_item(self, rgb: Frame | None, thermal: Frame | None) -> "WorkItem":
        """A work item; a thermal-only one goes onto the RGB grid when it is known."""
        if rgb is None and self.size is not None:
            return WorkItem(None, thermal, output_size=self.size, output_frame_id=self.frame_id)
        return WorkItem(rgb, thermal)


@dataclass
class WorkItem:
    """What the worker infers on: a pair, or one frame in degraded mode."""

    rgb: Frame | None
    thermal: Frame | None
    formed_ns: int = field(default_factory=time.time_ns)
    #: Thermal-only: the RGB grid ``(H, W)`` to publish on (None: thermal pixels) and its frame_id.
    output_size: tuple[int, int] | None = None
    output_frame_id: str | None = None

    @property
    def reference(self) -> Frame:
        """The frame whose header the outputs carry (RGB when present)."""
        frame = self.rgb if self.rgb is not None else self.thermal
        assert frame is not None
        return frame

    @property
    def skew_ms(self) -> float | None:
        if self.rgb is None or self.thermal is None:
            return None
        return abs(self.rgb.stamp_ns - self.thermal.stamp_ns) / 1e6

    @property
    def last_arrival_ns(self) -> int:
        return max(f.arrival_ns for f in (self.rgb, self.thermal) if f is not None)


# --------------------------------------------------------------------------------------------
# Hand-over to the worker, counters

T = TypeVar("T")


class NewestOnlyQueue(Generic[T]):
    """A one-slot hand-over: ``put`` replaces a waiting item, which counts as dropped.

    Invariant: ``formed == processed + dropped + pending`` where ``pending`` is the waiting
    item plus the one the worker holds, so once the worker is idle
    ``processed + dropped == formed``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self._busy = False
        self.formed = 0
        self.processed = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Offer an item; returns True when it replaced (dropped) a waiting one."""
        with self._cond:
            self.formed += 1
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (None on timeout or when closed); the caller then calls ``done``."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._busy = item is not None
            return item

    def done(self, processed: bool = True) -> None:
        """Account for the item last taken: processed, or dropped (it failed)."""
        with self._cond:
            if processed:
                self.processed += 1
            else:
                self.dropped += 1
            self._busy = False
            self._cond.notify_all()

    def discard_pending(self) -> int:
        """Drop the waiting item (deactivation); returns how many were dropped."""
        with self._cond:
            if self._item is None:
                return 0
            self._item = None
            self.dropped += 1
            return 1

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing waits and the worker holds nothing; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._item is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False


class RejectionLog:
    """Counts rejected inputs and rate-limits their log lines per reason kind.

    ``record`` returns the line to log now (or None while the same kind was logged less than
    ``interval_s`` ago); a line says how many of its kind were suppressed meanwhile.
    """

    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.total = 0
        self.last_reason = ""
        #: modality -> (clock time, reason) of its last rejected frame.
        self.last_by_modality: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @staticmethod
    def kind(reason: str) -> str:
        # "thermal: data length 10 != ..." -> "thermal: data length": numbers vary, the problem doesn't.
        return re.split(r"[\d'\"(]", reason, maxsplit=1)[0].strip()

    def recent(self, modality: str, within_s: float) -> str | None:
        """The reason of ``modality``'s last rejected frame when it was less than ``within_s`` ago."""
        with self._lock:
            entry = self.last_by_modality.get(modality)
            now = self.clock()
        return entry[1] if entry is not None and now - entry[0] <= within_s else None

    def record(self, reason: str) -> str | None:
        with self._lock:
            self.total += 1
            self.last_reason = reason
            kind = self.kind(reason)
            now = self.clock()
            modality = reason.split(":", 1)[0]
            if modality in MODALITIES:
                self.last_by_modality[modality] = (now, reason)
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last_logged[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        suffix = f" ({suppressed} more like it since the last report)" if suppressed else ""
        return f"input rejected: {reason}{suffix}"


class RollingWindow:
    """Recent (time, value) samples: percentiles of values, rate of samples."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 1000) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, value: float, now: float | None = None) -> None:
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, float(value)))

    def _recent(self, now: float | None) -> list[tuple[float, float]]:
        now = time.monotonic() if now is None else now
        with self._lock:
            return [(t, v) for t, v in self._samples if now - t <= self.window_s]

    def percentile(self, q: float, now: float | None = None) -> float:
        values = [v for _, v in self._recent(now)]
        return float(np.percentile(values, q)) if values else 0.0

    def rate(self, now: float | None = None) -> float:
        """Samples per second over the window (0 with fewer than two samples)."""
        recent = self._recent(now)
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def last(self) -> float | None:
        with self._lock:
            return self._samples[-1][1] if self._samples else None


class ModalityMonitor:
    """Tracks when each camera was last heard of; a camera silent for its silence limit is not ok.

    The limit is ``timeout_s``, or :data:`SLOW_CAMERA_INTERVALS` of the camera's own frame
    interval (median of the recent ones) when that is longer: one lost frame of a slow camera
    never counts as silence. Cameras start with a grace period: the clock starts at ``start``
    (activation), so a camera that never publishes is declared silent like one that stops.
    """

    #: Frame intervals without a frame after which even a slow camera counts as silent.
    SLOW_CAMERA_INTERVALS = 2.5

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._intervals: dict[str, deque[float]] = {m: deque(maxlen=15) for m in MODALITIES}
        self.start()

    def start(self) -> None:
        now = self.clock()
        with self._lock:
            self._last_seen = {m: now for m in MODALITIES}
            self._last_frame: dict[str, float | None] = {m: None for m in MODALITIES}
            self._reported_ok = {m: True for m in MODALITIES}

    def seen(self, modality: str) -> None:
        with self._lock:
            now = self.clock()
            last = self._last_frame[modality]
            if last is not None:
                self._intervals[modality].append(now - last)
            self._last_frame[modality] = now
            self._last_seen[modality] = now

    def silence_limit(self, modality: str) -> float:
        """Seconds without a frame after which ``modality`` counts as silent."""
        with self._lock:
            intervals = sorted(self._intervals[modality])
        if len(intervals) < 3:
            return self.timeout_s
        return max(self.timeout_s, self.SLOW_CAMERA_INTERVALS * intervals[len(intervals) // 2])

    def ok(self, modality: str) -> bool:
        limit = self.silence_limit(modality)
        with self._lock:
            return self.clock() - self._last_seen[modality] <= limit

    def transitions(self) -> list[str]:
        """Messages for state changes since the last call (each change is reported once)."""
        messages = []
        for modality in MODALITIES:
            ok = self.ok(modality)
            if ok == self._reported_ok[modality]:
                continue
            self._reported_ok[modality] = ok
            other = "thermal" if modality == "rgb" else "rgb"
            other_ok = self.ok(other)
            if ok:
                plan = f"fusing {other} and {modality} again" if other_ok else f"publishing from {modality} alone"
                messages.append(f"{modality} camera is back: {plan}")
            else:
                plan = f"publishing from {other} alone" if other_ok else "no camera input"
                messages.append(f"{modality} camera silent for more than {self.silence_limit(modality):.3g} s: {plan}")
        return messages
