"""Which inference backend runs the network, decided without importing torch.

``torch``: eager PyTorch with the LoRA adapters merged per modality and both cameras in one trunk
pass (:mod:`rgbt_perception.model.lora_merge`); every device and precision.
``onnxruntime``: the network exported to ONNX (built from the weights file on first use, cached;
:mod:`rgbt_perception.backends.onnx_cache`), run by ONNX Runtime with its CPU provider, or its CUDA /
TensorRT providers where the installed build has them; fp32, and fp16 on CUDA.
``tensorrt``: the same ONNX file compiled into a TensorRT engine (needs the ``tensorrt`` package and a
CUDA GPU); fp32, fp16 and bf16.
``torch_resident``, ``torch_graphs``, ``torch_compiled``: the whole per-frame step on the device
(:mod:`rgbt_perception.backends.resident_engine`): eager, replayed as a CUDA graph (CUDA only), or with
the network compiled by ``torch.compile`` (CUDA with Triton only: on the CPU it lost to onnxruntime).
``auto``: the fastest one available for the device and precision (see :data:`AUTO_ORDER`); on a GPU
for which ``make gpu-check`` recorded which paths passed their mask-agreement check, the fastest of
those (:func:`measured_order`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from rgbt_perception.core.defaults import BACKEND_CHOICES, PRECISIONS

# Preference of ``auto``, fastest first, per device type. CPU: onnxruntime ran the merged micro network
# faster than PyTorch (docs/benchmarks.md, "Inference speed"); CUDA: TensorRT, then PyTorch, whose merged
# and batched trunk runs at fp16/bf16 with autocast (ONNX Runtime's CUDA provider runs fp16 graphs only).
AUTO_ORDER = {"cpu": ("onnxruntime", "torch"), "cuda": ("tensorrt", "torch", "onnxruntime")}
#: The backends that run the whole per-frame step on the device.
RESIDENT_BACKENDS = ("torch_resident", "torch_graphs", "torch_compiled")
#: ``make gpu-check``'s record of the GPU paths that passed their agreement check, fastest first.
MEASURED_PATHS = "engine_paths.json"
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


def user_cache_root() -> Path:
    """``$RGBT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rgbt_perception``, else ``~/.cache/rgbt_perception``."""
    if os.environ.get("RGBT_CACHE_DIR"):
        return Path(os.environ["RGBT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rgbt_perception"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's model name from the driver (``/proc/driver/nvidia``), without torch."""
    try:
        folders = sorted(os.listdir("/proc/driver/nvidia/gpus"))
        with open(os.path.join("/proc/driver/nvidia/gpus", folders[0], "information")) as handle:
            for line in handle:
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    except (OSError, IndexError):
        return None
    return None


def measured_order(precision: str) -> list[str] | None:
    """The backends ``make gpu-check`` measured on this machine's GPU at ``precision`` whose masks
    passed the agreement check, fastest first (``None`` without such a record)."""
    name = gpu_name()
    try:
        with open(user_cache_root() / MEASURED_PATHS) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    order = record.get(name, {}).get(precision) if isinstance(record, dict) and name else None
    return [str(b) for b in order] if isinstance(order, list) and order else None


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def unavailable_reason(backend: str, device_type: str, precision: str) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device_type`` here (``None`` when it can)."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
    if device_type == "cpu" and precision == "fp16":
        return "precision fp16 needs a CUDA device; on CPU use fp32 or bf16"
    if backend == "torch" or backend in RESIDENT_BACKENDS:
        return _torch_reason(backend, device_type)
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
    return f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}"


def _torch_reason(backend: str, device_type: str) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if backend == "torch_graphs" and device_type != "cuda":
        return "CUDA graphs need a CUDA device; on the CPU use torch_resident"
    if backend == "torch_compiled" and device_type == "cpu":
        # Measured (docs/benchmarks.md, "The per-frame step on the GPU"): 12 min to compile micro, then
        # slower than onnxruntime's engine; a path that does not win is not offered.
        return "torch.compile on the CPU ran slower than the onnxruntime engine; use onnxruntime (or torch)"
    if backend == "torch_compiled" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs the triton package"
    return None


def available_backends(device: str = "auto", precision: str = "fp32") -> list[str]:
    """Backends that can run ``precision`` on ``device`` here, fastest first (``auto``'s order)."""
    kind, _ = parse_device(device)
    order = (measured_order(precision) if kind == "cuda" else None) or AUTO_ORDER[kind]
    return [b for b in order if unavailable_reason(b, kind, precision) is None]


def resolve_backend(backend: str, device: str = "auto", precision: str = "fp32") -> str:
    """The concrete backend for ``backend`` (``auto`` picks the first available of :data:`AUTO_ORDER`).

    Raises :class:`BackendError` naming why a requested backend cannot run here.
    """
    name = str(backend).strip().lower()
    if name not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}")
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
