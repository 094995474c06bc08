"""The installed rgbt_node over real DDS: a camera publisher process in, a listener out.

One node process serves the whole module (start-up costs a model load); each test checks
what changed while it ran.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from rgbt_perception.evaluation.node_process import signal_and_wait

rclpy = pytest.importorskip("rclpy")
rgbt_msgs = pytest.importorskip("rgbt_msgs.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers_path import HELPERS_DIR  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

pytestmark = pytest.mark.ros

NAMESPACE = "/rgbt_test"
NODE = f"{NAMESPACE}/rgbt_perception"
RGB_SIZE = (48, 64)
THERMAL_SIZE = (24, 32)


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


@dataclass
class Received:
    semantic: list = field(default_factory=list)
    color: list = field(default_factory=list)
    detections: list = field(default_factory=list)
    status: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, msg) -> None:
        with self.lock:
            getattr(self, name).append((time.time(), msg))

    def snapshot(self, name: str) -> list:
        with self.lock:
            return list(getattr(self, name))


class Graph:
    """The test's own node: listens to every output and calls the node's services."""

    def __init__(self) -> None:
        rclpy.init()
        self.node = rclpy.create_node("rgbt_test_listener")
        self.received = Received()
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        subscribe = self.node.create_subscription
        subscribe(Image, f"{NAMESPACE}/semantic", lambda m: self.received.add("semantic", m), reliable)
        self.color_subscription = subscribe(Image, f"{NAMESPACE}/semantic/color",
                                            lambda m: self.received.add("color", m), reliable)
        subscribe(rgbt_msgs.Detection2DArray, f"{NAMESPACE}/detections",
                  lambda m: self.received.add("detections", m), reliable)
        subscribe(rgbt_msgs.PerceptionStatus, f"{NAMESPACE}/status", lambda m: self.received.add("status", m), reliable)
        subscribe(rgbt_msgs.ClassList, f"{NAMESPACE}/classes", lambda m: self.received.add("classes", m), latched)
        subscribe(DiagnosticArray, "/diagnostics", lambda m: self.received.add("diagnostics", m), reliable)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert future.done(), f"no reply from {name}"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def last_status(self):
        statuses = self.received.snapshot("status")
        return statuses[-1][1] if statuses else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def diag_values(msg) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))
    path = tmp_path_factory.mktemp("node") / "micro.safetensors"
    save_weights(path, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))
    return str(path)


@pytest.fixture(scope="module")
def graph():
    g = Graph()
    yield g
    g.close()


@pytest.fixture(scope="module")
def node_process(repo_root, weights, graph, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("node_log") / "rgbt_node.log"
    executable = os.path.join(repo_root, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node")
    command = [
        executable, "--ros-args", "-r", f"__ns:={NAMESPACE}",
        "--params-file", os.path.join(repo_root, "config", "vehicle.yaml"),
        "-p", f"weights:={weights}", "-p", "device:=cpu", "-p", "qos.reliability:=reliable",
        "-p", "score_threshold:=0.01", "-p", "modality_timeout:=1.0", "-p", "status_period:=0.5",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    process.log_path = log_path
    deadline = time.monotonic() + 120
    while graph.last_status() is None or not graph.received.snapshot("classes"):
        assert process.poll() is None, f"node exited:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"node never published status:\n{log_path.read_text()}"
        time.sleep(0.2)
    yield process
    signal_and_wait(process)


def run_publisher(phases: str, *extra: str, timeout: float = 90.0) -> tuple[list[dict], dict]:
    command = [sys.executable, os.path.join(HELPERS_DIR, "camera_publisher.py"), "--namespace", NAMESPACE,
               "--rgb-size", "x".join(map(str, RGB_SIZE)), "--thermal-size", "x".join(map(str, THERMAL_SIZE)),
               "--phases", phases, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [line for line in lines if "phase" in line], lines[-1]["published"]


def wait_idle(graph: Graph, timeout: float = 60.0):
    """The status once the worker is idle and every processed frame has arrived here."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        time.sleep(0.6)
        status = graph.last_status()
        settled = (status.frames_processed + status.pairs_dropped == status.pairs_formed
                   and len(graph.received.snapshot("semantic")) == status.frames_processed)
        key = (status.pairs_formed, status.frames_processed, status.inputs_rejected)
        if settled and key == previous:
            return status
        previous = key
    pytest.fail(f"node did not settle: last status {graph.last_status()}")


