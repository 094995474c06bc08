"""The real rgbt_node with ``backend: onnxruntime`` over DDS: it answers, and its process never loads torch."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rgbt_perception.backends.onnx_graph import ensure_graph
from rgbt_perception.core.classes import MFNET
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet

pytestmark = pytest.mark.ros
SIZE = (64, 96)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=SIZE)).eval()
    path = str(tmp_path_factory.mktemp("node_ort") / "micro.safetensors")
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    ensure_graph(path, SIZE)  # built here (torch is loaded in this process), found by the node
    return path


def test_node_on_onnxruntime_answers_without_torch(weights, tmp_path):
    pytest.importorskip("rclpy")
    from rgbt_perception.bench.round_trip import NodeRoundTrip

    node = NodeRoundTrip(weights, "cpu", "fp32", threads=1, timeout_s=60.0, log_path=str(tmp_path / "node.log"),
                         backend="onnxruntime")
    node.start()
    try:
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        thermal = rng.integers(20000, 40000, SIZE, dtype=np.uint16)
        latencies = [node.round_trip(rgb, thermal) for _ in range(3)]
        assert all(ms is not None and ms > 0 for ms in latencies), latencies
        memory = node.memory()
    finally:
        node.stop()
    log = (tmp_path / "node.log").read_text()
    assert "backend onnxruntime" in log, log[-2000:]
    assert memory["torch_loaded"] is False
    assert memory["rss_mb"] < 400, memory
    assert not any(name.endswith(".plan") for name in os.listdir(os.path.dirname(weights)))
