"""Publish one instance of every rgbt_msgs type and a 16-bit image, repeatedly, from its own process.

Used by the foundation tests to prove that messages cross a real DDS link between processes.
The values are fixed here and asserted by the subscribing test.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rgbt_msgs.msg import ClassList, Detection2D, Detection2DArray, PerceptionStatus
from sensor_msgs.msg import Image

THERMAL = (np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 2111 + 7).astype(np.uint16)


def build_messages() -> dict[str, object]:
    detections = Detection2DArray()
    detections.header.frame_id = "rgb_camera"
    detections.header.stamp.sec = 1700000000
    detections.header.stamp.nanosec = 123456789
    detections.detections = [
        Detection2D(class_id=2, label="person", score=0.875, x_min=10.5, y_min=20.0, x_max=30.25, y_max=60.0),
        Detection2D(class_id=1, label="car", score=0.5, x_min=100.0, y_min=110.0, x_max=220.0, y_max=200.0),
    ]
    status = PerceptionStatus(
        rgb_ok=True, thermal_ok=False, fps=29.5, latency_ms_p50=12.25, latency_ms_p95=20.5,
        sync_skew_ms=3.5, frames_processed=2**40 + 3, pairs_dropped=7, inputs_rejected=2, device="cuda:0",
    )
    status.header.frame_id = "rgb_camera"
    classes = ClassList(names=["unlabeled", "car", "person"], palette=[0, 0, 0, 64, 0, 128, 64, 64, 0])
    image = Image(height=6, width=5, encoding="mono16", is_bigendian=0, step=10, data=THERMAL.tobytes())
    image.header.frame_id = "thermal_camera"
    return {"detections": detections, "status": status, "classes": classes, "thermal": image}


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("msg_echo_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    messages = build_messages()
    publishers = {name: node.create_publisher(type(msg), f"foundation/{name}", qos) for name, msg in messages.items()}
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 20.0)
    try:
        while time.monotonic() < deadline:
            for name, msg in messages.items():
                publishers[name].publish(msg)
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