def in_range(stamp: int, phase: dict) -> bool:
    return phase["stamp_min"] - 50_000_000 <= stamp <= phase["stamp_max"] + 50_000_000


def test_classes_are_latched(node_process, graph):
    (_, classes), = graph.received.snapshot("classes")[:1]
    assert len(classes.names) == 9 and classes.names[1] == "car"
    assert len(classes.palette) == 27


def test_streams_jump_and_camera_dropouts(node_process, graph):
    phases, published = run_publisher("live:5,jump:4,thermal_off:4,live:4,rgb_off:4", "--big-endian")
    live, jump, thermal_off, back, rgb_off = phases
    status = wait_idle(graph)

    # Counters add up, and everything processed reached this process.
    assert status.frames_processed + status.pairs_dropped == status.pairs_formed
    semantic = graph.received.snapshot("semantic")
    detections = graph.received.snapshot("detections")
    assert len(semantic) == status.frames_processed == len(detections)
    assert status.frames_processed >= 6
    assert status.inputs_rejected == 0
    assert status.device == "cpu"

    # Outputs are mono8 in RGB pixels with the RGB camera's frame_id, also while RGB was silent (thermal
    # alone, warped onto the RGB grid, stamped with the thermal frame). Only before any RGB frame was
    # seen can an output be in thermal pixels.
    thermal_pixels = []
    rgb_known = False
    for _, msg in semantic:
        assert msg.encoding == "mono8" and max(msg.data) < 9
        if (msg.height, msg.width) == RGB_SIZE:
            rgb_known = True
            assert msg.header.frame_id == "rgb_camera" and msg.step == RGB_SIZE[1]
        else:
            assert not rgb_known, "output size flipped back to thermal pixels"
            assert msg.header.frame_id == "thermal_camera" and (msg.height, msg.width) == THERMAL_SIZE
            thermal_pixels.append(stamp_ns(msg.header))
    assert len(thermal_pixels) <= 1
    assert any(in_range(stamp_ns(m.header), rgb_off) for _, m in semantic), "no output while RGB was silent"
    semantic_stamps = [stamp_ns(m.header) for _, m in semantic]
    assert sorted(semantic_stamps) != [] and [stamp_ns(m.header) for _, m in detections] == semantic_stamps
    colors = graph.received.snapshot("color")
    assert colors, "semantic/color has a subscriber here, so it is published"
    for _, msg in colors:
        size = RGB_SIZE if msg.header.frame_id == "rgb_camera" else THERMAL_SIZE
        assert (msg.height, msg.width, msg.encoding) == (*size, "rgb8")
        assert stamp_ns(msg.header) in semantic_stamps
    boxes = [d for _, m in detections for d in m.detections]
    assert boxes, "score_threshold 0.01 should let some boxes through"
    for _, msg in detections:
        height, width = RGB_SIZE if msg.header.frame_id == "rgb_camera" else THERMAL_SIZE
        for d in msg.detections:
            assert 0 <= d.x_min <= d.x_max <= width and 0 <= d.y_min <= d.y_max <= height
    for d in boxes:
        assert 0 <= d.class_id < 9 and d.score >= 0.01

    # Output in every phase: after the stamps jumped back, while one camera was silent, after it returned.
    for phase in (live, jump, thermal_off, back, rgb_off):
        assert any(in_range(s, phase) for s in semantic_stamps), f"no output in phase {phase['phase']}"

    # Degraded mode is reported while thermal is silent, and fusion comes back afterwards.
    statuses = graph.received.snapshot("status")
    during = [m for t, m in statuses if thermal_off["start"] + 2.0 < t < thermal_off["end"]]
    assert during and all(m.rgb_ok and not m.thermal_ok for m in during)
    after = [m for t, m in statuses if back["start"] + 1.5 < t < back["end"]]
    assert after and all(m.rgb_ok and m.thermal_ok for m in after)
    # Pairs are within the slop (50 ms); the node reports a rate and its latency while it works.
    assert all(0.0 <= m.sync_skew_ms <= 50.0 for m in after)
    assert any(m.fps > 0 and m.latency_ms_p95 >= m.latency_ms_p50 > 0 for m in after)
    without_rgb = [m for t, m in statuses if rgb_off["start"] + 2.0 < t < rgb_off["end"]]
    assert without_rgb and all(m.thermal_ok and not m.rgb_ok for m in without_rgb)
    diagnostics = graph.received.snapshot("diagnostics")
    before_back = [diag_values(m) for t, m in diagnostics if t < back["start"]][-1]
    before_rgb_off = [diag_values(m) for t, m in diagnostics if t < rgb_off["start"]][-1]
    final = diag_values(diagnostics[-1][1])
    assert {"frame_rate_hz", "delay_from_realtime_ms", "pairs_dropped", "inputs_rejected"} <= set(final)
    assert float(final["delay_from_realtime_ms"]) > 0
    assert int(before_back["single_camera_frames"]) >= 1
    assert int(before_rgb_off["fused_frames"]) > int(before_back["fused_frames"])
    # While RGB was silent the outputs came from thermal alone (and were on the RGB grid, checked above).
    assert int(final["single_camera_frames"]) > int(before_rgb_off["single_camera_frames"])
    assert int(final["frames_processed"]) == status.frames_processed
    assert int(final["sync_restarts"]) >= 1  # the backward jump restarted the pairing
    assert final["output_geometry"] == f"rgb {RGB_SIZE[0]}x{RGB_SIZE[1]}"
    # Every frame that arrived was accepted (nothing rejected); a busy executor may miss a few from its history.
    assert 0.5 * published["rgb"] <= int(final["rgb_frames_accepted"]) <= published["rgb"]
    assert 0.5 * published["thermal"] <= int(final["thermal_frames_accepted"]) <= published["thermal"]
    log = node_process.log_path.read_text()
    assert "thermal camera silent for more than 1 s: publishing from rgb alone" in log
    assert "thermal camera is back: fusing rgb and thermal again" in log
    # The loop is reported: one line for the jump, one for the recovery.
    assert log.count("stamps jumped back 1e+03 s") == 1, log
    assert log.count("both cameras' stamps jumped back: pairing restarted on the new timeline") == 1, log


