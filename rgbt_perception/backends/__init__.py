"""Inference engines: one interface, one factory, one module per backend.

- :mod:`.base`: the :class:`~.base.Engine` interface and :class:`~.base.FrameEngine`, the per-frame work
  every backend shares (registration, preprocessing, results, drawing, timings);
- :mod:`.factory`: :func:`~.factory.create_engine`, the one place an engine is chosen and made;
- :mod:`.selection`: which backends exist here and which one ``auto`` picks (no heavy imports);
- :mod:`.torch_engine`: ``torch``, the network in PyTorch with the LoRA adapters merged;
- :mod:`.onnx_engine`: what the graph backends share; :mod:`.onnxruntime_backend` (``onnxruntime``) and
  :mod:`.tensorrt_backend` (``tensorrt``) run it;
- :mod:`.onnx_graph`, :mod:`.onnx_cache`, :mod:`.onnx_build`: the ONNX graph of a weights file, built on first use
  and cached beside it, keyed by the weights' checksum, input size, precision and the network's code;
- :mod:`.numpy_ops`: post-processing in NumPy/OpenCV (class mask, box decoding, NMS).
- :mod:`.resident_engine`: ``torch_resident``, ``torch_graphs``, ``torch_compiled``: the whole per-frame step on
  the device (eager, one CUDA graph per frame geometry, compiled network), with :mod:`.torch_ops`, the
  pre/post-processing in torch with static shapes.

Importing this package loads neither torch nor onnxruntime.
"""
from rgbt_perception.backends.selection import BackendError, available_backends, parse_device, resolve_backend
from rgbt_perception.core.defaults import BACKEND_CHOICES, BACKENDS

__all__ = ["BACKENDS", "BACKEND_CHOICES", "BackendError", "available_backends", "parse_device", "resolve_backend"]
