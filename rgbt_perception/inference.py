"""Inference engine: raw RGB + thermal frames in, class mask, detections and overlay out.

One engine serves the node, ``rgbt-infer``, evaluation and benchmarks, so all of them share
registration, preprocessing and post-processing.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rgbt_perception.backends.numpy_ops import MaskBuffers, semantic_mask
from rgbt_perception.backends.selection import resolve_backend, resolve_precision
from rgbt_perception.backends.torch_backend import inference_network, store_autocast_weights
from rgbt_perception.core.device import PRECISIONS, check_precision, resolve_device  # noqa: F401  (engine API)
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
from rgbt_perception.io.weights import WeightsMetadata, load_weights
from rgbt_perception.model.heads.boxes import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_PER_CLASS,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
)
from rgbt_perception.model.network import RGBTNet


class InferenceEngine:
    """Runs an :class:`RGBTNet` on raw frames.

    Args:
        weights: node weights file (see :mod:`rgbt_perception.io.weights`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``; on CUDA also ``"fp16"`` and ``"bf16"`` (autocast); on CPU ``"bf16"``;
            ``"auto"``: bf16 on CPUs with AVX512-BF16/AMX, fp16 on CUDA, else fp32
            (:func:`~rgbt_perception.backends.selection.resolve_precision`).
        score_threshold, nms_iou, max_detections: box decoding (class-wise NMS, then at most
            ``max_per_class`` boxes per class; the defaults publish only confident boxes; pass
            ``score_threshold=0`` to score mAP over the whole score range).
        thermal_to_rgb: default 3x3 homography from thermal to RGB pixels, used when a call
            gives none; ``None`` means both cameras share the field of view (plain resize).
        backend: ``"torch"`` (this class: the network with LoRA merged per modality; on a GPU both
            cameras in one trunk pass), ``"onnxruntime"`` or ``"tensorrt"`` (an
            :class:`~rgbt_perception.backends.engine.OnnxEngine` on the weights' cached ONNX graph, same
            interface), or ``"auto"`` (the fastest available, see :mod:`rgbt_perception.backends`).
    """

    def __new__(cls, weights: str | os.PathLike | None = None, *args: Any, backend: str = "torch",
                **kwargs: Any) -> Any:
        if weights is not None and backend != "torch":
            device = kwargs.get("device", args[0] if args else "auto")
            precision = kwargs.get("precision", args[1] if len(args) > 1 else "fp32")
            if resolve_backend(backend, str(device), resolve_precision(precision, str(device))) != "torch":
                from rgbt_perception.backends.engine import OnnxEngine

                return OnnxEngine(weights, *args, backend=backend, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        weights: str | os.PathLike,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float = DEFAULT_NMS_IOU,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        thermal_to_rgb: Homography = None,
        backend: str = "torch",
    ) -> None:
        target = resolve_device(device)
        precision = resolve_precision(precision, str(target))
        check_precision(precision, target)
        model, metadata = load_weights(weights, device="cpu")
        self._setup(model, metadata, target, precision, score_threshold, nms_iou, max_detections, thermal_to_rgb)

    @classmethod
    def from_model(
        cls,
        model: RGBTNet,
        metadata: WeightsMetadata,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float = DEFAULT_NMS_IOU,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        thermal_to_rgb: Homography = None,
    ) -> "InferenceEngine":
        """An engine around an in-memory model (e.g. during training); the model is put in eval
        mode and moved to ``device``."""
        engine = cls.__new__(cls)
        target = resolve_device(device)
        precision = resolve_precision(precision, str(target))
        engine._setup(model, metadata, target, precision, score_threshold, nms_iou, max_detections, thermal_to_rgb)
        return engine

    def _setup(
        self,
        model: RGBTNet,
        metadata: WeightsMetadata,
        device: torch.device,
        precision: str,
        score_threshold: float,
        nms_iou: float,
        max_detections: int,
        thermal_to_rgb: Homography,
    ) -> None:
        self.compute_dtype = check_precision(precision, device)
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must lie in 0..1, got {score_threshold}")
        if not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1], got {nms_iou}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.metadata = metadata
        self.precision = precision
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.max_per_class = DEFAULT_MAX_PER_CLASS
        self.thermal_to_rgb = None if thermal_to_rgb is None else parse_homography(thermal_to_rgb)
        self.class_names: list[str] = list(metadata.class_names)
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in metadata.palette]
        self.input_size: tuple[int, int] = tuple(model.cfg.input_size)
        self.scaling = metadata.scaling
        self._torch_device = device
        self._palette_lut = palette_lut(self.palette)
        self.backend = "torch"
        self._buffers, self._mask_buffers = InputBuffers(), MaskBuffers()
        self.model: RGBTNet | None
        self.model, self.merge_report = inference_network(model.eval().to(device))
        if self.compute_dtype != torch.float32 and self.model is not model:
            # Only on the engine's own copy: the caller's network keeps its weights.
            store_autocast_weights(self.model, self.compute_dtype)

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self._torch_device)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- public API ---------------------------------------------------------------------------
    def infer(
        self,
        rgb: np.ndarray | None,
        thermal: np.ndarray | None,
        homography: Homography = None,
        overlay: bool = False,
        output_size: Sequence[int] | None = None,
    ) -> InferenceResult:
        """Segment and detect on one pair (either image may be ``None``).

        Args:
            rgb: HxWx3 uint8 RGB.
            thermal: hxw (or hxwx1) uint8/uint16 raw counts, any resolution.
            homography: thermal->RGB homography for this pair (overrides ``thermal_to_rgb``).
            overlay: also draw the colour overlay with boxes.
            output_size: ``(H, W)`` of the RGB camera for a thermal-only call: the thermal frame is
                warped onto that grid (through the homography), so mask, boxes and overlay come out
                in RGB pixels as when both cameras are there. ``None``: thermal pixels. With RGB
                given it must be None or RGB's size.
        """
        sizes = None if output_size is None else [output_size]
        return self.infer_batch([(rgb, thermal)], homographies=[homography], overlay=overlay, output_sizes=sizes)[0]

    def infer_batch(
        self,
        pairs: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
        homographies: Sequence[Homography] | None = None,
        overlay: bool = False,
        output_sizes: Sequence[Sequence[int] | None] | None = None,
    ) -> list[InferenceResult]:
        """Run several pairs in as few forward passes as possible (one per modality pattern).

        ``output_sizes``: per pair, as ``output_size`` of :meth:`infer` (None: every output at its
        RGB frame's size, or at its thermal frame's size when RGB is missing).
        """
        model = self._require_model()
        items = batch_items(pairs, homographies, output_sizes)
        if not items:
            return []
        start = time.perf_counter()
        prepared = [self._prepare(*item) for item in items]
        groups: dict[tuple[bool, bool], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault((item["rgb"] is not None, item["thermal"] is not None), []).append(index)
        batches = {
            pattern: tuple(
                None if not present else torch.cat([prepared[i][name] for i in members]).to(self._torch_device)
                for name, present in zip(("rgb", "thermal"), pattern)
            )
            for pattern, members in groups.items()
        }
        self._synchronize()
        preprocessed = time.perf_counter()

        with torch.inference_mode():
            with self._autocast():
                outputs = {pattern: model(rgb, thermal) for pattern, (rgb, thermal) in batches.items()}
            self._synchronize()
            forwarded = time.perf_counter()
            results: list[InferenceResult | None] = [None] * len(pairs)
            for pattern, members in groups.items():
                members_prepared = [prepared[i] for i in members]
                for result, index in zip(self._postprocess(outputs[pattern], members_prepared, overlay), members):
                    results[index] = result
        self._synchronize()
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "forward": (forwarded - preprocessed) * 1e3,
            "postprocess": (done - forwarded) * 1e3,
            "total": (done - start) * 1e3,
        }
        for result in results:
            result.timings_ms = dict(timings)
        return results  # type: ignore[return-value]

    def release(self) -> None:
        """Drop the model and free accelerator memory; the engine cannot infer afterwards."""
        if self.model is not None:
            self.model.to("cpu")
            self.model = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    # -- steps ----------------------------------------------------------------------------------
    def _require_model(self) -> RGBTNet:
        if self.model is None:
            raise RuntimeError("the inference engine was released; create a new one")
        return self.model

    def _prepare(
        self, index: int, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography,
        requested_size: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        frame = prepare_frame(index, rgb, thermal, self.thermal_to_rgb if homography is None else homography,
                              requested_size)
        # Written into this engine's buffers (pair slot ``index``); the batching below copies them.
        rgb_array, thermal_array = to_model_arrays(frame.rgb, frame.thermal, self.input_size, self.scaling,
                                                   self._buffers, index)
        return {
            "rgb": None if rgb_array is None else torch.from_numpy(rgb_array),
            "thermal": None if thermal_array is None else torch.from_numpy(thermal_array),
            "size": frame.size,
            "backdrop": frame.backdrop,
        }

    def _postprocess(
        self, outputs: dict[str, Any], items: list[dict[str, Any]], overlay: bool
    ) -> Iterator[InferenceResult]:
        logits = outputs["semantic"].float()
        decoded = self._require_model().box_head.decode(
            outputs["boxes"],
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            max_per_class=self.max_per_class,
        )
        for row, (item, boxes) in enumerate(zip(items, decoded)):
            out_h, out_w = item["size"]
            # Upsample logits, not the argmax, so class borders follow the interpolated scores.
            # channels_last + max().indices (same first-maximum rule as argmax): argmax over the
            # strided class dimension is ~7x slower on CPU and was most of the post-processing.
            if logits.device.type == "cpu":  # OpenCV per class + a running argmax: ~3x faster on CPU
                mask = semantic_mask(logits[row].numpy(), (out_h, out_w), self._mask_buffers)
            else:
                row_logits = logits[row : row + 1].contiguous(memory_format=torch.channels_last)
                upsampled = F.interpolate(row_logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
                mask = upsampled.max(dim=1).indices[0].to(torch.uint8).cpu().numpy()
            detections = detections_on_output(
                boxes["boxes"].float().cpu().numpy(), boxes["scores"].float().cpu().numpy(),
                boxes["labels"].cpu().numpy(), self.class_names, self.input_size, (out_h, out_w))
            drawn = self.draw(item["backdrop"], mask, detections) if overlay else None
            yield InferenceResult(mask=mask, detections=detections, overlay=drawn)

    def draw(
        self, image: np.ndarray, mask: np.ndarray, detections: Sequence[Detection], alpha: float = 0.5
    ) -> np.ndarray:
        """Colour overlay of ``mask`` and ``detections`` on an RGB (or single-channel thermal) image."""
        backdrop = image if image.ndim == 3 else gray_to_rgb(image)
        return draw_detections(blend_overlay(backdrop, mask, self._palette_lut, alpha), detections, self._palette_lut)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """HxW class ids -> HxWx3 uint8 colours of this model's palette."""
        return colorize_mask(mask, self._palette_lut)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._torch_device.type, dtype=self.compute_dtype)

    def _synchronize(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)
