"""GPU paths of the engine: the merged network on CUDA, fp16/bf16, onnxruntime's CUDA provider, TensorRT.

Marked ``gpu`` and skipped without CUDA; ``make gpu-check`` runs them on a machine with a GPU.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rgbt_perception.backends.base import DecodeSettings
from rgbt_perception.backends.factory import create_engine
from rgbt_perception.backends.selection import onnxruntime_providers, resolve_backend
from rgbt_perception.core.classes import MFNET
from rgbt_perception.inference import InferenceEngine
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet
from rgbt_perception.model.lora_merge import check_equivalence, inference_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by make gpu-check)"),
]

SIZE = (128, 160)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=SIZE)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    path = str(tmp_path_factory.mktemp("gpu") / "micro.safetensors")
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    return path


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), rng.integers(20000, 40000, SIZE, dtype=np.uint16))


@pytest.fixture(scope="module")
def cpu_reference(weights):
    engine = InferenceEngine(weights, device="cpu", score_threshold=0.0)
    return engine.infer(*_pair())


def test_merged_batched_network_on_cuda_matches_the_original():
    torch.manual_seed(0)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE, trunk="frozen")).eval().cuda()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    fast, report = inference_model(net)
    assert report.batched and report.merged_layers > 0
    rgb, thermal = torch.rand(2, 3, *SIZE, device="cuda"), torch.rand(2, 1, *SIZE, device="cuda")
    assert check_equivalence(net, fast, (rgb, thermal)) < 1e-2  # TF32 convolutions on both sides


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_engine_on_cuda_agrees_with_the_cpu(weights, cpu_reference, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = InferenceEngine(weights, device="cuda", precision=precision, score_threshold=0.0).infer(*_pair())
    agreement = (result.mask == cpu_reference.mask).mean()
    assert agreement >= (0.995 if precision == "fp32" else 0.98), agreement
    assert result.timings_ms["forward"] > 0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_provider(weights, cpu_reference, precision):
    if "CUDAExecutionProvider" not in onnxruntime_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    engine = create_engine(weights, device="cuda", precision=precision, backend="onnxruntime",
                           decode=DecodeSettings(score_threshold=0.0))
    assert "CUDAExecutionProvider" in engine.providers
    result = engine.infer(*_pair())
    assert (result.mask == cpu_reference.mask).mean() >= (0.995 if precision == "fp32" else 0.98)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_tensorrt_engine(weights, cpu_reference, precision):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("the tensorrt package is not installed")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    engine = create_engine(weights, device="cuda", precision=precision, backend="tensorrt",
                           decode=DecodeSettings(score_threshold=0.0))
    assert engine.backend == "tensorrt" and engine.runner.plan_path.is_file()
    result = engine.infer(*_pair())
    assert (result.mask == cpu_reference.mask).mean() >= (0.995 if precision == "fp32" else 0.98)
    engine.release()


def test_auto_picks_a_gpu_backend():
    assert resolve_backend("auto", "cuda", "fp16") in ("tensorrt", "torch")
