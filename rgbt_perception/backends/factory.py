"""The one place an engine is chosen and made: :func:`create_engine`.

The backend is resolved once (:func:`~rgbt_perception.backends.selection.resolve_backend`), then
its module is imported: the onnxruntime engine never imports torch.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

from rgbt_perception.backends.base import DecodeSettings, Engine
from rgbt_perception.backends.selection import resolve_backend, resolve_precision
from rgbt_perception.core.frames import Homography

#: backend name -> ``module:class`` of its engine (imported only when chosen).
ENGINE_CLASSES = {
    "torch": "rgbt_perception.backends.torch_engine:InferenceEngine",
    "onnxruntime": "rgbt_perception.backends.onnxruntime_backend:OnnxRuntimeEngine",
    "tensorrt": "rgbt_perception.backends.tensorrt_backend:TensorRTEngine",
    "torch_resident": "rgbt_perception.backends.resident_engine:ResidentEngine",
    "torch_graphs": "rgbt_perception.backends.resident_engine:GraphEngine",
    "torch_compiled": "rgbt_perception.backends.resident_engine:CompiledEngine",
}


def engine_class(backend: str) -> type:
    """The engine class of a concrete backend name."""
    module_name, class_name = ENGINE_CLASSES[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_engine(
    weights: str | os.PathLike,
    device: str = "auto",
    precision: str = "fp32",
    backend: str = "torch",
    *,
    decode: DecodeSettings | None = None,
    thermal_to_rgb: Homography = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Engine:
    """An engine for a node weights file.

    Args:
        weights: node weights file (``.safetensors``, see :mod:`rgbt_perception.io.weights`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``fp16`` (CUDA), ``bf16`` or ``auto``
            (:func:`~rgbt_perception.backends.selection.resolve_precision`).
        backend: ``torch``, ``onnxruntime``, ``tensorrt``, ``torch_resident`` / ``torch_graphs`` /
            ``torch_compiled`` (the per-frame step on the device: eager, CUDA graph, compiled) or ``auto``
            (the fastest available here).
        decode: box decoding (score threshold, NMS IoU, caps); default: what the node publishes.
        thermal_to_rgb: default 3x3 thermal-to-RGB homography (``None``: same field of view).
        threads: onnxruntime intra-op threads (other backends ignore it).
        log: told about graph and engine builds, compilation, and fallbacks of the resident engines.

    Raises ``ValueError`` (:class:`~rgbt_perception.backends.selection.BackendError` for a backend
    that cannot run here, ``WeightsError`` for a bad file) naming the problem.
    """
    precision = resolve_precision(precision, str(device))
    concrete = resolve_backend(backend, str(device), precision)
    options = {"decode": decode or DecodeSettings(), "thermal_to_rgb": thermal_to_rgb}
    if concrete != "torch":
        options.update(threads=threads, log=log)
    return engine_class(concrete)(weights, device=device, precision=precision, **options)
