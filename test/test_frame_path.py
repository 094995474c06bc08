"""One frame's way through the runtime reads top to bottom: decode -> pair -> queue -> engine -> messages.

The node's own pieces (the frame pipeline, the inference worker, the message builders) run one RGB
and one thermal message into a published result while a profiler records which modules of the
package run, in order. The stages must come in that order and the way must never step back into
an earlier stage's module once a later stage has begun (no return trips).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

import rgbt_perception  # noqa: E402
from rgbt_perception.backends.torch_engine import InferenceEngine  # noqa: E402
from rgbt_perception.core.classes import SYNTHETIC  # noqa: E402
from rgbt_perception.core.image_codec import array_to_image  # noqa: E402
from rgbt_perception.io.weights import WeightsMetadata, save_weights  # noqa: E402
from rgbt_perception.model.config import ModelConfig  # noqa: E402
from rgbt_perception.model.network import RGBTNet  # noqa: E402
from rgbt_perception.node import messages  # noqa: E402
from rgbt_perception.node.health import NodeHealth  # noqa: E402
from rgbt_perception.node.logic import NewestOnlyQueue  # noqa: E402
from rgbt_perception.node.pipeline import FramePipeline  # noqa: E402
from rgbt_perception.node.worker import InferenceWorker  # noqa: E402

PACKAGE = os.path.dirname(os.path.abspath(rgbt_perception.__file__))
ORDER = ("decode", "pair", "queue", "engine", "messages")


def stage(module: str, function: str) -> str | None:
    """The stage a call belongs to (None: a helper of whatever stage runs it)."""
    if module == "node/pipeline.py":
        return "queue" if function.endswith("_on_pair") else "decode"
    if module == "node/logic.py":
        if function.startswith("FrameDecoder."):
            return "decode"
        return "queue" if function.endswith((".put", ".take")) else None
    if module == "core/image_codec.py":
        return {"array_to_image": "messages", "image_to_rgb8": "decode", "image_to_thermal": "decode"}.get(function)
    if module in ("node/pairing.py", "core/sync.py"):
        return "pair"
    if module == "node/worker.py" or module.startswith("backends/"):
        return "engine"
    return "messages" if module == "node/messages.py" else None


def _image(encoding: str, array: np.ndarray, frame_id: str) -> Image:
    height, width = array.shape[:2]
    header = Header(stamp=Time(sec=100, nanosec=0), frame_id=frame_id)
    step = width * (array.shape[2] if array.ndim == 3 else 1) * array.itemsize
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                 data=array.tobytes())


def test_a_frame_goes_decode_pair_queue_engine_messages_without_stepping_back(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))
    weights = tmp_path / "micro.safetensors"
    save_weights(weights, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))
    engine = InferenceEngine(weights, device="cpu")
    queue = NewestOnlyQueue()
    health = NodeHealth(queue)
    pipeline = FramePipeline(queue, health, logging.getLogger("frame_path"), modality_timeout=5.0)
    pipeline.start(queue_size=10, slop=0.05, modality_timeout=5.0)
    published = []

    def publish(item, result):
        image = array_to_image(result.mask, "mono8", item.reference.header)
        published.append((image, messages.detections_message(item.reference.header, result.detections)))
        return True

    visits: dict[int, list[tuple[str, str]]] = {}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            module = os.path.relpath(frame.f_code.co_filename, PACKAGE)
            visits.setdefault(threading.get_ident(), []).append((module, frame.f_code.co_qualname))

    worker = InferenceWorker(queue, health, lambda: (engine, threading.Lock()), publish,
                             lambda level, text: None, lambda: False, lambda reason: None)
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        worker.start()
        pipeline.offer("rgb", _image("rgb8", np.full((48, 64, 3), 90, np.uint8), "rgb"))
        pipeline.offer("thermal", _image("mono16", np.full((24, 32), 30000, np.uint16), "thermal"))
        assert queue.wait_idle(60.0)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        worker.stop()
    assert len(published) == 1 and published[0][0].height == 48
    # The executor's way of the message that completed the pair: from its offer to the put.
    executor = visits[threading.get_ident()]
    offers = [i for i, call in enumerate(executor) if call == ("node/pipeline.py", "FramePipeline.offer")]
    put = next(i for i, (m, f) in enumerate(executor) if f == "NewestOnlyQueue.put")
    executor = executor[max(i for i in offers if i < put):put + 1]
    worker_calls = next(calls for ident, calls in visits.items()
                        if ident != threading.get_ident() and any(m == "node/messages.py" for m, _ in calls))
    # The worker's way: from the take that returned the pair to the last message built (its idle
    # polling before and the accounting after are not part of the frame's way).
    staged = [(stage(m, f), m) for m, f in worker_calls]
    network = next(i for i, (_, m) in enumerate(staged) if m.startswith("backends/"))
    first = max(i for i, (s, _) in enumerate(staged[:network]) if s == "queue")
    last = max(i for i, (s, _) in enumerate(staged) if s == "messages")
    path = [(stage(m, f), m) for m, f in executor if not m.startswith("node/worker")] + staged[first:last + 1]
    reached = [ORDER.index(s) for s, _ in path if s is not None]
    assert sorted(set(reached)) == list(range(len(ORDER))), path
    backwards = [(path[i], path[i + 1]) for i in range(len(path) - 1)
                 if path[i][0] and path[i + 1][0] and ORDER.index(path[i + 1][0]) < ORDER.index(path[i][0])]
    assert not backwards, backwards
    modules = sorted({m for _, m in path})
    print(f"\n{len(modules)} modules on one frame's way: {', '.join(modules)}")