def test_bad_inputs_are_rejected_and_counted(node_process, graph):
    from ros_helpers.camera_publisher import BAD_CASES

    before = wait_idle(graph)
    phases, published = run_publisher("live:1,bad:3,live:2")
    status = wait_idle(graph)
    assert published["bad"] == len(BAD_CASES)
    assert status.inputs_rejected - before.inputs_rejected == len(BAD_CASES)
    assert status.last_rejection != ""
    assert node_process.poll() is None
    # Output goes on after the bad frames.
    assert any(in_range(stamp_ns(m.header), phases[-1]) for _, m in graph.received.snapshot("semantic"))
    log = node_process.log_path.read_text()
    for words in ("unsupported encoding 'nv21'", "data length", "zero-size image", "non-finite",
                  "frame_id changed from 'thermal_camera' to 'another_camera'"):
        assert words in log, words


def _diagnostics_between(graph: Graph, start: float, end: float) -> list:
    return [m for t, m in graph.received.snapshot("diagnostics") if start < t < end]


def _single_camera_frames(graph: Graph, before: float | None = None) -> int:
    """``single_camera_frames`` of the last /diagnostics received before wall time ``before`` (or the last)."""
    diagnostics = [m for t, m in graph.received.snapshot("diagnostics") if before is None or t < before]
    return int(diag_values(diagnostics[-1])["single_camera_frames"])


# A publisher's first RGB frames come before its first (late) thermal frame, after thermal was silent
# since the previous test: those few are rightly RGB alone. A warm-up phase keeps them out of the checks.
WARM_UP = "live:1,"


