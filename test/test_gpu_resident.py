"""The per-frame step on the GPU: CUDA-graph replay and the compiled network against eager execution,
one graph for every camera pattern, outputs that survive the next replay.

Marked ``gpu`` and skipped without CUDA; ``make gpu-check`` runs them on a machine with a GPU.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rgbt_perception.backends.base import DecodeSettings
from rgbt_perception.backends.factory import create_engine
from rgbt_perception.bench.runners import synthetic_pair
from rgbt_perception.node.parameters import DEFAULT_WEIGHTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)"),
]

HOMOGRAPHY = np.array([[2.16295207949, -0.00429429611159, -12.2126712371],
                       [0.00429429611159, 2.16295207949, -8.83850142099],
                       [-3.42374837182e-05, 2.33550564551e-05, 1.0]])
DECODE = DecodeSettings(score_threshold=0.3)


def _engine(backend: str, precision: str = "fp32"):
    logs: list[str] = []
    engine = create_engine(DEFAULT_WEIGHTS, device="cuda", precision=precision, backend=backend, decode=DECODE,
                           thermal_to_rgb=HOMOGRAPHY, log=logs.append)
    return engine, logs


def _frames(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rgb, _ = synthetic_pair((480, 640), seed)
    _, thermal = synthetic_pair((240, 320), seed + 1)
    return rgb, thermal


@pytest.fixture(scope="module")
def eager():
    engine, _ = _engine("torch_resident")
    yield engine
    engine.release()


def _agree(got, want, share: float) -> None:
    assert (got.mask == want.mask).mean() >= share
    strong = [(d.class_id, round(d.x_min), round(d.y_min)) for d in want.detections if d.score > 0.35]
    found = [(d.class_id, round(d.x_min), round(d.y_min)) for d in got.detections]
    assert all(item in found for item in strong)


def test_graph_replay_equals_eager_for_every_camera_pattern_with_one_graph(eager):
    graphs, logs = _engine("torch_graphs")
    assert graphs.active_mode == "graphs" and logs == [], logs
    rgb, thermal = _frames(0)
    graphs.infer(rgb, thermal)
    captured = [step.graph for step in graphs._steps.values()]
    assert all(g is not None for g in captured)
    for pair, size in (((rgb, thermal), None), ((rgb, None), None), ((None, thermal), rgb.shape[:2])):
        _agree(graphs.infer(*pair, output_size=size), eager.infer(*pair, output_size=size), 0.9999)
    assert [step.graph for step in graphs._steps.values()] == captured  # no new capture per pattern
    graphs.release()


def test_graph_outputs_are_copied_before_the_next_replay():
    graphs, _ = _engine("torch_graphs")
    first = graphs.infer(*_frames(1))
    kept_mask, kept_boxes = first.mask.copy(), list(first.detections)
    second = graphs.infer(*_frames(7))
    assert np.array_equal(first.mask, kept_mask) and first.detections == kept_boxes
    assert not np.array_equal(first.mask, second.mask)
    graphs.release()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="torch.compile on CUDA needs triton")
def test_compiled_engine_agrees_with_eager(eager):
    compiled, logs = _engine("torch_compiled")
    assert compiled.active_mode == "compiled", logs
    for seed in (2, 3):
        _agree(compiled.infer(*_frames(seed)), eager.infer(*_frames(seed)), 0.999)
    compiled.release()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_graphs_agree_with_the_fp32_torch_engine(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    reference = create_engine(DEFAULT_WEIGHTS, device="cuda", precision="fp32", backend="torch", decode=DECODE,
                              thermal_to_rgb=HOMOGRAPHY)
    graphs, _ = _engine("torch_graphs", precision)
    for seed in (4, 5):
        assert (graphs.infer(*_frames(seed)).mask == reference.infer(*_frames(seed)).mask).mean() >= 0.995
    graphs.release()
    reference.release()
