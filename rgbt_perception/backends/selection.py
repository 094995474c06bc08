"""Which inference backend runs the network, decided without importing torch.

``torch``: eager PyTorch with the LoRA adapters merged per modality and both cameras in one trunk
pass (:mod:`rgbt_perception.model.lora_merge`); every device and precision.
``onnxruntime``: the network exported to ONNX (built from the weights file on first use, cached;
:mod:`rgbt_perception.backends.onnx_cache`), run by ONNX Runtime with its CPU provider, or its CUDA /
TensorRT providers where the installed build has them; fp32, and fp16 on CUDA.
``tensorrt``: the same ONNX file compiled into a TensorRT engine (needs the ``tensorrt`` package and a
CUDA GPU); fp32, fp16 and bf16.
``auto``: the fastest one available for the device and precision (see :data:`AUTO_ORDER`).
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Sequence

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
BACKEND_CHOICES = BACKENDS  # what command lines and the node parameter offer
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_CHOICES = (*PRECISIONS, "auto")  # what command lines and the node parameter offer
# Preference of ``auto``, fastest first, per device type. CPU: onnxruntime ran the merged micro network
# faster than PyTorch (docs/benchmarks.md, "Inference speed"); CUDA: TensorRT, then PyTorch, whose merged
# and batched trunk runs at fp16/bf16 with autocast (ONNX Runtime's CUDA provider runs fp16 graphs only).
AUTO_ORDER = {"cpu": ("onnxruntime", "torch"), "cuda": ("tensorrt", "torch", "onnxruntime")}
_DEVICE = re.compile(r"^(auto|cpu|cuda)(:(\d+))?$")


class BackendError(ValueError):
    """A backend that is unknown, not installed, or cannot run the requested device or precision."""


def onnxruntime_providers() -> list[str]:
    """Execution providers of the installed onnxruntime (empty when it is not installed)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def cuda_available() -> bool:
    """Whether a CUDA GPU can be used, without importing torch when it is not loaded yet.

    With torch already imported its answer counts; otherwise an NVIDIA driver must list a GPU
    (``/proc/driver/nvidia/gpus``) or ``CUDA_VISIBLE_DEVICES`` hide them all.
    """
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` -> ``(type, index)``; ``auto`` becomes CUDA when a
    GPU is available, else CPU. Raises :class:`BackendError` for other names."""
    match = _DEVICE.match(str(device).strip().lower())
    if match is None or (match.group(1) != "cuda" and match.group(2)):
        raise BackendError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    kind = match.group(1)
    if kind == "auto":
        kind = "cuda" if cuda_available() else "cpu"
    return kind, int(match.group(3) or 0)


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (oneDNN's fast bf16 paths)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str = "auto") -> str:
    """The concrete precision for ``precision``; other names than ``auto`` come back unchanged.

    ``auto``: ``bf16`` on a CPU with AVX512-BF16 or AMX (twice the fp32 engine's speed there, masks
    equal to fp32 on 99.96 % of the synthetic val split's pixels; docs/benchmarks.md), ``fp16`` on
    CUDA, ``fp32`` on other CPUs.
    """
    name = str(precision).strip().lower()
    if name != "auto":
        return name
    kind, _ = parse_device(device)
    if kind == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def unavailable_reason(backend: str, device_type: str, precision: str) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device_type`` here (``None`` when it can)."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
    if device_type == "cpu" and precision == "fp16":
        return "precision fp16 needs a CUDA device; on CPU use fp32 or bf16"
    if backend == "torch":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None
    if backend == "onnxruntime":
        providers = onnxruntime_providers()
        if not providers:
            return "onnxruntime is not installed"
        if device_type == "cuda" and "CUDAExecutionProvider" not in providers:
            return f"this onnxruntime build has no CUDA provider (it has {', '.join(providers)})"
        if precision == "bf16":
            return "onnxruntime runs fp32 (and fp16 on CUDA), not bf16; use backend torch or tensorrt for bf16"
        return None
    if backend == "tensorrt":
        if device_type != "cuda":
            return "TensorRT needs a CUDA device"
        if not tensorrt_installed():
            return "the tensorrt package is not installed"
        if importlib.util.find_spec("torch") is None:
            return "the tensorrt backend uses torch for its CUDA buffers, and torch is not installed"
        return None
    return f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}"


def available_backends(device: str = "auto", precision: str = "fp32") -> list[str]:
    """Backends that can run ``precision`` on ``device`` here, fastest first (``auto``'s order)."""
    kind, _ = parse_device(device)
    return [b for b in AUTO_ORDER[kind] if unavailable_reason(b, kind, precision) is None]


def resolve_backend(backend: str, device: str = "auto", precision: str = "fp32") -> str:
    """The concrete backend for ``backend`` (``auto`` picks the first available of :data:`AUTO_ORDER`).

    Raises :class:`BackendError` naming why a requested backend cannot run here.
    """
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    kind, _ = parse_device(device)
    if name == "auto":
        found = available_backends(device, precision)
        if not found:
            reasons = "; ".join(f"{b}: {unavailable_reason(b, kind, precision)}" for b in AUTO_ORDER[kind])
            raise BackendError(f"no backend can run {precision} on {kind}: {reasons}")
        return found[0]
    reason = unavailable_reason(name, kind, precision)
    if reason is not None:
        raise BackendError(f"backend {name} cannot run {precision} on {kind}: {reason}")
    return name


def describe_backends(devices: Sequence[str] = ("cpu", "cuda")) -> dict[str, dict[str, str | None]]:
    """``{device: {backend: reason it is unavailable or None}}`` at fp32, for reports."""
    return {d: {b: unavailable_reason(b, d, "fp32") for b in BACKENDS if b != "auto"} for d in devices}