def test_every_driver_encoding_gives_fused_output_at_rgb_size(node_process, graph):
    """Bayer (Blackfly), YUV 4:2:2 (usb_cam), 8UC3 (cv2_to_imgmsg(bgr)), and thermal counts or kelvin."""
    encodings = ["bayer_rggb8/16UC1", "yuv422_yuy2/mono8", "yuv422/32FC1", "8UC3/8UC1", "bayer_gbrg16/mono16"]
    before = wait_idle(graph)
    phases, _ = run_publisher(WARM_UP + ",".join(f"live:1.2:{e}" for e in encodings))
    status = wait_idle(graph)
    assert status.inputs_rejected == before.inputs_rejected, status.last_rejection
    assert _single_camera_frames(graph) == _single_camera_frames(graph, phases[1]["start"])  # all fused
    semantic = graph.received.snapshot("semantic")
    for phase in phases[1:]:
        fresh = [m for _, m in semantic if in_range(stamp_ns(m.header), phase)]
        assert fresh, f"no output for {phase['rgb_encoding']} + {phase['thermal_encoding']}"
        assert all((m.height, m.width) == RGB_SIZE and m.header.frame_id == "rgb_camera" for m in fresh)


def test_lost_frames_never_change_the_output_size(node_process, graph):
    """Single frames lost in transport, and RGB quiet for less than modality_timeout: fused, RGB size."""
    wait_idle(graph)
    phases, published = run_publisher(WARM_UP + "live:2,rgb_off:0.5,live:2", "--drop", "rgb:4,thermal:3")
    wait_idle(graph)
    assert published["dropped"] > 10
    assert _single_camera_frames(graph) == _single_camera_frames(graph, phases[1]["start"])  # all fused
    fresh = [m for _, m in graph.received.snapshot("semantic")
             if phases[1]["stamp_min"] - 50_000_000 <= stamp_ns(m.header) <= phases[-1]["stamp_max"] + 50_000_000]
    assert len(fresh) >= 5
    assert {(m.height, m.width, m.header.frame_id) for m in fresh} == {(*RGB_SIZE, "rgb_camera")}


def test_refused_rgb_encoding_is_reported_loudly(node_process, graph):
    """An RGB camera in an encoding the node cannot use: one ERROR, rgb_ok false with the reason, and
    thermal-only output that stays on the RGB grid."""
    wait_idle(graph)
    phases, _ = run_publisher("live:1,live:3:nv21/mono16,live:1")
    wait_idle(graph)
    _, refused, back = phases
    statuses = [m for t, m in graph.received.snapshot("status") if refused["start"] + 1.8 < t < refused["end"]]
    assert statuses and all(not m.rgb_ok and m.thermal_ok for m in statuses)
    assert all(m.last_rejection.startswith("rgb: unsupported encoding 'nv21'") for m in statuses)
    diagnostics = _diagnostics_between(graph, refused["start"] + 1.8, refused["end"])
    assert diagnostics
    for msg in diagnostics:
        values = diag_values(msg)
        assert values["rgb_ok"] == "false" and values["rgb_state"].startswith("frames refused: rgb: unsupported "
                                                                             "encoding 'nv21'")
        assert msg.status[0].level == b"\x02" and "rgb frames refused" in msg.status[0].message
    during = [m for _, m in graph.received.snapshot("semantic") if in_range(stamp_ns(m.header), refused)]
    assert during and all((m.height, m.width, m.header.frame_id) == (*RGB_SIZE, "rgb_camera") for m in during)
    assert any(in_range(stamp_ns(m.header), back) for _, m in graph.received.snapshot("semantic"))
    log = node_process.log_path.read_text()
    assert log.count("rgb camera publishes encoding 'nv21', which this input cannot use") == 1
    assert "[ERROR]" in next(line for line in log.splitlines() if "publishes encoding 'nv21'" in line)


def _set(graph: Graph, *parameters: Parameter):
    request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
    return graph.call(SetParameters, f"{NODE}/set_parameters", request).results


