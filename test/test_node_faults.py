"""Engine faults and stops in full flow.

The inference worker with a real engine into which faults are injected (exceptions, CUDA out of
memory, NaN weights); the installed rgbt_node over real DDS with corrupted (NaN) weights, and
stopped by SIGINT / SIGTERM while frames flow.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from rgbt_perception.backends.base import NonFiniteOutput
from rgbt_perception.backends.torch_engine import InferenceEngine
from rgbt_perception.core.classes import SYNTHETIC
from rgbt_perception.evaluation.node_process import signal_and_wait
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model.config import ModelConfig
from rgbt_perception.model.network import RGBTNet
from rgbt_perception.node.health import ERROR, NodeHealth
from rgbt_perception.node.logic import Frame, NewestOnlyQueue, WorkItem
from rgbt_perception.node.worker import InferenceWorker

RGB_SIZE = (48, 64)
THERMAL_SIZE = (24, 32)


def _weights(path, corrupt: bool = False) -> str:
    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))
    model = RGBTNet(config)
    if corrupt:  # what a damaged file loads as: one tensor of the semantic head full of NaN
        name, param = next((n, p) for n, p in model.named_parameters() if "semantic" in n and p.ndim > 1)
        with torch.no_grad():
            param.fill_(float("nan"))
    save_weights(path, model, WeightsMetadata.for_model(config, SYNTHETIC))
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return _weights(tmp_path_factory.mktemp("faults") / "micro.safetensors")


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> str:
    return _weights(tmp_path_factory.mktemp("faults") / "nan.safetensors", corrupt=True)


class FaultyEngine:
    """A real engine that raises ``faults[i]`` on its i-th call (None: runs normally)."""

    def __init__(self, engine: InferenceEngine, faults: dict[int, BaseException]) -> None:
        self.engine = engine
        self.faults = faults
        self.calls = 0

    def infer(self, *args, **kwargs):
        call, self.calls = self.calls, self.calls + 1
        if call in self.faults:
            raise self.faults[call]
        return self.engine.infer(*args, **kwargs)


def _item(index: int) -> WorkItem:
    header = type("Header", (), {"frame_id": "cam", "stamp": None})()
    rgb = Frame("rgb", header, np.full((*RGB_SIZE, 3), index % 255, np.uint8), index, time.time_ns())
    thermal = Frame("thermal", header, np.full(THERMAL_SIZE, 1000 + index, np.uint16), index, time.time_ns())
    return WorkItem(rgb, thermal)


def _run_worker(engine, items: int, max_faults: int = 10):
    queue: NewestOnlyQueue[WorkItem] = NewestOnlyQueue()
    health = NodeHealth(queue)
    published, logs, gave_up = [], [], []
    lock = threading.Lock()
    worker = InferenceWorker(queue, health, lambda: (engine, lock), lambda item, result: published.append(result)
                             or True, lambda level, text: logs.append((level, text)), lambda: False,
                             gave_up.append, max_consecutive_failures=max_faults)
    worker.start()
    for index in range(items):
        queue.put(_item(index))
        assert queue.wait_idle(30.0)
    worker.stop()
    return health, published, logs, gave_up


def test_an_engine_fault_drops_one_frame_is_counted_logged_once_and_the_worker_goes_on(weights):
    engine = FaultyEngine(InferenceEngine(weights, device="cpu"),
                          {1: RuntimeError("device lost"), 3: RuntimeError("device lost again"), 4: KeyError("x")})
    health, published, logs, gave_up = _run_worker(engine, items=7)
    counts = health.counters()
    assert counts["pairs_formed"] == 7
    assert counts["frames_processed"] == len(published) == 4
    assert counts["pairs_dropped"] == 3
    assert health.failed_inferences == 3 and health.non_finite_outputs == 0
    errors = [text for level, text in logs if level == "error"]
    assert len(errors) == 2  # one line per kind of fault
    assert "RuntimeError: device lost" in errors[0] and "KeyError" in errors[1]
    assert not gave_up
    level, message = health.pipeline_state(True, True, True)
    assert level == ERROR and "inference faults" in message
    assert all(result.mask.shape == RGB_SIZE for result in published)


def test_out_of_memory_is_retried_once_after_releasing_cached_memory(weights):
    out_of_memory = torch.cuda.OutOfMemoryError("CUDA out of memory")
    engine = FaultyEngine(InferenceEngine(weights, device="cpu"), {0: out_of_memory})
    health, published, _, _ = _run_worker(engine, items=2)
    assert len(published) == 2 and health.failed_inferences == 0
    assert engine.calls == 3  # the first item was run twice


def test_too_many_faults_in_a_row_make_the_worker_give_up_once(weights):
    engine = FaultyEngine(InferenceEngine(weights, device="cpu"), {i: RuntimeError("boom") for i in range(100)})
    queue: NewestOnlyQueue[WorkItem] = NewestOnlyQueue()
    health = NodeHealth(queue)
    gave_up = []
    worker = InferenceWorker(queue, health, lambda: (engine, threading.Lock()), lambda item, result: True,
                             lambda level, text: None, lambda: False, gave_up.append, max_consecutive_failures=3)
    worker.start()
    for index in range(3):
        queue.put(_item(index))
        assert queue.wait_idle(30.0)
    queue.put(_item(3))  # not taken any more: the worker stopped
    time.sleep(0.5)
    worker.stop()
    assert queue.discard_pending() == 1
    assert len(gave_up) == 1 and "3 inference faults in a row" in gave_up[0]
    counts = health.counters()
    assert counts["pairs_formed"] == counts["frames_processed"] + counts["pairs_dropped"] == 4
    assert counts["frames_processed"] == 0 and engine.calls == 3


def test_non_finite_outputs_are_never_a_mask(nan_weights):
    engine = InferenceEngine(nan_weights, device="cpu")
    with pytest.raises(NonFiniteOutput, match="NaN or infinite"):
        engine.infer(np.zeros((*RGB_SIZE, 3), np.uint8), np.zeros(THERMAL_SIZE, np.uint16))
    health, published, logs, _ = _run_worker(engine, items=3)
    assert not published and health.non_finite_outputs == health.failed_inferences == 3
    assert sum(level == "error" for level, _ in logs) == 1


# -- the node process -------------------------------------------------------------------------------

rclpy = pytest.importorskip("rclpy")


def _start_node(repo_root: str, weights: str, namespace: str, log_path, *extra: str) -> subprocess.Popen:
    executable = os.path.join(repo_root, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node")
    command = [executable, "--ros-args", "-r", f"__ns:={namespace}", "-p", f"weights:={weights}",
               "-p", "device:=cpu", "-p", "qos.reliability:=reliable", "-p", "status_period:=0.3", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", RCUTILS_LOGGING_BUFFERED_STREAM="0", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _publisher(namespace: str, phases: str) -> subprocess.Popen:
    from ros_helpers_path import HELPERS_DIR

    command = [sys.executable, os.path.join(HELPERS_DIR, "camera_publisher.py"), "--namespace", namespace,
               "--rgb-size", "x".join(map(str, RGB_SIZE)), "--thermal-size", "x".join(map(str, THERMAL_SIZE)),
               "--phases", phases]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(log_path, words: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if words in log_path.read_text():
            return True
        time.sleep(0.1)
    return False


FORBIDDEN = ("Traceback", "RCLError", "context is invalid", "Failed to publish", "rcl error")


@pytest.mark.ros
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_frames_flow_stops_cleanly_within_5_s(repo_root, weights, tmp_path, signum):
    namespace = f"/stop_{signum.name.lower()}"
    log_path = tmp_path / "node.log"
    node = _start_node(repo_root, weights, namespace, log_path)
    publisher = None
    try:
        assert _wait_for(log_path, "active:", 60), log_path.read_text()
        publisher = _publisher(namespace, "live:30")
        # Full flow: the worker publishes frame after frame; the signal lands at a random moment of it.
        time.sleep(3.0 + np.random.default_rng().uniform(0, 1.0))
        started = time.monotonic()
        code = signal_and_wait(node, signum)
        elapsed = time.monotonic() - started
    finally:
        for process in (node, publisher):
            if process is not None and process.poll() is None:
                process.kill()
    output = log_path.read_text()
    assert code == 0, output
    assert elapsed <= 5.0, f"stopped after {elapsed:.1f} s"
    for words in FORBIDDEN:
        assert words not in output, output


@pytest.mark.ros
def test_corrupted_weights_publish_no_mask_and_the_node_gives_up_alive(repo_root, nan_weights, tmp_path):
    from rgbt_msgs.msg import PerceptionStatus
    from sensor_msgs.msg import Image

    namespace = "/faults"
    log_path = tmp_path / "node.log"
    node = _start_node(repo_root, nan_weights, namespace, log_path, "-p", "fault.max_consecutive:=5")
    rclpy.init()
    listener = rclpy.create_node("fault_listener")
    masks, statuses = [], []
    listener.create_subscription(Image, f"{namespace}/semantic", masks.append, 10)
    listener.create_subscription(PerceptionStatus, f"{namespace}/status", statuses.append, 10)
    publisher = None
    try:
        assert _wait_for(log_path, "active:", 60), log_path.read_text()
        publisher = _publisher(namespace, "live:4")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "giving up on the engine" not in log_path.read_text():
            rclpy.spin_once(listener, timeout_sec=0.1)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            rclpy.spin_once(listener, timeout_sec=0.1)
        assert node.poll() is None, log_path.read_text()  # alive
    finally:
        listener.destroy_node()
        rclpy.try_shutdown()  # first, so a process that outlives its signal leaves no context to later tests
        for process in (publisher, node):
            if process is not None:
                assert signal_and_wait(process) is not None, f"{process.args[0]} outlived its SIGINT"
    output = log_path.read_text()
    assert not masks
    assert "NonFiniteOutput" in output and "giving up on the engine: 5 inference faults in a row" in output
    assert "deactivating" in output
    assert statuses and statuses[-1].frames_processed == 0
    # Deactivated: cameras no longer count as ok, every pair formed was dropped and counted.
    assert not statuses[-1].rgb_ok and not statuses[-1].thermal_ok
    assert statuses[-1].pairs_dropped == statuses[-1].pairs_formed > 0
    assert "Traceback" not in output
