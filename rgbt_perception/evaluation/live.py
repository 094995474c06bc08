"""The ROS part of ``rgbt-eval-bag --live``: play a bag through the real ``rgbt_node``.

This process publishes the bag's ``rgb/image`` and ``thermal/image`` messages (the recorded
CDR bytes, unchanged) at the recorded pace, while ``rgbt_node`` runs as a separate process
with the weights under test. The node's ``semantic``, ``detections`` and ``status`` messages
are written, as they arrive, into ``DIR/node_outputs`` (rosbag2, log time = receipt time);
after the node has drained, that bag is read back and scored by RGB stamp.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgbt_perception.core import topics
from rgbt_perception.core.defaults import MAP_SCORE_THRESHOLD, SYNC_QUEUE_SIZE, SYNC_SLOP
from rgbt_perception.evaluation.ground_truth import GroundTruth, thing_ids_for
from rgbt_perception.evaluation.node_process import NodeProcess, NodeProcessError, find_node_executable
from rgbt_perception.evaluation.offline import ReplayFault, expected_frames, open_bag, rig_homography
from rgbt_perception.evaluation.report import BoxSet, ReplayReport
from rgbt_perception.io.bag import (
    DETECTIONS_TYPE,
    IMAGE_TYPE,
    LABEL_BOXES_TOPIC,
    LABEL_TOPIC,
    RGB_TOPIC,
    STATUS_TYPE,
    THERMAL_TOPIC,
    BagError,
    BagReader,
    BagWriter,
    BoxesFrame,
    typestore,
)

OUTPUT_TOPICS = {topics.SEMANTIC: IMAGE_TYPE, topics.DETECTIONS: DETECTIONS_TYPE, topics.STATUS: STATUS_TYPE}
OUTPUTS_BAG = "node_outputs"
NODE_LOG = "node.log"
STATUS_PERIOD = 0.25


class OutputRecorder:
    """Subscribes to the node's outputs and writes each message, as received, into a bag."""

    def __init__(self, node: Any, bag: BagWriter, qos: Any) -> None:
        self.bag = bag
        self.lock = threading.Lock()
        self.counts = {topic: 0 for topic in OUTPUT_TOPICS}
        self.last_status: Any = None
        self.subscriptions = []
        msg_classes = _message_classes()
        for topic, msgtype in OUTPUT_TOPICS.items():
            self.subscriptions.append(node.create_subscription(
                msg_classes[topic], topic, lambda raw, t=topic, m=msgtype: self._on_message(t, m, raw),
                qos, raw=True))

    def _on_message(self, topic: str, msgtype: str, raw: bytes) -> None:
        received = time.time_ns()
        with self.lock:
            self.bag.write_raw(topic, msgtype, raw, received)
            self.counts[topic] += 1
            if topic == "status":
                self.last_status = typestore().deserialize_cdr(raw, msgtype)

    def snapshot(self) -> tuple[dict[str, int], Any]:
        with self.lock:
            return dict(self.counts), self.last_status


def _message_classes() -> dict[str, Any]:
    from rgbt_msgs.msg import Detection2DArray, PerceptionStatus
    from sensor_msgs.msg import Image

    return {"semantic": Image, "detections": Detection2DArray, "status": PerceptionStatus}


def _node_drained(counts: dict[str, int], status: Any) -> bool:
    if status is None:
        return False
    settled = int(status.frames_processed) + int(status.pairs_dropped) == int(status.pairs_formed)
    return settled and counts["semantic"] >= int(status.frames_processed)


@dataclass
class LiveReplayOptions:
    """How ``evaluate_live`` plays the bag and configures the node under test.

    ``backend``: the node's inference backend parameter (torch, onnxruntime, tensorrt, auto).
    ``limit``: stop once the replay's own synchroniser has formed this many pairs.
    ``thermal_to_rgb`` (9 numbers) overrides the homography recorded in the bag.
    ``timeout``: seconds to wait for the node to come up and, later, to drain.
    """

    rate: float = 1.0
    device: str = "auto"
    backend: str = "torch"
    limit: int | None = None
    queue_size: int = SYNC_QUEUE_SIZE
    slop: float = SYNC_SLOP
    score_threshold: float = MAP_SCORE_THRESHOLD
    thermal_to_rgb: Sequence[float] | None = None
    timeout: float = 120.0
    progress: Callable[..., Any] | None = None


