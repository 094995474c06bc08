"""The node's health: every counter and rolling statistic in one object, without ROS.

The ROS layer feeds it (frames accepted, outputs published, failures) and reads it back as
the ``status`` message fields and the ``/diagnostics`` key/values. Counters add up:
``pairs_formed == frames_processed + pairs_dropped`` once the worker is idle.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from rgbt_perception.node.logic import MODALITIES, NewestOnlyQueue, RejectionLog, RollingWindow, WorkItem

#: Diagnostic levels as diagnostic_msgs/DiagnosticStatus numbers them.
OK, WARN, ERROR = 0, 1, 2
#: Seconds /diagnostics stays at ERROR after an engine fault.
FAULT_HOLD_S = 5.0


class NodeHealth:
    """Counters, latency windows and the pipeline state of one node.

    Args:
        queue: the hand-over to the worker; it owns ``formed``/``processed``/``dropped``.
    """

    def __init__(self, queue: NewestOnlyQueue[WorkItem]) -> None:
        self.queue = queue
        self.rejections = RejectionLog()
        self.latency_ms = RollingWindow(window_s=10.0)
        self.delay_ms = RollingWindow(window_s=10.0)
        self.processed_window = RollingWindow(window_s=5.0)
        self.last_skew_ms = 0.0
        self.failed_inferences = 0
        self.non_finite_outputs = 0
        #: (monotonic time, exception type name) of the last engine fault.
        self.last_fault: tuple[float, str] | None = None
        self.fused_frames = 0
        self.single_camera_frames = 0
        self.color_frames = 0
        self.accepted = {m: 0 for m in MODALITIES}
        self.sync_recoveries = 0
        #: Where outputs are published: "rgb HxW" once the RGB geometry is known, else "thermal".
        self.output_geometry = "thermal (no RGB frame yet)"
        self._lock = threading.Lock()

    # -- updates ------------------------------------------------------------------------------
    def frame_accepted(self, modality: str) -> None:
        with self._lock:
            self.accepted[modality] += 1

    def inference_failed(self, kind: str = "error", non_finite: bool = False) -> None:
        """The engine faulted on one frame (``kind``: the exception's type name; ``non_finite``: its
        outputs were NaN or infinite)."""
        with self._lock:
            self.failed_inferences += 1
            if non_finite:
                self.non_finite_outputs += 1
            self.last_fault = (time.monotonic(), kind)

    def recent_fault(self, within_s: float = FAULT_HOLD_S) -> str | None:
        """The kind of the last engine fault when it was less than ``within_s`` ago."""
        with self._lock:
            fault = self.last_fault
        return fault[1] if fault is not None and time.monotonic() - fault[0] <= within_s else None

    def output_published(self, item: WorkItem, now_ns: int, color: bool) -> None:
        """One work item's outputs went out at ``now_ns`` (wall clock, ns)."""
        self.latency_ms.add((now_ns - item.last_arrival_ns) / 1e6)
        self.delay_ms.add((now_ns - item.reference.stamp_ns) / 1e6)
        self.processed_window.add(1.0)
        with self._lock:
            if color:
                self.color_frames += 1
            if item.skew_ms is not None:
                self.last_skew_ms = item.skew_ms
                self.fused_frames += 1
            else:
                self.single_camera_frames += 1

    # -- reading ------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """pairs_formed, frames_processed, pairs_dropped, inputs_rejected."""
        return {
            "pairs_formed": self.queue.formed,
            "frames_processed": self.queue.processed,
            "pairs_dropped": self.queue.dropped,
            "inputs_rejected": self.rejections.total,
        }

    def status_fields(self, rgb_ok: bool, thermal_ok: bool, device: str) -> dict[str, Any]:
        """The fields of an ``rgbt_msgs/PerceptionStatus`` (header aside)."""
        counts = self.counters()
        return {
            "rgb_ok": rgb_ok, "thermal_ok": thermal_ok, "fps": self.processed_window.rate(),
            "latency_ms_p50": self.latency_ms.percentile(50), "latency_ms_p95": self.latency_ms.percentile(95),
            "sync_skew_ms": self.last_skew_ms, "frames_processed": counts["frames_processed"],
            "pairs_dropped": counts["pairs_dropped"], "inputs_rejected": counts["inputs_rejected"],
            "device": device, "pairs_formed": counts["pairs_formed"], "last_rejection": self.rejections.last_reason,
        }

    def camera_state(self, modality: str, ok: bool, silence_limit: float) -> str:
        """``"ok"``, or why the camera is not: its frames are refused (the last reason), or it is silent."""
        if ok:
            return "ok"
        refused = self.rejections.recent(modality, within_s=max(5.0, silence_limit))
        if refused is not None:
            return f"frames refused: {refused}"
        return f"no frames for more than {silence_limit:.3g} s"

    def pipeline_state(self, active: bool, rgb_ok: bool, thermal_ok: bool,
                       states: dict[str, str] | None = None) -> tuple[int, str]:
        """``(level, message)`` of the pipeline's diagnostic status; ``states`` from :meth:`camera_state`.

        A camera whose frames are refused (it publishes, but nothing it sends is usable: a wrong
        encoding, a bad driver setting) is an ERROR even while the other camera carries on.
        """
        if not active:
            return WARN, "inactive"
        fault = self.recent_fault()
        if fault is not None:
            return ERROR, f"inference faults ({fault}; {self.failed_inferences} frames failed so far)"
        states = states or {}
        refused = [f"{m} {states[m]}" for m in MODALITIES if states.get(m, "").startswith("frames refused")]
        suffix = f" ({'; '.join(refused)})" if refused else ""
        if rgb_ok and thermal_ok:
            return OK, "fusing rgb and thermal"
        if rgb_ok or thermal_ok:
            return (ERROR if refused else WARN), f"degraded: {'rgb' if rgb_ok else 'thermal'} only{suffix}"
        return ERROR, f"no camera input{suffix}"

    def diagnostic_values(self, status: dict[str, Any], states: dict[str, str] | None = None) -> dict[str, str]:
        """``/diagnostics`` key/values for the status fields ``status`` (from :meth:`status_fields`) and
        the cameras' states (``rgb_state``/``thermal_state``: "ok" or why not)."""
        states = states or {}
        return {
            "frame_rate_hz": f"{status['fps']:.2f}",
            "delay_from_realtime_ms": f"{self.delay_ms.last() or 0.0:.1f}",
            "latency_ms_p50": f"{status['latency_ms_p50']:.1f}",
            "latency_ms_p95": f"{status['latency_ms_p95']:.1f}",
            "pairs_formed": str(status["pairs_formed"]),
            "frames_processed": str(status["frames_processed"]),
            "pairs_dropped": str(status["pairs_dropped"]),
            "inputs_rejected": str(status["inputs_rejected"]),
            "fused_frames": str(self.fused_frames),
            "single_camera_frames": str(self.single_camera_frames),
            "failed_inferences": str(self.failed_inferences),
            "non_finite_outputs": str(self.non_finite_outputs),
            "color_frames": str(self.color_frames),
            "rgb_frames_accepted": str(self.accepted["rgb"]),
            "thermal_frames_accepted": str(self.accepted["thermal"]),
            "sync_restarts": str(self.sync_recoveries),
            "rgb_ok": str(status["rgb_ok"]).lower(),
            "thermal_ok": str(status["thermal_ok"]).lower(),
            "rgb_state": states.get("rgb", "ok" if status["rgb_ok"] else "inactive"),
            "thermal_state": states.get("thermal", "ok" if status["thermal_ok"] else "inactive"),
            "output_geometry": self.output_geometry,
        }
