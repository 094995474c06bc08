"""The installed node watches the registration over DDS: a right homography scores OK, a shifted
one lowers the score and raises a WARN (log line and /diagnostics "registration" status)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rgbt_msgs.msg")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from rgbt_perception.calibration.synthetic import SyntheticRig, rig_homography, road_pairs  # noqa: E402
from rgbt_perception.core.image_codec import array_to_image  # noqa: E402
from rgbt_perception.evaluation.node_process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros

RGB_SIZE = (240, 320)
THERMAL_SIZE = (256, 320)
SHIFT_PX = 16.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))
    path = tmp_path_factory.mktemp("alignment") / "micro.safetensors"
    save_weights(path, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))
    return str(path)


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig(rig_homography(RGB_SIZE, THERMAL_SIZE), RGB_SIZE, THERMAL_SIZE)


@pytest.fixture(scope="module")
def scenes(rig):
    return road_pairs(rig, 8, conditions=("day", "night"), seed=3)


def _registration(msg: DiagnosticArray):
    return next((s for s in msg.status if s.name.endswith(": registration")), None)


def _run_node(weights: str, namespace: str, homography: np.ndarray, scenes, log_path, seconds: float = 8.0) -> list:
    """Start the node, play the scenes at 10 Hz for ``seconds``, return the registration statuses seen."""
    parameters = {"weights": weights, "device": "cpu", "qos.reliability": "reliable", "status_period": 0.5,
                  "thermal_to_rgb": [float(v) for v in homography.reshape(-1)], "alignment.every_n": 1,
                  "alignment.warn_after": 1.0, "modality_timeout": 2.0}
    node_process = NodeProcess(parameters, log_path, threads=1, extra_args=["-r", f"__ns:={namespace}"])
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("rgbt_alignment_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    seen: list = []
    lock = threading.Lock()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        status = _registration(msg)
        if status is not None and msg.status[0].name.startswith(namespace):
            with lock:
                seen.append(status)

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    rgb_pub = node.create_publisher(type(array_to_image(scenes[0][0], "rgb8")), f"{namespace}/rgb/image", reliable)
    thermal_pub = node.create_publisher(type(array_to_image(scenes[0][1], "mono16")), f"{namespace}/thermal/image",
                                        reliable)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node_process.start()
    try:
        node_process.wait_until(lambda: rgb_pub.get_subscription_count() > 0
                                and thermal_pub.get_subscription_count() > 0, 120, "subscribed to both cameras")
        end = time.monotonic() + seconds
        frame = 0
        while time.monotonic() < end:
            rgb, thermal, _ = scenes[frame % len(scenes)]
            stamp = node.get_clock().now().to_msg()
            for publisher, image, encoding, frame_id in ((thermal_pub, thermal, "mono16", "thermal"),
                                                         (rgb_pub, rgb, "rgb8", "rgb")):
                msg = array_to_image(image, encoding)
                msg.header.stamp = stamp
                msg.header.frame_id = frame_id
                publisher.publish(msg)
            frame += 1
            time.sleep(0.1)
        time.sleep(1.5)  # the last status periods
    finally:
        node_process.stop(timeout_s=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    with lock:
        return list(seen)


def _score(status) -> float:
    return float({kv.key: kv.value for kv in status.values}["alignment_score"])


def test_right_registration_scores_ok(weights, rig, scenes, tmp_path):
    statuses = _run_node(weights, "/align_ok", rig.homography, scenes, tmp_path / "node.log")
    scored = [s for s in statuses if int({kv.key: kv.value for kv in s.values}["alignment_pairs_scored"]) > 0]
    assert scored, f"no scored registration status:\n{(tmp_path / 'node.log').read_text()[-2000:]}"
    assert _score(scored[-1]) > 0.6
    assert all(s.level == DiagnosticStatus.OK for s in scored)


def test_shifted_registration_lowers_the_score_and_warns(weights, rig, scenes, tmp_path):
    shifted = np.array([[1.0, 0.0, SHIFT_PX], [0.0, 1.0, SHIFT_PX / 2], [0.0, 0.0, 1.0]]) @ rig.homography
    log_path = tmp_path / "node.log"
    statuses = _run_node(weights, "/align_off", shifted, scenes, log_path)
    scored = [s for s in statuses if int({kv.key: kv.value for kv in s.values}["alignment_pairs_scored"]) > 0]
    assert scored, f"no scored registration status:\n{log_path.read_text()[-2000:]}"
    assert _score(scored[-1]) < 0.5
    assert scored[-1].level == DiagnosticStatus.WARN
    warnings = [line for line in log_path.read_text().splitlines() if "WARN" in line and "regist" in line.lower()]
    assert len(warnings) == 1, log_path.read_text()[-3000:]
