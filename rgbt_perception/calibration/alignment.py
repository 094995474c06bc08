"""Run-time check that the configured homography still registers thermal onto RGB.

:func:`alignment_score` maps the thermal edge points of a pair into a 320 px wide copy of the
RGB image and counts how many land on an RGB edge of the same orientation (within 1.5 px
there, about 3 px of a 640 px frame), at the configured homography and with the thermal
image shifted by 3, 6, 10 and 16 px (about 6, 12, 20 and 32 px of the frame) in eight
directions. In each image quadrant the score is how far the unshifted placement rises from
the nearest ring towards the best count, ``(n0 - median of that ring) / (max - that
median)``: 1 when the homography is right, near 0 when a shifted one fits better (a knocked
camera; zoom or roll errors shift the quadrants differently). Quadrants without edges in
both cameras (sky, a blank wall, a dark night frame) abstain, so a scene with little
structure does not look like a misregistration. It takes 30 to 50 ms of a loaded CPU core.

:class:`AlignmentMonitor` is what the node holds: ``offer`` every pair (cheap: it keeps a
reference to every N-th one); the kept pair is scored on the monitor's own thread (``start``,
``stop``; or by calling ``update`` from a timer), off the inference path and off the
executor; ``messages`` hands over state changes to log, ``status`` and ``diagnostics`` fill a
/diagnostics status. The smoothed score below ``threshold`` for ``warn_after_s`` raises one
warning; it clears once the score stays above ``threshold + hysteresis`` for
``recover_after_s``.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rgbt_perception.calibration import edges as ed
from rgbt_perception.calibration import features as ft

#: Levels as diagnostic_msgs/DiagnosticStatus numbers them.
OK, WARN = 0, 1


@dataclass
class AlignmentSample:
    """One scored pair: ``score`` in [0, 1] (None: too little structure to judge),
    ``offset_px`` (dx, dy, RGB px) of the shift that matched the most thermal edge points
    (0, 0 when the configured homography did), ``matched`` the fraction of thermal edge
    points on an RGB edge at the configured homography, ``quadrants`` how many quadrants
    had structure, ``seconds`` the time it took."""

    score: float | None
    offset_px: tuple[float, float]
    matched: float
    quadrants: int
    seconds: float


def alignment_score(rgb: np.ndarray, thermal: np.ndarray, homography: np.ndarray | Sequence[float] | None,
                    width: int = 320, rings_px: Sequence[float] = (3.0, 6.0, 10.0, 16.0), radius_px: float = 1.5,
                    min_contrast: float = 0.03, min_points: int = 50) -> AlignmentSample:
    """Score how well ``homography`` (thermal -> RGB; None = same field of view) registers a pair.

    Args:
        rgb: ``H, W, 3`` uint8 RGB (or ``H, W``).
        thermal: ``h, w`` uint8/uint16/float32 raw thermal.
        width: width (px) of the working copies; ``rings_px`` (the shifts tried, 8 directions
            each) and ``radius_px`` (match distance) are in its pixels.
        min_contrast: how much (fraction of a quadrant's points) the best placement must beat
            the median placement for the quadrant to count.
        min_points: thermal edge points a quadrant needs to count.
    """
    clock = time.perf_counter()
    rgb_size, thermal_size = rgb.shape[:2], thermal.shape[:2]
    rgb_small = ft.level_size(rgb_size, min(width, rgb_size[1]))
    thermal_small = ft.level_size(thermal_size, min(width, thermal_size[1]))
    full = ft.same_view_homography(thermal_size, rgb_size) if homography is None else \
        np.asarray(homography, np.float64).reshape(3, 3)
    level = ft.level_homography(full, ft.resize_matrix(thermal_size, thermal_small),
                                ft.resize_matrix(rgb_size, rgb_small))
    target = ed.EdgeTarget(ft.resize_to(ft.to_gray(rgb), rgb_small), 1.0)
    # Column stripes (fixed-pattern noise) would be thermal edges that no RGB edge matches.
    thermal_gray = ft.remove_column_offsets(ft.to_gray(thermal))
    source = ed.edge_points(ft.resize_to(thermal_gray, thermal_small), 1.0, max_points=4000)[0]
    if len(source.points) < min_points or target.count < min_points:
        return AlignmentSample(None, (0.0, 0.0), 0.0, 0, time.perf_counter() - clock)
    mapped = ft.project(level, source.points)
    quadrant = (mapped[:, 0] >= rgb_small[1] / 2.0).astype(np.int64) + 2 * (mapped[:, 1] >= rgb_small[0] / 2.0)
    shifts = [(0.0, 0.0)] + [(r * math.cos(a), r * math.sin(a)) for r in rings_px for a in np.arange(8) * math.pi / 4]
    # A shift moves the mapped points, not their normals: map both once.
    normals = ed.map_normals(level, source)
    cos_limit = math.cos(math.radians(ed.MAX_ANGLE_DEG))
    hits = []
    for dx, dy in shifts:
        moved = mapped + (dx, dy)
        near, normal, found = target.nearest(moved)
        offset = moved - near
        hits.append(found & (np.abs(np.sum(normals * normal, axis=1)) >= cos_limit)
                    & (np.einsum("ni,ni->n", offset, offset) <= radius_px ** 2))
    hits = np.stack(hits)
    scores = []
    for q in range(4):
        mine = quadrant == q
        if mine.sum() < min_points:
            continue
        counts = hits[:, mine].mean(axis=1)
        peak = float(counts.max())
        if peak - float(np.median(counts)) < min_contrast:
            continue
        # Reference: the nearest ring. Aligned, the count falls off around the configured
        # placement; off by more than the ring, some placement beats it.
        near = float(np.median(counts[1:9]))
        scores.append(1.0 if peak <= near else float(np.clip((counts[0] - near) / (peak - near), 0.0, 1.0)))
    best = int(np.argmax(hits.sum(axis=1)))
    factor = rgb_size[1] / float(rgb_small[1])
    offset = (round(shifts[best][0] * factor, 3), round(shifts[best][1] * factor, 3))
    return AlignmentSample(float(np.mean(scores)) if scores else None, offset, float(hits[0].mean()), len(scores),
                           time.perf_counter() - clock)


@dataclass(frozen=True)
class AlignmentSettings:
    """How :class:`AlignmentMonitor` samples, smooths and decides (see its arguments)."""

    every_n: int = 30
    threshold: float = 0.5
    warn_after_s: float = 10.0
    recover_after_s: float = 5.0
    hysteresis: float = 0.1
    smoothing: float = 0.3
    min_samples: int = 5
    width: int = 320

    def __post_init__(self) -> None:
        if self.every_n < 1:
            raise ValueError(f"every_n must be at least 1, got {self.every_n}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {self.smoothing}")


class AlignmentMonitor:
    """Smoothed alignment score with a warning state, fed from the node, no ROS inside.

    Args:
        homography: thermal -> RGB (None = same field of view); change it with
            :meth:`set_homography` when the parameter changes.
        settings: an :class:`AlignmentSettings`; its fields:
        every_n: keep one of every ``every_n`` offered pairs for scoring.
        threshold: smoothed score below which registration counts as off.
        warn_after_s: how long the score must stay below ``threshold`` (and at least
            ``min_samples`` scored pairs) before the warning is raised.
        recover_after_s: how long it must stay above ``threshold + hysteresis`` to clear.
        smoothing: weight of a new score in the exponential average.
        clock: seconds (monotonic), replaceable in tests.
    """

    def __init__(self, homography: np.ndarray | Sequence[float] | None = None,
                 settings: AlignmentSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        settings = settings or AlignmentSettings()
        self.every_n = int(settings.every_n)
        self.threshold = float(settings.threshold)
        self.warn_after_s = float(settings.warn_after_s)
        self.recover_after_s = float(settings.recover_after_s)
        self.hysteresis = float(settings.hysteresis)
        self.smoothing = float(settings.smoothing)
        self.min_samples = int(settings.min_samples)
        self.width = int(settings.width)
        self.clock = clock
        self._lock = threading.Lock()
        self._homography = None if homography is None else np.asarray(homography, np.float64).reshape(3, 3)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[int, str]] = []
        self.reset()

    def start(self) -> None:
        """Score kept pairs on a background thread from now on (instead of calling
        :meth:`update`); collect its state-change messages with :meth:`messages`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rgbt_alignment", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread (it finishes the pair it is scoring)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def messages(self) -> list[tuple[int, str]]:
        """``(level, text)`` state changes the background thread produced since the last call."""
        with self._lock:
            out, self._outbox = self._outbox, []
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                break
            produced = self.update()
            if produced:
                with self._lock:
                    self._outbox.extend(produced)

    def reset(self) -> None:
        """Forget scores and state (on activation, or after a new homography)."""
        with self._lock:
            self._pending: tuple[np.ndarray, np.ndarray] | None = None
            self._offered = 0
            self.smoothed: float | None = None
            self.last: AlignmentSample | None = None
            self.scored = 0
            self.without_structure = 0
            self.warning = False
            self.warnings_raised = 0
            self._below_since: float | None = None
            self._below_samples = 0
            self._above_since: float | None = None

    def set_homography(self, homography: np.ndarray | Sequence[float] | None) -> None:
        """Use a new homography from now on; the history no longer applies and is reset."""
        self._homography = None if homography is None else np.asarray(homography, np.float64).reshape(3, 3)
        self.reset()

    def offer(self, rgb: np.ndarray, thermal: np.ndarray) -> bool:
        """Hand over a registered-to-be pair (any thread; O(1)). Every ``every_n``-th is kept
        (by reference: the caller must not modify the arrays afterwards). True when kept."""
        with self._lock:
            self._offered += 1
            if (self._offered - 1) % self.every_n:
                return False
            self._pending = (rgb, thermal)
        self._wake.set()
        return True

    def update(self) -> list[tuple[int, str]]:
        """Score the kept pair, if any, and advance the state. Returns the state changes (each
        reported once) as ``(level, text)``: :data:`WARN` when raised (log a warning),
        :data:`OK` when cleared (log info)."""
        with self._lock:
            pending, self._pending = self._pending, None
            homography = self._homography
        if pending is None:
            return []
        sample = alignment_score(pending[0], pending[1], homography, width=self.width)
        return self.add_sample(sample)

    def add_sample(self, sample: AlignmentSample) -> list[tuple[int, str]]:
        """Advance the state with an already computed sample (what :meth:`update` does)."""
        now = self.clock()
        messages = []
        with self._lock:
            self.last = sample
            if sample.score is None:
                self.without_structure += 1
                return messages
            self.scored += 1
            self.smoothed = sample.score if self.smoothed is None else \
                (1 - self.smoothing) * self.smoothed + self.smoothing * sample.score
            if self.smoothed < self.threshold:
                self._above_since = None
                if self._below_since is None:
                    self._below_since, self._below_samples = now, 0
                self._below_samples += 1
                if (not self.warning and now - self._below_since >= self.warn_after_s
                        and self._below_samples >= self.min_samples):
                    self.warning = True
                    self.warnings_raised += 1
                    messages.append((WARN, f"thermal/RGB registration looks off: alignment score "
                                     f"{self.smoothed:.2f} below {self.threshold:.2f} for {now - self._below_since:.0f}"
                                     " s; a camera may have moved: run rgbt-calibrate and update thermal_to_rgb"))
            else:
                self._below_since = None
                if self.warning and self.smoothed >= self.threshold + self.hysteresis:
                    if self._above_since is None:
                        self._above_since = now
                    if now - self._above_since >= self.recover_after_s:
                        self.warning = False
                        self._above_since = None
                        messages.append((OK, f"thermal/RGB registration is fine again (alignment score "
                                             f"{self.smoothed:.2f})"))
                else:
                    self._above_since = None
        return messages

    @property
    def state(self) -> str:
        """``unknown`` (nothing scored yet), ``ok`` or ``warn``."""
        if self.warning:
            return "warn"
        return "unknown" if self.smoothed is None else "ok"

    def status(self) -> tuple[int, str]:
        """``(level, message)`` for a /diagnostics status of its own (:data:`OK` or :data:`WARN`)."""
        with self._lock:
            smoothed, warning = self.smoothed, self.warning
        if warning:
            return WARN, f"registration looks off: alignment score {smoothed:.2f} < {self.threshold:.2f}"
        if smoothed is None:
            return OK, "registration not scored yet (no pair with edges in both cameras so far)"
        return OK, f"registration ok: alignment score {smoothed:.2f}"

    def diagnostics(self) -> dict[str, str]:
        """Key/values for the node's /diagnostics status (strings, like KeyValue)."""
        with self._lock:  # update() may run on another thread
            last, smoothed = self.last, self.smoothed
            values = {
                "alignment_state": self.state,
                "alignment_score": "n/a" if smoothed is None else f"{smoothed:.3f}",
                "alignment_threshold": f"{self.threshold:.3f}",
                "alignment_last_score": "n/a" if last is None or last.score is None else f"{last.score:.3f}",
                "alignment_best_shift_px": "n/a" if last is None or last.score is None else
                f"{last.offset_px[0]:.1f},{last.offset_px[1]:.1f}",
                "alignment_pairs_scored": str(self.scored),
                "alignment_pairs_without_structure": str(self.without_structure),
                "alignment_warnings": str(self.warnings_raised),
                "alignment_ms": "n/a" if last is None else f"{1000.0 * last.seconds:.1f}",
            }
        return values
