"""The onnxruntime backend: the cached graph (built once, keyed, parity-checked), its torch-free engine
against the torch engine, and the NumPy post-processing against PyTorch's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rgbt_perception.backends.onnx_cache as onnx_cache
from rgbt_perception.backends import BackendError
from rgbt_perception.backends.base import DecodeSettings, Engine
from rgbt_perception.backends.factory import create_engine
from rgbt_perception.backends.numpy_ops import decode_boxes, semantic_mask
from rgbt_perception.backends.onnx_engine import OnnxEngine
from rgbt_perception.backends.onnx_graph import ensure_graph
from rgbt_perception.backends.onnxruntime_backend import OnnxRuntimeEngine
from rgbt_perception.cli import infer as infer_cli
from rgbt_perception.core.classes import MFNET
from rgbt_perception.core.defaults import MAX_PER_CLASS, PUBLISH_SCORE_THRESHOLD
from rgbt_perception.core.frames import Detection as OnnxDetection
from rgbt_perception.inference import Detection, InferenceEngine
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet

SIZE = (64, 96)


def _save(path: str, seed: int) -> str:
    torch.manual_seed(seed)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=SIZE)).eval()
    with torch.no_grad():  # non-zero adapters, so the graph's merged trunk is put to the test
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return _save(str(tmp_path_factory.mktemp("ort") / "micro.safetensors"), seed=0)


@pytest.fixture(scope="module")
def ort_engine(weights) -> OnnxEngine:
    engine = create_engine(weights, device="cpu", backend="onnxruntime",
                           decode=DecodeSettings(score_threshold=0.0, max_detections=20))
    assert isinstance(engine, OnnxEngine) and isinstance(engine, Engine) and engine.backend == "onnxruntime"
    return engine


@pytest.fixture(scope="module")
def torch_engine(weights) -> InferenceEngine:
    return InferenceEngine(weights, device="cpu", score_threshold=0.0, max_detections=20)


def _pair(rgb_size, thermal_size, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (*rgb_size, 3), dtype=np.uint8),
            rng.integers(20000, 40000, thermal_size, dtype=np.uint16))


def _graph_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith((".onnx", ".json")))


def test_graph_is_built_once_beside_the_weights_keyed_and_checked(weights, ort_engine):
    folder = os.path.dirname(weights)
    graph = ort_engine.graph
    assert graph.onnx_path.parent == graph.sidecar_path.parent == ort_engine.graph.onnx_path.parent
    assert str(graph.onnx_path.parent) == folder
    assert graph.onnx_path.name.startswith("micro.64x96.fp32.") and graph.info["key"] in graph.onnx_path.name
    info = graph.info
    assert info["inputs"] == ["rgb", "thermal", "present"] and info["outputs"][0] == "semantic"
    assert info["box_strides"] == [8, 16, 32] and info["lora"]["batched_trunk"] is True
    assert info["lora"]["merged_layers"] > 0
    # Parity with the unmerged PyTorch network, for both cameras and each camera alone.
    assert set(info["parity"]["patterns"]) == {"both", "rgb", "thermal"}
    assert info["parity"]["max_rel_diff"] < 1e-4
    mtime = graph.onnx_path.stat().st_mtime_ns
    again = OnnxRuntimeEngine(weights, device="cpu")
    assert again.graph.onnx_path == graph.onnx_path and graph.onnx_path.stat().st_mtime_ns == mtime
    # Defaults nobody passed are the published boxes' (one home for them, also the network decoder's).
    assert again.max_per_class == info["decode_defaults"]["max_per_class"] == MAX_PER_CLASS
    assert again.score_threshold == info["decode_defaults"]["score_threshold"] == PUBLISH_SCORE_THRESHOLD


@pytest.mark.parametrize("case", ["same_size", "registered", "rgb_only", "thermal_only", "thermal_on_rgb_grid"])
def test_onnxruntime_engine_matches_the_torch_engine(ort_engine, torch_engine, case):
    rgb, thermal = _pair((70, 101), (45, 57), seed=3)
    kwargs: dict = {}
    if case == "same_size":
        rgb, thermal = _pair(SIZE, SIZE, seed=4)
    elif case == "registered":
        kwargs["homography"] = np.array([[1.2, 0.0, 3.0], [0.0, 1.1, -2.0], [0.0, 0.0, 1.0]])
    elif case == "rgb_only":
        thermal = None
    elif case == "thermal_only":
        rgb = None
    else:
        rgb, kwargs["output_size"] = None, (70, 101)
    want, got = torch_engine.infer(rgb, thermal, overlay=True, **kwargs), ort_engine.infer(rgb, thermal,
                                                                                           overlay=True, **kwargs)
    assert got.mask.shape == want.mask.shape and got.mask.dtype == np.uint8
    assert got.overlay.shape == want.overlay.shape
    assert (got.mask == want.mask).mean() >= 0.999
    assert len(got.detections) == len(want.detections) > 0
    # Top boxes in the same order with the same geometry (ties far down the list may swap).
    for a, b in list(zip(got.detections, want.detections))[:5]:
        assert a.class_id == b.class_id and abs(a.score - b.score) < 1e-4
        assert np.allclose([a.x_min, a.y_min, a.x_max, a.y_max], [b.x_min, b.y_min, b.x_max, b.y_max], atol=0.05)
    assert set(got.timings_ms) == {"preprocess", "forward", "postprocess", "total"}


def test_detection_types_have_the_same_fields():
    assert OnnxDetection.__dataclass_fields__.keys() == Detection.__dataclass_fields__.keys()


def test_numpy_decoding_matches_the_box_head(torch_engine):
    model = torch_engine.model
    rgb, thermal = (torch.rand(2, 3, *SIZE), torch.rand(2, 1, *SIZE))
    with torch.inference_mode():
        boxes = model(rgb, thermal)["boxes"]
    for threshold in (0.0, 0.3):
        want = model.box_head.decode(boxes, score_threshold=threshold, nms_iou=0.5, max_detections=30)
        got = decode_boxes({k: [t.numpy() for t in v] for k, v in boxes.items()}, list(model.box_head.strides),
                           threshold, 0.5, 30, max_per_class=20)
        for a, b in zip(got, want):
            assert a["labels"].tolist() == b["labels"].tolist()
            assert np.allclose(a["scores"], b["scores"].numpy(), atol=1e-6)
            assert np.allclose(a["boxes"], b["boxes"].numpy(), atol=1e-4)


@pytest.mark.parametrize("size", [(64, 96), (70, 101), (33, 47), (16, 24)])
def test_numpy_class_mask_matches_torch_upsampling(size):
    logits = torch.randn(1, 9, 16, 24, generator=torch.Generator().manual_seed(size[0]))
    want = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    got = semantic_mask(logits[0].numpy(), size)
    assert got.dtype == np.uint8 and got.shape == size
    assert (got == want).mean() >= 0.9999


def test_changed_weights_get_a_new_graph_and_the_stale_one_goes(tmp_path):
    path = _save(str(tmp_path / "net.safetensors"), seed=1)
    first = ensure_graph(path, SIZE)
    _save(path, seed=2)  # same file name, other weights
    second = ensure_graph(path, SIZE)
    assert first.info["key"] != second.info["key"]
    assert not first.onnx_path.exists() and not first.sidecar_path.exists()
    assert _graph_files(tmp_path) == sorted([second.onnx_path.name, second.sidecar_path.name])


def test_read_only_weights_folder_caches_in_the_user_cache(tmp_path, monkeypatch, weights):
    shutil.copy(weights, tmp_path / "ro.safetensors")
    monkeypatch.setenv("RGBT_CACHE_DIR", str(tmp_path / "cache"))
    real = onnx_cache._writable
    monkeypatch.setattr(onnx_cache, "_writable", lambda folder: folder != tmp_path and real(folder))
    graph = ensure_graph(tmp_path / "ro.safetensors", SIZE)
    assert graph.onnx_path.parent == tmp_path / "cache"
    assert onnx_cache.find_cached(tmp_path / "ro.safetensors", SIZE, "fp32", graph.info["key"]) is not None


def test_bad_requests_name_the_problem(weights):
    with pytest.raises(BackendError, match="not bf16"):
        OnnxRuntimeEngine(weights, device="cpu", precision="bf16")
    with pytest.raises(BackendError, match="unknown backend"):
        create_engine(weights, device="cpu", backend="onnx")
    engine = OnnxRuntimeEngine(weights, device="cpu")
    engine.release()
    with pytest.raises(RuntimeError, match="released"):
        engine.infer(*_pair(SIZE, SIZE))
    with pytest.raises(ValueError, match="both rgb and thermal are missing"):
        OnnxRuntimeEngine(weights, device="cpu").infer(None, None)


def test_engine_runs_torch_free_and_builds_in_a_child_process(tmp_path, weights):
    """A process without torch loads a cached graph, and builds a missing one in a child process."""
    fresh = _save(str(tmp_path / "fresh.safetensors"), seed=5)
    probe = (
        "import json, sys\n"
        "import numpy as np\n"
        "from rgbt_perception.backends.base import DecodeSettings\n"
        "from rgbt_perception.backends.factory import create_engine\n"
        "results = {}\n"
        "for path in sys.argv[1:]:\n"
        "    engine = create_engine(path, device='cpu', backend='onnxruntime',\n"
        "                           decode=DecodeSettings(score_threshold=0.0))\n"
        "    rgb = np.full((64, 96, 3), 100, np.uint8); thermal = np.full((64, 96), 30000, np.uint16)\n"
        "    results[path] = engine.infer(rgb, thermal).mask.shape\n"
        # VmHWM, not getrusage: ru_maxrss keeps the forking parent's peak across exec.
        "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(json.dumps({'shapes': list(results.values()), 'torch': 'torch' in sys.modules,\n"
        "                  'rss_mb': peak / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, weights, fresh], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shapes"] == [[64, 96], [64, 96]] and report["torch"] is False
    assert report["rss_mb"] < 400
    assert any(name.startswith("fresh.64x96.fp32.") and name.endswith(".onnx") for name in os.listdir(tmp_path))


def test_rgbt_infer_backend_flag(tmp_path, weights):
    rng = np.random.default_rng(0)
    rgb_path, thermal_path = str(tmp_path / "a_rgb.png"), str(tmp_path / "a_th.png")
    cv2.imwrite(rgb_path, rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    cv2.imwrite(thermal_path, rng.integers(20000, 40000, (64, 96), dtype=np.uint16))
    out = tmp_path / "out"
    code = infer_cli.main(["--weights", weights, "--rgb", rgb_path, "--thermal", thermal_path, "--out", str(out),
                           "--device", "cpu", "--backend", "onnxruntime"])
    assert code == 0 and (out / "a_rgb_mask.png").is_file()
    assert infer_cli.main(["--weights", weights, "--rgb", rgb_path, "--out", str(out), "--device", "cpu",
                           "--backend", "tensorrt"]) == 2