def test_invalid_parameters_are_refused_over_the_service(node_process, graph):
    cases = [
        (Parameter("sync.slop", value=-1.0), "sync.slop"),
        (Parameter("precision", value="fp8"), "precision must be one of"),
        (Parameter("device", value="gpu7"), "device must be"),
        (Parameter("thermal_to_rgb", value=[0.0] * 9), "thermal_to_rgb: homography is singular"),
        (Parameter("qos.reliability", value="sometimes"), "qos.reliability must be one of"),
        (Parameter("autostart", value=False), "read-only"),
    ]
    for parameter, words in cases:
        (result,) = _set(graph, parameter)
        assert not result.successful and words in result.reason, (parameter.name, result.reason)
    (result,) = _set(graph, Parameter("sync.slop", value=0.08))
    assert result.successful
    reply = graph.call(GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=["sync.slop", "precision"]))
    # The refused value left config/vehicle.yaml's own in place.
    assert reply.values[0].double_value == pytest.approx(0.08) and reply.values[1].string_value == "auto"
    assert "parameter refused: precision must be one of" in node_process.log_path.read_text()


def test_incompatible_qos_is_reported_naming_both_sides(node_process, graph):
    probe = rclpy.create_node("qos_probe")
    try:
        probe.create_publisher(Image, f"{NAMESPACE}/thermal/image",
                               QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        deadline = time.monotonic() + 20
        log = ""
        while time.monotonic() < deadline:
            log = node_process.log_path.read_text()
            if "incompatible QoS" in log:
                break
            time.sleep(0.2)
        line = next(line for line in log.splitlines() if "incompatible QoS" in line)
        assert f"{NAMESPACE}/thermal/image" in line
        assert "requests reliability=reliable" in line
        assert "/qos_probe offers reliability=best_effort" in line
    finally:
        probe.destroy_node()


def test_lifecycle_deactivate_and_activate(node_process, graph):
    def transition(transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return graph.call(ChangeState, f"{NODE}/change_state", request).success

    def state() -> str:
        return graph.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.label

    assert state() == "active"
    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert state() == "inactive"
    time.sleep(1.2)
    status = graph.last_status()
    assert not status.rgb_ok and not status.thermal_ok and status.device == ""
    assert status.frames_processed + status.pairs_dropped == status.pairs_formed
    # The transports apply at the next activation: JPEG from rgb/image/compressed, 16-bit PNG (raw
    # counts) from thermal/image/compressed, as image_transport's compressed plugin sends them.
    results = _set(graph, Parameter("rgb_transport", value="compressed"),
                   Parameter("thermal_transport", value="compressed"))
    assert all(r.successful for r in results)
    assert transition(Transition.TRANSITION_ACTIVATE)
    assert state() == "active"
    # With nobody on semantic/color the overlay is not computed.
    graph.node.destroy_subscription(graph.color_subscription)
    time.sleep(1.0)
    processed = graph.last_status().frames_processed
    colors_before = diag_values(graph.received.snapshot("diagnostics")[-1][1])["color_frames"]
    rejected = graph.last_status().inputs_rejected
    phases, _ = run_publisher(WARM_UP + "live:3", "--rgb-compressed", "--thermal-compressed")
    status = wait_idle(graph)
    assert status.frames_processed > processed and status.inputs_rejected == rejected
    fresh = [m for _, m in graph.received.snapshot("semantic") if in_range(stamp_ns(m.header), phases[1])]
    assert fresh and all((m.height, m.width) == RGB_SIZE for m in fresh)
    assert _single_camera_frames(graph) == _single_camera_frames(graph, phases[1]["start"])
    assert diag_values(graph.received.snapshot("diagnostics")[-1][1])["color_frames"] == colors_before
    assert (f"active: {NAMESPACE}/rgb/image/compressed + {NAMESPACE}/thermal/image/compressed"
            in node_process.log_path.read_text())


def test_ctrl_c_shuts_down_cleanly(node_process):
    node_process.send_signal(signal.SIGINT)
    assert node_process.wait(timeout=30) == 0
    log = node_process.log_path.read_text()
    assert "Traceback" not in log
