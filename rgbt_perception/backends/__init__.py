"""Inference backends of the engine: ``torch``, ``onnxruntime``, ``tensorrt`` and ``auto``.

- :mod:`.selection`: which backends exist here and which one ``auto`` picks (no heavy imports);
- :mod:`.onnx_graph`, :mod:`.onnx_cache`, :mod:`.onnx_build`: the ONNX graph of a weights file, built on first use and
  cached beside it, keyed by the weights' checksum, input size, precision and the network's code;
- :mod:`.onnxruntime_backend`, :mod:`.tensorrt_backend`: runners of that graph;
- :mod:`.engine`: :class:`~.engine.OnnxEngine`, the engine on those runners (torch-free with onnxruntime);
- :mod:`.numpy_ops`: its post-processing (class mask, box decoding, NMS) in NumPy;
- :mod:`.torch_backend`: the inference form of the PyTorch network the ``torch`` backend runs.

Importing this package loads neither torch nor onnxruntime.
"""
from rgbt_perception.backends.selection import (
    BACKEND_CHOICES,
    BACKENDS,
    BackendError,
    available_backends,
    parse_device,
    resolve_backend,
)

__all__ = ["BACKENDS", "BACKEND_CHOICES", "BackendError", "available_backends", "parse_device", "resolve_backend"]
