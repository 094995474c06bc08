"""Backend selection: names, availability reasons, what ``auto`` picks; all without torch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rgbt_perception.backends import selection
from rgbt_perception.backends.selection import (
    AUTO_ORDER,
    BackendError,
    available_backends,
    parse_device,
    resolve_backend,
    resolve_precision,
    unavailable_reason,
)
from rgbt_perception.core.defaults import BACKEND_CHOICES


def test_auto_on_cpu_prefers_onnxruntime_and_falls_back_to_torch_for_bf16():
    assert resolve_backend("auto", "cpu", "fp32") == "onnxruntime"
    assert available_backends("cpu", "fp32") == ["onnxruntime", "torch"]
    # onnxruntime has no bf16 path: auto takes the next one that has.
    assert resolve_backend("auto", "cpu", "bf16") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"


@pytest.mark.parametrize("has_bf16,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu_and_leaves_explicit_choices_alone(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(selection, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(selection, "cuda_available", lambda: False)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("AUTO", "auto") == expected  # no GPU: the CPU decides
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    # auto + auto: the fastest engine within the measured mask tolerance on that CPU.
    assert resolve_backend("auto", "cpu", resolve_precision("auto", "cpu")) == (
        "torch" if has_bf16 else "onnxruntime")
    with pytest.raises(BackendError, match="unknown device"):
        resolve_precision("auto", "tpu")


def test_cpu_bf16_flags_are_read_from_cpuinfo():
    with open("/proc/cpuinfo") as handle:
        flags = handle.read()
    assert selection.cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("backend,device,precision,reason", [
    ("tensorrt", "cpu", "fp32", "TensorRT needs a CUDA device"),
    ("onnxruntime", "cpu", "bf16", "not bf16"),
    ("torch", "cpu", "fp16", "fp16 needs a CUDA device"),
    ("onnx", "cpu", "fp32", "unknown backend 'onnx'"),
])
def test_a_backend_that_cannot_run_says_why(backend, device, precision, reason):
    with pytest.raises(BackendError, match=reason):
        resolve_backend(backend, device, precision)


def test_devices_parse_and_unknown_ones_are_named():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("auto")[0] in ("cpu", "cuda")
    for bad in ("gpu", "cpu:1", "cuda:x"):
        with pytest.raises(BackendError, match="unknown device"):
            parse_device(bad)
    assert unavailable_reason("onnxruntime", "cpu", "fp32") is None
    assert set(AUTO_ORDER) == {"cpu", "cuda"}


def test_selection_and_metadata_load_without_torch(tmp_path):
    """The node's onnxruntime path decides its backend and reads the weights' metadata torch-free."""
    probe = (
        "import json, sys\n"
        "from rgbt_perception.backends import resolve_backend\n"
        "from rgbt_perception.backends.factory import create_engine\n"
        "from rgbt_perception.backends.onnxruntime_backend import OnnxRuntimeEngine\n"
        "from rgbt_perception.io.weights import read_metadata\n"
        "from rgbt_perception.node.parameters import PARAMETER_SPECS\n"
        "m = read_metadata(sys.argv[1])\n"
        "print(json.dumps({'backend': resolve_backend('auto', 'cpu'), 'classes': len(m.class_names),\n"
        "                  'choices': list(PARAMETER_SPECS['backend'].choices),\n"
        "                  'heavy': [n for n in ('torch', 'timm', 'peft', 'torchvision') if n in sys.modules]}))\n"
    )
    from rgbt_perception.node.parameters import DEFAULT_WEIGHTS

    result = subprocess.run([sys.executable, "-c", probe, str(DEFAULT_WEIGHTS)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"backend": "onnxruntime", "classes": report["classes"],
                      "choices": list(BACKEND_CHOICES), "heavy": []}
    assert report["choices"][:3] == ["torch", "onnxruntime", "tensorrt"] and report["choices"][-1] == "auto"
    assert report["classes"] > 1