class PlayerGraph:
    """This process's side of the graph: the camera publishers and the recorder of the node's outputs."""

    def __init__(self, outputs_path: Path) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("rgbt_bag_player", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        image_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {RGB_TOPIC: self.node.create_publisher(Image, RGB_TOPIC, image_qos),
                           THERMAL_TOPIC: self.node.create_publisher(Image, THERMAL_TOPIC, image_qos)}
        self.outputs = BagWriter(outputs_path, storage="mcap", version=9).open()
        # Reliable, like the node's outputs: every mask the node publishes is scored.
        self.recorder = OutputRecorder(self.node, self.outputs,
                                       QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.spinner.start()

    def node_is_listening(self) -> bool:
        """The node subscribes to both cameras and has published a status message."""
        return (all(p.get_subscription_count() > 0 for p in self.publishers.values())
                and self.recorder.snapshot()[1] is not None)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)
        self.spinner.join(timeout=5.0)
        self.outputs.close()


def evaluate_live(bag_path: str, weights: str, report: ReplayReport,
                  options: LiveReplayOptions | None = None) -> None:
    """Play the bag into the graph through the real node and score its recorded outputs.

    Raises ``BagError`` / ``ReplayFault`` after scoring whatever the node answered before the fault.
    """
    options = options or LiveReplayOptions()
    out_dir = Path(report.out_dir)
    outputs_path = out_dir / OUTPUTS_BAG
    if outputs_path.exists():
        shutil.rmtree(outputs_path)
    reader, homography = _open_replay(bag_path, options.thermal_to_rgb)
    graph = PlayerGraph(outputs_path)
    node_process = NodeProcess(node_parameters(weights, options, homography), out_dir / NODE_LOG)
    report.spread_overlays(expected_frames(reader))
    published_at: dict[int, int] = {}  # RGB stamp -> wall time it was published, ns
    started = False
    fault: Exception | None = None
    try:
        node_process.start()
        started = True
        node_process.wait_until(graph.node_is_listening, options.timeout,
                                "subscribed to both cameras and publishing status")
        _play(reader, graph, node_process, report, options, published_at)
    except NodeProcessError as exc:
        fault = ReplayFault(str(exc))
    except (BagError, ReplayFault) as exc:
        fault = exc
    try:
        # After a fault the node still gets to answer what it was sent, if it is alive.
        if started and published_at and (fault is None or node_process.running):
            _wait_until_drained(node_process, graph.recorder, options.timeout)
    except (ReplayFault, NodeProcessError) as exc:
        fault = fault or ReplayFault(str(exc))
    finally:
        node_process.stop()
        graph.close()
        reader.close()

    try:
        _score_outputs(outputs_path, bag_path, report, published_at)
    except BagError as exc:
        fault = fault or exc  # the replay's own fault is the one to report
    _record_node_status(report, *graph.recorder.snapshot())
    if fault is not None:
        raise fault


def _open_replay(bag_path: str, thermal_to_rgb: Sequence[float] | None) -> tuple[BagReader, Any]:
    """The input bag, open, and the homography to give the node; the node executable must exist."""
    reader = open_bag(bag_path)
    try:
        homography = rig_homography(reader, thermal_to_rgb)
        find_node_executable()
    except NodeProcessError as exc:
        reader.close()
        raise ReplayFault(str(exc)) from None
    except (BagError, ReplayFault):
        reader.close()
        raise
    return reader, homography


def node_parameters(weights: str, options: LiveReplayOptions, homography: Any) -> dict[str, Any]:
    """The ROS parameters of the node under test."""
    parameters: dict[str, Any] = {
        "weights": os.path.abspath(weights), "device": options.device, "sync.slop": float(options.slop),
        "sync.queue_size": int(options.queue_size), "score_threshold": float(options.score_threshold),
        "status_period": STATUS_PERIOD, "backend": options.backend,
    }
    if homography is not None:
        parameters["thermal_to_rgb"] = [float(v) for v in homography.reshape(-1)]
    return parameters


def _play(reader: BagReader, graph: PlayerGraph, node_process: NodeProcess, report: ReplayReport,
          options: LiveReplayOptions, published_at: dict[int, int]) -> None:
    """Publish the camera messages at the recorded pace (scaled by ``rate``) until the end or the limit.

    A local synchroniser with the node's settings sees the same messages, so the report has the
    stamp skew of every pair the node can form, and ``limit`` counts pairs, not messages.
    """
    from rgbt_perception.core.sync import ApproximateTimeSynchronizer, SimpleFilter

    rgb_input, thermal_input = SimpleFilter(), SimpleFilter()
    local_sync = ApproximateTimeSynchronizer([rgb_input, thermal_input], options.queue_size, options.slop)
    local_pairs = [0]

    def on_pair(rgb: Any, thermal: Any) -> None:
        report.add_skew(rgb.stamp_ns, thermal.stamp_ns)
        local_pairs[0] += 1

    local_sync.registerCallback(on_pair)
    inputs = {RGB_TOPIC: rgb_input, THERMAL_TOPIC: thermal_input}
    camera_topics = [RGB_TOPIC, THERMAL_TOPIC]
    bar = None
    if options.progress:
        bar = options.progress(total=sum(reader.count(t) for t in camera_topics), desc="live replay", unit="msg")
    start_wall, start_log = None, None
    try:
        for frame in reader.frames(camera_topics, keep_raw=True):
            if bar is not None:
                bar.update(1)
            node_process.check_alive("during the replay")
            if options.limit is not None and local_pairs[0] >= options.limit:
                break
            if start_wall is None:
                start_wall, start_log = time.monotonic(), frame.log_time_ns
            delay = (frame.log_time_ns - start_log) / 1e9 / options.rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if frame.topic == RGB_TOPIC:
                published_at[frame.stamp_ns] = time.time_ns()
            graph.publishers[frame.topic].publish(frame.raw)
            inputs[frame.topic].signalMessage(frame)
    finally:
        if bar is not None:
            bar.close()


def _record_node_status(report: ReplayReport, counts: dict[str, int], status: Any) -> None:
    """The node's own counters (its last status message) and what was received, into the report."""
    if status is not None:
        report.counters.pairs_formed = int(status.pairs_formed)
        report.counters.frames_dropped = int(status.pairs_dropped)
    report.extra["node"] = {
        "frames_processed": None if status is None else int(status.frames_processed),
        "inputs_rejected": None if status is None else int(status.inputs_rejected),
        "device": None if status is None else str(status.device),
        "outputs_received": counts,
        "node_log": NODE_LOG,
        "outputs_bag": OUTPUTS_BAG,
    }


def _wait_until_drained(node_process: NodeProcess, recorder: OutputRecorder, timeout: float) -> None:
    """Until the node's counters add up and every processed frame's mask has arrived."""
    deadline = time.monotonic() + timeout
    seen_status = None
    while time.monotonic() < deadline:
        counts, status = recorder.snapshot()
        # Two status messages after the last input: the second reflects an idle worker.
        if _node_drained(counts, status) and seen_status is not None and status is not seen_status:
            return
        if _node_drained(counts, status) and seen_status is None:
            seen_status = status
        node_process.check_alive("before it drained")
        time.sleep(STATUS_PERIOD / 2)
    counts, status = recorder.snapshot()
    raise ReplayFault(
        f"rgbt_node did not drain within {timeout:.0f} s (status: "
        + ("none" if status is None else f"{status.pairs_formed} pairs, {status.frames_processed} processed, "
           f"{status.pairs_dropped} dropped") + f"; {counts['semantic']} masks received)")


def _score_outputs(outputs_path: Path, bag_path: str, report: ReplayReport, published_at: dict[int, int]) -> None:
    """Score the recorded outputs by RGB stamp in a second pass over the input bag.

    The input bag supplies the RGB frame (for overlays), its label and boxes; only the node's
    small outputs are held in memory.
    """
    masks: dict[int, Any] = {}
    detections: dict[int, BoxSet] = {}
    with BagReader(outputs_path) as recorded:
        for item in recorded.frames(["semantic", "detections"]):
            if isinstance(item, BoxesFrame):
                detections[item.stamp_ns] = BoxSet(item.boxes, item.labels, item.scores)
            elif item.stamp_ns in published_at:  # outputs of frames this replay published
                masks[item.stamp_ns] = item
    truth = GroundTruth({}, {}, thing_ids_for(list(report.class_names)))
    pending: list[Any] = []  # RGB frames with an output, waiting for their label (recorded right after)

    def score(rgb: Any) -> None:
        mask = masks.pop(rgb.stamp_ns)
        label, boxes = truth.take(rgb.stamp_ns)
        predictions = detections.get(rgb.stamp_ns, BoxSet.from_detections([]))
        latency = (mask.log_time_ns - published_at[rgb.stamp_ns]) / 1e6
        try:
            report.add_frame(rgb.image, mask.image, predictions, label, boxes, latency_ms=latency)
        except ValueError as exc:
            raise BagError(f"label at RGB stamp {rgb.stamp_ns} ns: {exc}") from None

    with BagReader(bag_path) as reader:
        try:
            for frame in reader.frames([RGB_TOPIC, LABEL_TOPIC, LABEL_BOXES_TOPIC]):
                if isinstance(frame, BoxesFrame):
                    truth.boxes[frame.stamp_ns] = BoxSet(frame.boxes, frame.labels)
                    continue
                if frame.topic == LABEL_TOPIC:
                    truth.labels[frame.stamp_ns] = frame.image
                    continue
                for rgb in pending:
                    score(rgb)
                pending = [frame] if frame.stamp_ns in masks else []
                truth.forget_before(frame.stamp_ns)
                if not masks:
                    break
        finally:
            for rgb in pending:
                score(rgb)
