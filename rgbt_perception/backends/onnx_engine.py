"""The engine on a weights file's exported ONNX graph: what the onnxruntime and TensorRT backends share.

:class:`OnnxEngine` reads the weights file's metadata from its safetensors header, builds (in a
child process) or reuses the cached graph (:mod:`rgbt_perception.backends.onnx_graph`), and runs it
with a runner its subclass makes (:class:`~rgbt_perception.backends.onnxruntime_backend.OnnxRuntimeEngine`,
:class:`~rgbt_perception.backends.tensorrt_backend.TensorRTEngine`). The graph has batch 1: one run per
pair; a missing camera is fed as zeros and flagged absent in ``present``. Post-processing is NumPy
(:mod:`rgbt_perception.backends.numpy_ops`) unless the runner computes the class mask itself.
Nothing here imports torch.
"""
from __future__ import annotations

import abc
import os
from typing import Any, Callable

import numpy as np

from rgbt_perception.backends.base import DecodeSettings, FrameEngine, FrameOutput, PreparedPair, require_finite
from rgbt_perception.backends.numpy_ops import MaskBuffers, decode_boxes, semantic_mask
from rgbt_perception.backends.onnx_cache import CachedGraph
from rgbt_perception.backends.onnx_graph import ensure_graph
from rgbt_perception.backends.selection import (
    BackendError,
    cuda_available,
    parse_device,
    resolve_precision,
    unavailable_reason,
)
from rgbt_perception.core.frames import Homography
from rgbt_perception.io.weights import read_metadata


def box_levels(named: dict[str, Any], to_host: Callable[[Any], np.ndarray]) -> dict[str, list[np.ndarray]]:
    """``{"boxes.cls.0": a, ...}`` -> ``{"cls": [a, ...], "reg": [...], "ctr": [...]}`` as host arrays."""
    levels: dict[str, dict[int, np.ndarray]] = {}
    for name, value in named.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "boxes" and parts[2].isdigit():
            levels.setdefault(parts[1], {})[int(parts[2])] = to_host(value)
    return {part: [by_level[i] for i in sorted(by_level)] for part, by_level in levels.items()}


class OnnxEngine(FrameEngine):
    """Engine on the cached ONNX graph of a weights file (see the module docstring).

    Args:
        weights: node weights file (``.safetensors``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: as the backend allows (onnxruntime: fp32, fp16 on CUDA; TensorRT: fp32, fp16, bf16);
            ``auto`` as :func:`~rgbt_perception.backends.selection.resolve_precision`.
        decode: box decoding (default: the published boxes' settings).
        thermal_to_rgb: default 3x3 thermal-to-RGB homography (``None``: same field of view).
        threads: onnxruntime intra-op threads (default: ``OMP_NUM_THREADS``, else onnxruntime's).
        log: ``callable(str)`` told about graph and engine builds.
    """

    model = None  # no torch module here (the torch engine's attribute of the same name)
    #: Precision the graph itself is exported in for a requested precision (TensorRT builds its own from fp32).
    graph_precision: Callable[[str], str] = staticmethod(lambda precision: precision)

    def __init__(self, weights: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                 decode: DecodeSettings | None = None, thermal_to_rgb: Homography = None,
                 threads: int | None = None, log: Callable[[str], None] | None = None) -> None:
        self.precision = resolve_precision(precision, str(device))
        kind, index = parse_device(str(device))
        if kind == "cuda" and not cuda_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available on this machine")
        reason = unavailable_reason(self.backend, kind, self.precision)
        if reason is not None:
            raise BackendError(f"backend {self.backend} cannot run {self.precision} on {kind}: {reason}")
        self.metadata = read_metadata(weights)
        self._device = "cpu" if kind == "cpu" else f"cuda:{index}"
        self._init_common(self.metadata.class_names, self.metadata.palette, self.metadata.input_size,
                          self.metadata.scaling, decode or DecodeSettings(), thermal_to_rgb)
        self.graph = ensure_graph(weights, self.input_size, self.graph_precision(self.precision), device=self._device,
                                  log=log)
        info = self.graph.info
        if list(info.get("class_names", self.class_names)) != self.class_names:
            raise BackendError(f"the cached graph {str(self.graph.onnx_path)!r} was built for other classes")
        self._strides = [int(s) for s in info["box_strides"]]
        self._pre_nms = int(dict(info.get("decode_defaults", {})).get("pre_nms_per_level", 1000))
        self._runner: Any = self._make_runner(self.graph, kind, index, threads, log)
        self._mask_buffers = MaskBuffers()
        self._zeros: dict[str, np.ndarray] = {}  # stand-ins for a missing camera, made when first needed
        self._present = {(r, t): np.array([[r, t]], dtype=bool) for r in (False, True) for t in (False, True)}

    @abc.abstractmethod
    def _make_runner(self, graph: CachedGraph, device_type: str, device_index: int, threads: int | None,
                     log: Callable[[str], None] | None) -> Any:
        """The runner of ``graph``: ``run(rgb, thermal, present) -> {output name: array}``, ``synchronize()``,
        ``release()``; optionally ``semantic_mask(logits, size)`` and ``to_host(value)``."""

    @property
    def device(self) -> str:
        return self._device

    @property
    def runner(self) -> Any:
        """The graph runner (``run(rgb, thermal, present)``), e.g. to time the bare network."""
        if self._runner is None:
            raise RuntimeError("the inference engine was released; create a new one")
        return self._runner

    @property
    def providers(self) -> list[str]:
        """The runtime actually used: onnxruntime's active providers, or ``["TensorRT"]``."""
        return list(getattr(self._runner, "active_providers", ["TensorRT"])) if self._runner is not None else []

    # -- backend steps ----------------------------------------------------------------------------
    def _forward(self, inputs: list[PreparedPair]) -> list[dict[str, Any]]:
        runner = self.runner
        outputs = [runner.run(self._stand_in("rgb", 3) if item.rgb is None else item.rgb,
                              self._stand_in("thermal", 1) if item.thermal is None else item.thermal,
                              self._present[item.pattern])
                   for item in inputs]
        runner.synchronize()
        return outputs

    def _stand_in(self, camera: str, channels: int) -> np.ndarray:
        """Zeros for a missing camera: the network ignores them (``present`` False)."""
        if camera not in self._zeros:
            self._zeros[camera] = np.zeros((1, channels, *self.input_size), np.float32)
        return self._zeros[camera]

    def _postprocess_batch(self, raw: list[dict[str, Any]], prepared: list[PreparedPair]) -> list[FrameOutput]:
        runner = self.runner
        to_host = getattr(runner, "to_host", np.asarray)
        results = []
        for named, item in zip(raw, prepared):
            levels = box_levels(named, to_host)
            if hasattr(runner, "semantic_mask"):
                mask = runner.semantic_mask(named["semantic"], item.size)
            else:
                logits = np.asarray(named["semantic"])[0]
                require_finite(bool(np.isfinite(logits).all()), "class scores")
                mask = semantic_mask(logits, item.size, self._mask_buffers)
            require_finite(all(np.isfinite(a).all() for a in levels.get("reg", [])), "boxes")
            decoded = decode_boxes(levels, self._strides, self.decode.score_threshold, self.decode.nms_iou,
                                   self.decode.max_detections, self.decode.max_per_class, self._pre_nms)[0]
            results.append(FrameOutput(mask, decoded["boxes"], decoded["scores"], decoded["labels"]))
        return results

    def _release(self) -> None:
        if self._runner is not None:
            self._runner.release()
            self._runner = None
