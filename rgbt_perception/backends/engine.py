"""The inference engine on an exported graph (onnxruntime or TensorRT), without torch.

:class:`OnnxEngine` has the interface of :class:`rgbt_perception.inference.InferenceEngine` (``infer``,
``infer_batch``, ``draw``, ``colorize``, ``release``, ``class_names``, ``palette``, ``input_size``,
``device`` ...) and does the same per-frame work: registration of thermal onto the RGB grid, scaling
and resizing (:func:`~rgbt_perception.core.preprocess.to_model_arrays`, into reused buffers), the
network (one ``run`` of the cached graph per pair; a missing camera is fed as zeros and flagged absent
in ``present``), and NumPy post-processing (:mod:`rgbt_perception.backends.numpy_ops`). With the
onnxruntime backend nothing here imports torch: the weights file's metadata is read from its
safetensors header, and a missing graph is built by a child process.

``InferenceEngine(weights, backend="onnxruntime" | "tensorrt")`` returns one of these.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from rgbt_perception.backends.numpy_ops import MaskBuffers, decode_boxes, semantic_mask
from rgbt_perception.backends.onnx_graph import ensure_graph
from rgbt_perception.backends.selection import (
    BackendError,
    cuda_available,
    parse_device,
    resolve_backend,
    resolve_precision,
)
from rgbt_perception.core.frames import (  # noqa: F401  (the engine's result types)
    Detection,
    Homography,
    InferenceResult,
    batch_items,
    detections_on_output,
    prepare_frame,
)
from rgbt_perception.core.overlay import blend_overlay, colorize_mask, draw_detections, gray_to_rgb, palette_lut
from rgbt_perception.core.preprocess import InputBuffers, to_model_arrays
from rgbt_perception.core.registration import parse_homography
from rgbt_perception.io.weights import read_metadata


def box_levels(named: dict[str, Any], to_host: Callable[[Any], np.ndarray]) -> dict[str, list[np.ndarray]]:
    """``{"boxes.cls.0": a, ...}`` -> ``{"cls": [a, ...], "reg": [...], "ctr": [...]}`` as host arrays."""
    levels: dict[str, dict[int, np.ndarray]] = {}
    for name, value in named.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "boxes" and parts[2].isdigit():
            levels.setdefault(parts[1], {})[int(parts[2])] = to_host(value)
    return {part: [by_level[i] for i in sorted(by_level)] for part, by_level in levels.items()}


class OnnxEngine:
    """Engine on the cached ONNX graph of a weights file (see the module docstring).

    Args:
        weights: node weights file (``.safetensors``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: onnxruntime: ``fp32`` (``fp16`` on CUDA, its own graph); TensorRT: ``fp32``, ``fp16``, ``bf16``;
            ``auto`` as in :func:`~rgbt_perception.backends.selection.resolve_precision`.
        score_threshold, nms_iou, max_detections, max_per_class: box decoding; ``None`` takes the
            network's defaults (``BoxHead.decode``'s, recorded with the graph).
        thermal_to_rgb: default 3x3 thermal-to-RGB homography (``None``: same field of view).
        backend: ``"onnxruntime"``, ``"tensorrt"`` or ``"auto"`` (which must not resolve to torch).
        threads: onnxruntime intra-op threads (default: ``OMP_NUM_THREADS``, else onnxruntime's).
        log: ``callable(str)`` told about graph and engine builds.
    """

    model = None  # no torch module here (InferenceEngine's attribute of the same name)

    def __init__(
        self,
        weights: str | os.PathLike,
        device: str = "auto",
        precision: str = "fp32",
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        thermal_to_rgb: Homography = None,
        backend: str = "onnxruntime",
        threads: int | None = None,
        max_per_class: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        precision = resolve_precision(precision, str(device))
        self.backend = resolve_backend(backend, str(device), precision)
        if self.backend == "torch":
            raise BackendError(f"backend {backend!r} resolves to torch here; use InferenceEngine for it")
        kind, index = parse_device(str(device))
        if kind == "cuda" and not cuda_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available on this machine")
        self.metadata = read_metadata(weights)
        self.precision = precision
        self.input_size: tuple[int, int] = tuple(int(v) for v in self.metadata.input_size)
        self._device = "cpu" if kind == "cpu" else f"cuda:{index}"
        graph_precision = precision if self.backend == "onnxruntime" else "fp32"
        self.graph = ensure_graph(weights, self.input_size, graph_precision, device=self._device, log=log)
        if self.backend == "onnxruntime":
            from rgbt_perception.backends.onnxruntime_backend import OnnxRuntimeRunner

            self._runner: Any = OnnxRuntimeRunner(self.graph, kind, index, threads, precision)
        else:
            from rgbt_perception.backends.tensorrt_backend import TensorRTRunner

            self._runner = TensorRTRunner(self.graph, index, precision, log)
        info = self.graph.info
        if list(info.get("class_names", self.metadata.class_names)) != list(self.metadata.class_names):
            raise BackendError(f"the cached graph {str(self.graph.onnx_path)!r} was built for other classes")
        self._strides = [int(s) for s in info["box_strides"]]
        defaults = dict(info.get("decode_defaults", {}))

        def pick(value: Any, name: str) -> Any:
            if value is not None:
                return value
            if name not in defaults:
                raise BackendError(f"the cached graph records no default {name}; pass it explicitly")
            return defaults[name]

        self.score_threshold = float(pick(score_threshold, "score_threshold"))
        self.nms_iou = float(pick(nms_iou, "nms_iou"))
        self.max_detections = int(pick(max_detections, "max_detections"))
        self.max_per_class = int(pick(max_per_class, "max_per_class"))
        self._pre_nms = int(defaults.get("pre_nms_per_level", 1000))
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in 0..1, got {score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1], got {nms_iou}")
        if self.max_detections < 1 or self.max_per_class < 1:
            raise ValueError(f"max_detections and max_per_class must be >= 1, got {max_detections}, {max_per_class}")
        self.thermal_to_rgb = None if thermal_to_rgb is None else parse_homography(thermal_to_rgb)
        self.class_names: list[str] = list(self.metadata.class_names)
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in self.metadata.palette]
        self.scaling = self.metadata.scaling
        self._palette_lut = palette_lut(self.palette)
        self._buffers = InputBuffers()
        self._mask_buffers = MaskBuffers()
        self._zeros: dict[str, np.ndarray] = {}  # stand-ins for a missing camera, made when first needed
        self._present = {(r, t): np.array([[r, t]], dtype=bool) for r in (False, True) for t in (False, True)}

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def runner(self) -> Any:
        """The graph runner (``run(rgb, thermal, present)``), e.g. to time the bare network."""
        return self._require_runner()

    @property
    def providers(self) -> list[str]:
        """The runtime actually used: onnxruntime's active providers, or ``["TensorRT"]``."""
        return list(getattr(self._runner, "active_providers", ["TensorRT"])) if self._runner is not None else []

    # -- public API ---------------------------------------------------------------------------
    def infer(self, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography = None,
              overlay: bool = False, output_size: Sequence[int] | None = None) -> InferenceResult:
        """Segment and detect on one pair (either image may be ``None``); arguments as
        ``InferenceEngine.infer`` (``output_size``: the RGB grid of a thermal-only call)."""
        sizes = None if output_size is None else [output_size]
        return self.infer_batch([(rgb, thermal)], homographies=[homography], overlay=overlay, output_sizes=sizes)[0]

    def infer_batch(
        self,
        pairs: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
        homographies: Sequence[Homography] | None = None,
        overlay: bool = False,
        output_sizes: Sequence[Sequence[int] | None] | None = None,
    ) -> list[InferenceResult]:
        """Run several pairs (the graph has batch 1: one run per pair); timings cover the whole call."""
        runner = self._require_runner()
        items = batch_items(pairs, homographies, output_sizes)
        if not items:
            return []
        start = time.perf_counter()
        prepared = [self._prepare(*item) for item in items]
        preprocessed = time.perf_counter()
        outputs = [runner.run(item["rgb"], item["thermal"], item["present"]) for item in prepared]
        runner.synchronize()
        forwarded = time.perf_counter()
        results = [self._postprocess(named, item, overlay) for named, item in zip(outputs, prepared)]
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "forward": (forwarded - preprocessed) * 1e3,
            "postprocess": (done - forwarded) * 1e3,
            "total": (done - start) * 1e3,
        }
        for result in results:
            result.timings_ms = dict(timings)
        return results

    def release(self) -> None:
        """Drop the runtime session (and GPU memory); the engine cannot infer afterwards."""
        if self._runner is not None:
            self._runner.release()
            self._runner = None

    def draw(self, image: np.ndarray, mask: np.ndarray, detections: Sequence[Detection],
             alpha: float = 0.5) -> np.ndarray:
        """Colour overlay of ``mask`` and ``detections`` on an RGB (or single-channel thermal) image."""
        backdrop = image if image.ndim == 3 else gray_to_rgb(image)
        return draw_detections(blend_overlay(backdrop, mask, self._palette_lut, alpha), detections, self._palette_lut)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """HxW class ids -> HxWx3 uint8 colours of this model's palette."""
        return colorize_mask(mask, self._palette_lut)

    # -- steps ----------------------------------------------------------------------------------
    def _require_runner(self) -> Any:
        if self._runner is None:
            raise RuntimeError("the inference engine was released; create a new one")
        return self._runner

    def _prepare(self, index: int, rgb: np.ndarray | None, thermal: np.ndarray | None,
                 homography: Homography, requested_size: Sequence[int] | None = None) -> dict[str, Any]:
        frame = prepare_frame(index, rgb, thermal, self.thermal_to_rgb if homography is None else homography,
                              requested_size)
        rgb_array, thermal_array = to_model_arrays(frame.rgb, frame.thermal, self.input_size, self.scaling,
                                                   self._buffers, index)
        return {
            "rgb": self._stand_in("rgb", 3) if rgb_array is None else rgb_array,
            "thermal": self._stand_in("thermal", 1) if thermal_array is None else thermal_array,
            "present": self._present[(frame.rgb is not None, frame.thermal is not None)],
            "size": frame.size,
            "backdrop": frame.backdrop,
        }

    def _stand_in(self, camera: str, channels: int) -> np.ndarray:
        """Zeros for a missing camera: the network ignores them (``present`` False)."""
        if camera not in self._zeros:
            self._zeros[camera] = np.zeros((1, channels, *self.input_size), np.float32)
        return self._zeros[camera]

    def _postprocess(self, named: dict[str, Any], item: dict[str, Any], overlay: bool) -> InferenceResult:
        runner = self._runner
        out_h, out_w = item["size"]
        if hasattr(runner, "semantic_mask"):
            mask = runner.semantic_mask(named["semantic"], (out_h, out_w))
        else:
            mask = semantic_mask(np.asarray(named["semantic"])[0], (out_h, out_w), self._mask_buffers)
        to_host = getattr(runner, "to_host", np.asarray)
        decoded = decode_boxes(box_levels(named, to_host), self._strides, self.score_threshold, self.nms_iou,
                               self.max_detections, self.max_per_class, self._pre_nms)[0]
        detections = detections_on_output(decoded["boxes"], decoded["scores"], decoded["labels"], self.class_names,
                                          self.input_size, (out_h, out_w))
        drawn = self.draw(item["backdrop"], mask, detections) if overlay else None
        return InferenceResult(mask=mask, detections=detections, overlay=drawn)
