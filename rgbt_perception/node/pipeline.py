"""A camera message's way to the worker, top to bottom: decode -> pair (or go alone) -> queue.

:class:`FramePipeline` is everything the node does with an input message on the executor thread,
without ROS: decoding (:class:`~rgbt_perception.node.logic.FrameDecoder`), the output grid,
camera-silence tracking (degraded mode: a frame goes alone when the other camera is silent),
pairing (:class:`~rgbt_perception.node.pairing.Pairing`), and the newest-only hand-over to the
inference worker. What it has to say goes to ``logger`` (an rclpy logger or anything with
``info``/``warning``/``error``); every refused message is counted in the node's health.
"""
from __future__ import annotations

from typing import Any

from rgbt_perception.core.defaults import CAMERAS
from rgbt_perception.node.health import NodeHealth
from rgbt_perception.node.logic import (
    FrameDecoder,
    InputRejected,
    ModalityMonitor,
    NewestOnlyQueue,
    OutputGeometry,
    UnsupportedEncoding,
    WorkItem,
)
from rgbt_perception.node.pairing import Pairing


class FramePipeline:
    """Input messages in, work items on ``queue`` out (see the module docstring).

    Args:
        queue: the hand-over to the worker.
        health: the node's counters.
        logger: where warnings and errors go.
        modality_timeout: seconds of silence after which a camera counts as gone.
    """

    def __init__(self, queue: NewestOnlyQueue[WorkItem], health: NodeHealth, logger: Any,
                 modality_timeout: float) -> None:
        self.queue = queue
        self.health = health
        self.logger = logger
        self.decoders = {camera: FrameDecoder(camera) for camera in CAMERAS}
        # Kept across activations: outputs stay on the RGB grid once it is known.
        self.geometry = OutputGeometry()
        self.monitor = ModalityMonitor(modality_timeout)
        self.pairing: Pairing | None = None
        self.alignment: Any = None  # an AlignmentMonitor offered every fused pair, when the node runs one
        self._refused_encodings: set[tuple[str, str]] = set()

    def start(self, queue_size: int, slop: float, modality_timeout: float) -> None:
        """Begin a new activation: fresh decoders, camera clocks and pairing queues."""
        for decoder in self.decoders.values():
            decoder.reset()
        self.monitor.timeout_s = modality_timeout
        self.monitor.start()
        self.pairing = Pairing(queue_size, slop, self._on_pair, on_recovery=self._on_sync_recovery,
                               on_jump=self._on_stamp_jump)
        self.queue.reopen()

    # -- the way of one message -----------------------------------------------------------------
    def offer(self, modality: str, msg: Any) -> None:
        """Decode ``msg`` of camera ``modality`` and pass it on (to the pairing, or alone to the queue)."""
        try:
            frame = self.decoders[modality].decode(msg)
        except UnsupportedEncoding as exc:
            self._refuse_encoding(exc)
            return
        except InputRejected as exc:
            self.reject(str(exc))
            return
        if modality == "rgb":
            self.geometry.observe_rgb(frame.image.shape[:2], frame.header.frame_id)
        self.health.frame_accepted(modality)
        self.monitor.seen(modality)
        self.report_transitions()
        other = "thermal" if modality == "rgb" else "rgb"
        if not self.monitor.ok(other):
            # Degraded: the other camera has been silent for its silence limit; infer on this frame alone.
            self.queue.put(self.geometry.work_item(frame, None) if modality == "rgb"
                           else self.geometry.work_item(None, frame))
            return
        self.pairing.add(CAMERAS.index(modality), frame)

    def _on_pair(self, rgb: Any, thermal: Any) -> None:
        self.queue.put(WorkItem(rgb, thermal))
        if self.alignment is not None:
            self.alignment.offer(rgb.image, thermal.image)  # keeps every N-th pair by reference; never blocks

    # -- reports --------------------------------------------------------------------------------------
    def reject(self, reason: str) -> None:
        line = self.health.rejections.record(reason)
        if line is not None:
            self.logger.warning(line)

    def _refuse_encoding(self, exc: UnsupportedEncoding) -> None:
        """A camera publishes an encoding the node cannot use: say so loudly, once per encoding."""
        self.health.rejections.record(str(exc))
        if exc.modality == "rgb" and exc.size is not None:
            self.geometry.observe_rgb(exc.size, exc.frame_id)  # its size still fixes where outputs go
        key = (exc.modality, exc.encoding)
        if key in self._refused_encodings:
            return
        self._refused_encodings.add(key)
        self.logger.error(
            f"{exc.modality} camera publishes encoding {exc.encoding!r}, which this input cannot use: every such "
            f"frame is dropped (counted in inputs_rejected). {exc}")

    def report_transitions(self) -> None:
        for message in self.monitor.transitions():
            self.logger.warning(message)

    def _on_stamp_jump(self, index: int, seconds: float) -> None:
        self.logger.warning(
            f"{CAMERAS[index]} stamps jumped back {seconds:.3g} s (a looped bag or a restarted driver?): no pairs "
            f"until the other camera's stamps follow")

    def _on_sync_recovery(self, event: Any) -> None:
        self.health.sync_recoveries += 1
        cause = "the clock jumped back" if event.reason == "reset" else "both cameras' stamps jumped back"
        self.logger.warning(
            f"{cause}: pairing restarted on the new timeline ({event.discarded} queued frame(s) of the old one "
            f"dropped)")
