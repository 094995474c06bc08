"""The perception node: synchronised RGB + thermal in; masks, boxes and health out.

A managed (lifecycle) node. Configure loads the weights, activate subscribes and starts the
inference worker, deactivate stops it and frees accelerator memory, cleanup drops the engine.
With ``autostart`` (default) it configures and activates itself, so it also runs as a plain
node. The ROS side stays thin: decisions live in :mod:`rgbt_perception.node.logic`.

Topics (relative, so namespaces and remappings apply):
  in:  rgb/image (or rgb/image/compressed), thermal/image (or thermal/image/compressed)
  out: semantic, semantic/color, detections, detections/vision (when vision_msgs imports),
       status, classes (transient local), /diagnostics
Outputs are in the RGB camera's pixels once an RGB frame was seen, thermal-only ones included.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rgbt_msgs.msg import ClassList, Detection2DArray, PerceptionStatus
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rgbt_perception.calibration.alignment import WARN, AlignmentMonitor, AlignmentSettings
from rgbt_perception.core import sync, topics
from rgbt_perception.core.image_codec import BRIDGE_IMPLEMENTATION, array_to_image
from rgbt_perception.node import graph, messages
from rgbt_perception.node.health import NodeHealth
from rgbt_perception.node.logic import NewestOnlyQueue, WorkItem
from rgbt_perception.node.messages import VisionDetection2DArray
from rgbt_perception.node.parameters import IDENTITY_HOMOGRAPHY, PARAMETERS, check_parameter, resolve_weights
from rgbt_perception.node.pipeline import FramePipeline
from rgbt_perception.node.shutdown import GUARD
from rgbt_perception.node.worker import InferenceWorker

RGB_TOPIC = topics.RGB_IMAGE
RGB_COMPRESSED_TOPIC = topics.RGB_COMPRESSED
THERMAL_TOPIC = topics.THERMAL_IMAGE
THERMAL_COMPRESSED_TOPIC = topics.THERMAL_COMPRESSED
OUTPUT_TOPICS = topics.OUTPUTS
#: Longest wait of the spin loop before it looks at the signal guard again, seconds.
SPIN_SLICE_S = 0.1


def _logged_transition(callback: Callable[..., TransitionCallbackReturn]) -> Callable[..., TransitionCallbackReturn]:
    """rclpy turns an exception in a transition into a silent ERROR: log what happened first."""

    @functools.wraps(callback)
    def wrapper(self: "PerceptionNode", state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return callback(self, state)
        except Exception as exc:
            if _interrupted(self):
                # The context went down under the transition (Ctrl-C, SIGTERM): stop quietly, since
                # logging now would only add rosout errors.
                raise KeyboardInterrupt from None
            self.get_logger().error(f"{callback.__name__[3:]} failed: {type(exc).__name__}: {exc}")
            raise

    return wrapper


class PerceptionNode(LifecycleNode):
    """RGB-thermal semantic segmentation and detection as a lifecycle node."""

    def __init__(self, node_name: str = "rgbt_perception", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, graph.parameter_descriptor(spec))
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._engine = None
        self._engine_lock = threading.Lock()
        self._outputs: dict[str, Any] = {}
        self._status_timer = None
        self._inputs: list[Any] = []
        self._clock_jumps = None
        self._queue: NewestOnlyQueue[WorkItem] = NewestOnlyQueue()
        self._health = NodeHealth(self._queue)
        self._pipeline = FramePipeline(self._queue, self._health, self.get_logger(),
                                       self.get_parameter("modality_timeout").value)
        self._worker = InferenceWorker(self._queue, self._health, self._current_engine, self._publish_result,
                                       self._log, self._want_overlay, self._on_worker_gave_up,
                                       self.get_parameter("fault.max_consecutive").value)
        self._active = False

        self.get_logger().info(
            f"pairing: {sync.SYNC_IMPLEMENTATION}; image conversion: {BRIDGE_IMPLEMENTATION}; "
            f"vision_msgs: {'yes' if VisionDetection2DArray is not None else 'not installed'}"
        )

    # ----------------------------------------------------------------------------------------
    # Parameters

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            reason = check_parameter(parameter.name, parameter.value)
            if reason is not None:
                self.get_logger().warning(f"parameter refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name == "sync.slop" and self._pipeline.pairing is not None:
                self._pipeline.pairing.set_slop(parameter.value)
            elif parameter.name == "modality_timeout":
                self._pipeline.monitor.timeout_s = parameter.value
            elif parameter.name == "fault.max_consecutive":
                self._worker.max_consecutive_failures = parameter.value

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _thermal_to_rgb(self) -> np.ndarray | None:
        """The ``thermal_to_rgb`` parameter as a 3x3 matrix; None for the identity (same field of view)."""
        homography = [float(v) for v in self._param("thermal_to_rgb")]
        return None if tuple(homography) == IDENTITY_HOMOGRAPHY else np.reshape(homography, (3, 3))

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        for spec in PARAMETERS:
            reason = check_parameter(spec.name, self._param(spec.name))
            if reason is not None:
                self.get_logger().error(f"configure failed: {reason}")
                return TransitionCallbackReturn.FAILURE
        if not self._load_engine():
            return TransitionCallbackReturn.FAILURE
        self._create_publishers()
        self._publish_classes()
        self._status_timer = self.create_timer(self._param("status_period"), self._publish_status)
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._engine is None and not self._load_engine():
            return TransitionCallbackReturn.FAILURE
        self._pipeline.start(self._param("sync.queue_size"), self._param("sync.slop"), self._param("modality_timeout"))
        if self._clock_jumps is None:
            # Under use_sim_time a looped bag rewinds /clock: restart the pairing at once.
            self._clock_jumps = self.get_clock().create_jump_callback(
                JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1.0), on_clock_change=False),
                post_callback=self._on_clock_jump)
        self._start_alignment_monitor()
        self._subscribe()
        self._worker.start()
        self._active = True
        super().on_activate(state)  # enables the lifecycle publishers
        self.get_logger().info(
            f"active: {self._inputs[0].sub.topic_name} + {self._inputs[1].sub.topic_name} -> semantic, detections"
        )
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release_engine()
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _release_engine(self) -> None:
        """Free accelerator memory; the next activation loads the weights again."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.release()
                self._engine = None

    def _teardown(self) -> None:
        self._stop_processing()
        self._release_engine()
        if self._status_timer is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}

    def close(self) -> None:
        """Stop the worker, free the engine, destroy the node. Works in any state, also after a signal
        interrupted a transition half-way or shut the context down."""
        try:
            self._teardown()
            if self._clock_jumps is not None:
                self._clock_jumps.unregister()
                self._clock_jumps = None
        except Exception:
            if not _interrupted(self):
                raise
        self.destroy_node()

    def _load_engine(self, device: str | None = None) -> bool:
        path = resolve_weights(self._param("weights"))
        if not path.is_file():  # say so before spending seconds on importing torch
            self.get_logger().error(f"configure failed: weights file {str(path)!r} not found")
            return False
        from rgbt_perception.backends.base import DecodeSettings
        from rgbt_perception.backends.factory import create_engine

        try:
            engine = create_engine(
                str(path), device=device or self._param("device"), precision=self._param("precision"),
                backend=self._param("backend"),
                decode=DecodeSettings(score_threshold=self._param("score_threshold"), nms_iou=self._param("nms_iou")),
                thermal_to_rgb=self._thermal_to_rgb())
        except (ValueError, RuntimeError, OSError) as exc:  # WeightsError and BackendError are ValueErrors
            where = "" if str(path) in str(exc) else f" (weights {str(path)!r})"
            self.get_logger().error(f"configure failed: {exc}{where}")
            return False
        with self._engine_lock:
            self._engine = engine
        if not self.context.ok():  # a signal shut the context down while the weights loaded: no rosout any more
            return True
        self.get_logger().info(
            f"loaded {path.name}: {len(engine.class_names)} classes, input {engine.input_size}, "
            f"device {engine.device}, precision {engine.precision}, backend {engine.backend}"
        )
        return True

    # ----------------------------------------------------------------------------------------
    # Publishers and subscriptions

    def _create_publishers(self) -> None:
        def events(topic: str) -> PublisherEventCallbacks:
            return PublisherEventCallbacks(incompatible_qos=lambda info: self._warn_offered_incompatible(topic))

        outputs = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # Results publish only while active (lifecycle publishers); health and the class list in every state.
        results = self.create_lifecycle_publisher
        plain = self.create_publisher
        self._outputs = {
            topics.SEMANTIC: results(Image, topics.SEMANTIC, outputs, event_callbacks=events(topics.SEMANTIC)),
            topics.SEMANTIC_COLOR: results(Image, topics.SEMANTIC_COLOR, outputs,
                                           event_callbacks=events(topics.SEMANTIC_COLOR)),
            topics.DETECTIONS: results(Detection2DArray, topics.DETECTIONS, outputs,
                                       event_callbacks=events(topics.DETECTIONS)),
            topics.STATUS: plain(PerceptionStatus, topics.STATUS, 10),
            topics.CLASSES: plain(ClassList, topics.CLASSES, latched, event_callbacks=events(topics.CLASSES)),
            topics.DIAGNOSTICS: plain(DiagnosticArray, topics.DIAGNOSTICS, 10),
        }
        if VisionDetection2DArray is not None:
            self._outputs[topics.DETECTIONS_VISION] = results(VisionDetection2DArray, topics.DETECTIONS_VISION,
                                                              outputs)

    def _publish_classes(self) -> None:
        msg = messages.class_list_message(self._engine.class_names, self._engine.palette,
                                          self.get_clock().now().to_msg())
        self._outputs[topics.CLASSES].publish(msg)

    def _subscribe(self) -> None:
        qos = graph.image_qos(self._param("qos.reliability"), self._param("qos.depth"))
        rgb_compressed = self._param("rgb_transport") == "compressed"
        thermal_compressed = self._param("thermal_transport") == "compressed"
        inputs = [
            ("rgb", CompressedImage if rgb_compressed else Image,
             RGB_COMPRESSED_TOPIC if rgb_compressed else RGB_TOPIC),
            ("thermal", CompressedImage if thermal_compressed else Image,
             THERMAL_COMPRESSED_TOPIC if thermal_compressed else THERMAL_TOPIC),
        ]
        for index, (modality, msg_type, topic) in enumerate(inputs):
            holder: list[Any] = []
            events = SubscriptionEventCallbacks(
                incompatible_qos=lambda info, h=holder: self._warn_requested_incompatible(h[0], info))
            subscriber = sync.Subscriber(self, msg_type, topic, qos_profile=qos, event_callbacks=events)
            holder.append(subscriber)
            subscriber.registerCallback(self._on_image, modality, index)
            self._inputs.append(subscriber)

    def _unsubscribe(self) -> None:
        for subscriber in self._inputs:
            self.destroy_subscription(subscriber.sub)
        self._inputs = []

    def _warn_requested_incompatible(self, subscriber: Any, info: Any, attempt: int = 0) -> None:
        topic = subscriber.sub.topic_name
        publishers = self.get_publishers_info_by_topic(topic)
        if attempt < 5 and graph.names_pending(publishers):
            self._later(0.4, lambda: self._warn_requested_incompatible(subscriber, info, attempt + 1))
            return
        self.get_logger().warning(
            graph.requested_incompatible_text(topic, subscriber.sub.qos_profile, publishers, info))

    def _later(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` once after ``seconds`` on the executor."""
        holder: list[Any] = []

        def fire() -> None:
            self.destroy_timer(holder[0])
            callback()

        holder.append(self.create_timer(seconds, fire))

    def _warn_offered_incompatible(self, topic: str) -> None:
        publisher = self._outputs.get(topic)
        if publisher is None:
            return
        self.get_logger().warning(graph.offered_incompatible_text(
            publisher.topic_name, publisher.qos_profile, self.get_subscriptions_info_by_topic(publisher.topic_name)))

    # ----------------------------------------------------------------------------------------
    # Input path (executor thread)

    def _on_image(self, msg: Any, modality: str, index: int) -> None:
        if self._active:
            self._pipeline.offer(modality, msg)

    def _start_alignment_monitor(self) -> None:
        if not self._param("alignment.check"):
            return
        alignment = AlignmentMonitor(
            self._thermal_to_rgb(),
            AlignmentSettings(every_n=self._param("alignment.every_n"), threshold=self._param("alignment.threshold"),
                              warn_after_s=self._param("alignment.warn_after")))
        alignment.start()
        self._pipeline.alignment = alignment

    def _on_clock_jump(self, jump: TimeJump) -> None:
        if self._pipeline.pairing is not None and self._active and jump.delta.nanoseconds < 0:
            self._pipeline.pairing.reset()

    # ----------------------------------------------------------------------------------------
    # Worker thread

    def _stop_processing(self) -> None:
        self._active = False
        self._unsubscribe()
        if self._pipeline.alignment is not None:
            self._pipeline.alignment.stop()
            self._pipeline.alignment = None
        self._worker.stop()  # returns once the frame in hand is published: nothing goes out after this
        self._queue.discard_pending()

    def _current_engine(self) -> tuple[Any, threading.Lock]:
        return self._engine, self._engine_lock

    def _want_overlay(self) -> bool:
        color = self._outputs.get(topics.SEMANTIC_COLOR)
        return bool(self._param("publish_color")) and color is not None and color.get_subscription_count() > 0

    def _log(self, level: str, text: str) -> None:
        if self.context.ok():
            getattr(self.get_logger(), level)(text)

    def _publish_result(self, item: WorkItem, result: Any) -> bool:
        """Send one item's outputs (worker thread); False when the node is stopping."""
        if not self.context.ok() or not self._outputs:
            return False
        header = item.reference.header
        if item.output_frame_id:
            # Thermal alone on the RGB grid: the RGB camera's pixels at the thermal frame's time.
            header = Header(stamp=header.stamp, frame_id=item.output_frame_id)
        self._outputs[topics.SEMANTIC].publish(array_to_image(result.mask, "mono8", header))
        colored = result.overlay is not None and topics.SEMANTIC_COLOR in self._outputs
        if colored:
            self._outputs[topics.SEMANTIC_COLOR].publish(array_to_image(result.overlay, "rgb8", header))
        self._outputs[topics.DETECTIONS].publish(messages.detections_message(header, result.detections))
        if topics.DETECTIONS_VISION in self._outputs:
            self._outputs[topics.DETECTIONS_VISION].publish(
                messages.vision_detections_message(header, result.detections))
        self._health.output_published(item, time.time_ns(), color=colored)
        return True

    def _on_worker_gave_up(self, reason: str) -> None:
        """Too many engine faults in a row (worker thread): move to the CPU when allowed, else deactivate."""
        fallback = bool(self._param("fault.cpu_fallback")) and self._engine is not None and self._engine.device != "cpu"
        plan = "reloading the weights on the CPU" if fallback else "deactivating (activate again to retry)"
        self._log("error", f"giving up on the engine: {reason}; {plan}")
        self._later(0.0, self._fall_back_to_cpu if fallback else self.trigger_deactivate)

    def _fall_back_to_cpu(self) -> None:
        self._release_engine()
        if self._load_engine(device="cpu"):
            self._worker.start()
        else:
            self.trigger_deactivate()

    # ----------------------------------------------------------------------------------------
    # Health

    def counters(self) -> dict[str, int]:
        """pairs_formed, frames_processed, pairs_dropped, inputs_rejected (for status and tests)."""
        return self._health.counters()

    def _publish_status(self) -> None:
        self._pipeline.report_transitions()
        monitor = self._pipeline.monitor
        rgb_ok = self._active and monitor.ok("rgb")
        thermal_ok = self._active and monitor.ok("thermal")
        engine = self._engine
        device = engine.device if engine is not None else ""
        fields = self._health.status_fields(rgb_ok, thermal_ok, str(device))
        states = ({m: self._health.camera_state(m, ok, monitor.silence_limit(m))
                   for m, ok in (("rgb", rgb_ok), ("thermal", thermal_ok))} if self._active else None)
        size = self._pipeline.geometry.size
        self._health.output_geometry = f"rgb {size[0]}x{size[1]}" if size else "thermal (no RGB frame yet)"
        stamp = self.get_clock().now().to_msg()
        self._outputs[topics.STATUS].publish(
            messages.status_message(fields, stamp, self._pipeline.decoders["rgb"].frame_id or ""))
        level, message = self._health.pipeline_state(self._active, rgb_ok, thermal_ok, states)
        diagnostics = messages.diagnostics_message(
            f"{self.get_fully_qualified_name()}: pipeline", level, message, str(device),
            self._health.diagnostic_values(fields, states), stamp)
        alignment = self._pipeline.alignment
        if alignment is not None:
            for level, text in alignment.messages():
                (self.get_logger().warning if level == WARN else self.get_logger().info)(text)
            level, text = alignment.status()
            diagnostics.status.extend(messages.diagnostics_message(
                f"{self.get_fully_qualified_name()}: registration", level, text, str(device),
                alignment.diagnostics(), stamp).status)
        self._outputs[topics.DIAGNOSTICS].publish(diagnostics)


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C, SIGTERM or a shutdown request (``rgbt_node``; see :mod:`rgbt_perception.cli.node`).

    Returns 0 after a signal at any moment (start-up included), 1 when start-up fails. The signals
    are this process's (:data:`~rgbt_perception.node.shutdown.GUARD`), not rclpy's: a signal while
    frames flow ends the spin loop, the node stops its worker and destroys its publishers while
    the context is still valid, and only then does the context shut down.
    """
    GUARD.install()
    node = None
    code = 0
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = PerceptionNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("configure failed (see the error above)")
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("activate failed (see the error above)")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        GUARD.spinning()
        while not GUARD.requested and node.context.ok():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)  # the slice bounds how long a signal waits
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (InvalidParameterValueException, ParameterException, RuntimeError) as exc:
        # A failure caused by a signal (the context shut down mid-start-up) is a normal stop.
        if not _interrupted(node):
            print(f"rgbt_node: {exc}", file=sys.stderr)
            code = 1
    finally:
        GUARD.stopping()
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code


def _interrupted(node: PerceptionNode | None) -> bool:
    return GUARD.requested or (node is not None and not node.context.ok())


if __name__ == "__main__":
    sys.exit(main())
