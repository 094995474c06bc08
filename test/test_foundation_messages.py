"""rgbt_msgs and a 16-bit sensor_msgs/Image cross a real DDS link between two processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
rgbt_msgs = pytest.importorskip("rgbt_msgs.msg")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers_path import HELPERS_DIR  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

pytestmark = pytest.mark.ros


def _receive_all(timeout_s: float = 30.0) -> dict[str, object]:
    publisher = subprocess.Popen(
        [sys.executable, os.path.join(HELPERS_DIR, "msg_echo_publisher.py"), str(timeout_s)],
        env=os.environ.copy(),
    )
    received: dict[str, object] = {}
    rclpy.init()
    node = rclpy.create_node("foundation_listener")
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        types = {
            "detections": rgbt_msgs.Detection2DArray,
            "status": rgbt_msgs.PerceptionStatus,
            "classes": rgbt_msgs.ClassList,
            "thermal": Image,
        }
        for name, msg_type in types.items():
            node.create_subscription(msg_type, f"foundation/{name}", lambda m, n=name: received.setdefault(n, m), qos)
        deadline = time.monotonic() + timeout_s
        while len(received) < len(types) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        publisher.terminate()
        publisher.wait(timeout=10)
    return received


@pytest.fixture(scope="module")
def received() -> dict[str, object]:
    return _receive_all()


def test_every_message_arrives_from_another_process(received):
    assert sorted(received) == ["classes", "detections", "status", "thermal"]


def test_detection_array_fields(received):
    msg = received["detections"]
    assert msg.header.frame_id == "rgb_camera"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123456789)
    assert [d.label for d in msg.detections] == ["person", "car"]
    first = msg.detections[0]
    assert (first.class_id, first.score, first.x_min, first.y_min, first.x_max, first.y_max) == (
        2, 0.875, 10.5, 20.0, 30.25, 60.0)


def test_status_fields(received):
    msg = received["status"]
    assert (msg.rgb_ok, msg.thermal_ok) == (True, False)
    assert msg.fps == pytest.approx(29.5)
    assert (msg.latency_ms_p50, msg.latency_ms_p95, msg.sync_skew_ms) == (12.25, 20.5, 3.5)
    # 64-bit counters survive the wire beyond 32 bits.
    assert msg.frames_processed == 2**40 + 3
    assert (msg.pairs_dropped, msg.inputs_rejected, msg.device) == (7, 2, "cuda:0")


def test_class_list_fields(received):
    msg = received["classes"]
    assert list(msg.names) == ["unlabeled", "car", "person"]
    assert list(msg.palette) == [0, 0, 0, 64, 0, 128, 64, 64, 0]


def test_sixteen_bit_image_values_intact(received):
    msg = received["thermal"]
    assert (msg.height, msg.width, msg.encoding, msg.step) == (6, 5, "mono16", 10)
    values = np.frombuffer(bytes(msg.data), dtype="<u2").reshape(6, 5)
    expected = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2111 + 7).astype(np.uint16)
    np.testing.assert_array_equal(values, expected)
    assert values.max() > 255
