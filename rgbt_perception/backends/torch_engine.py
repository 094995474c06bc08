"""The ``torch`` backend: :class:`InferenceEngine`, the network run by PyTorch.

The network runs in its inference form: the LoRA adapters merged into the trunk weights per camera
and, on a GPU, both cameras in one trunk pass (:mod:`rgbt_perception.model.lora_merge`, checked
against the network as trained when it is built); autocast at the chosen precision with the
linear and convolution weights stored in it once. Box decoding runs on the device; the class mask
is upsampled by OpenCV on the CPU (faster there) and by PyTorch on a GPU.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgbt_perception.backends.base import (
    DecodeSettings,
    FrameEngine,
    FrameOutput,
    PreparedPair,
    decode_settings,
    require_finite,
)
from rgbt_perception.backends.numpy_ops import MaskBuffers, semantic_mask
from rgbt_perception.backends.selection import resolve_precision
from rgbt_perception.core.device import check_precision, resolve_device
from rgbt_perception.core.frames import Homography
from rgbt_perception.io.weights import WeightsMetadata, load_weights
from rgbt_perception.model.lora_merge import MergeReport, inference_model
from rgbt_perception.model.network import RGBTNet

# Layers whose weights autocast casts to the low precision on every call (its lower-precision ops:
# linear, convolutions); storing them in that precision once gives the same products without the casts.
AUTOCAST_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d)

# Set to 0 to run the network exactly as trained (peft's unmerged adapters, a trunk pass per camera),
# e.g. to compare against it.
MERGE_ENV = "RGBT_MERGE_LORA"


def merge_enabled() -> bool:
    return os.environ.get(MERGE_ENV, "1").strip() not in ("0", "false", "no", "off")


def inference_network(
    model: Any, merge: bool | None = None, batch_modalities: bool | None = None
) -> tuple[Any, MergeReport | None]:
    """``(network to run, merge report)`` for an eval-mode ``RGBTNet`` on its device.

    With ``merge`` (default: on unless ``RGBT_MERGE_LORA=0``) a merged copy is returned (the
    original is not changed); otherwise the network itself and ``None``. ``batch_modalities``
    (default: on a GPU only): both cameras in one trunk pass. On the CPU a batch of two costs what
    two passes cost and PyTorch ran the two merged passes 2-9 % faster (docs/benchmarks.md), while
    a GPU is under-used by batch-1 passes.
    """
    if not (merge_enabled() if merge is None else merge):
        return model, None
    if batch_modalities is None:
        batch_modalities = next(model.parameters()).device.type == "cuda"
    return inference_model(model, batch_modalities=batch_modalities)


def store_autocast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights and biases of ``model``'s linear and convolution layers in ``dtype`` (bf16/fp16).

    For a network that only ever runs under ``torch.autocast(dtype=dtype)``: autocast casts these
    weights to ``dtype`` at every call (about 5 % of a micro frame on the CPU); cast once, the same
    rounding gives identical outputs. Norms, embeddings and other parameters stay as they are
    (autocast runs norms in fp32). Returns the number of layers changed. Do not use the model
    without autocast afterwards.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"store_autocast_weights takes bfloat16 or float16, got {dtype}")
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AUTOCAST_WEIGHT_LAYERS):
                for name in ("weight", "bias"):
                    param = getattr(module, name, None)
                    if param is not None and param.is_floating_point():
                        param.data = param.data.to(dtype)
                changed += 1
    return changed


class InferenceEngine(FrameEngine):
    """Runs an :class:`RGBTNet` on raw frames with PyTorch.

    Args:
        weights: node weights file (see :mod:`rgbt_perception.io.weights`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``; on CUDA also ``"fp16"`` and ``"bf16"`` (autocast); on CPU ``"bf16"``;
            ``"auto"`` as :func:`~rgbt_perception.backends.selection.resolve_precision`.
        score_threshold, nms_iou, max_detections: box decoding, each replacing its value in ``decode``.
        decode: box decoding (default: the published boxes' settings; scoring passes
            ``score_threshold=MAP_SCORE_THRESHOLD``).
        thermal_to_rgb: default 3x3 homography from thermal to RGB pixels, used when a call gives
            none; ``None`` means both cameras share the field of view (plain resize).

    :func:`~rgbt_perception.backends.factory.create_engine` is the usual way to make one.
    """

    backend = "torch"

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "auto", precision: str = "fp32",
                 score_threshold: float | None = None, nms_iou: float | None = None,
                 max_detections: int | None = None, thermal_to_rgb: Homography = None,
                 decode: DecodeSettings | None = None) -> None:
        settings = decode_settings(decode, score_threshold, nms_iou, max_detections)
        model, metadata = load_weights(weights, device="cpu")
        self._setup(model, metadata, device, precision, settings, thermal_to_rgb)

    @classmethod
    def from_model(cls, model: RGBTNet, metadata: WeightsMetadata, device: str | torch.device = "auto",
                   precision: str = "fp32", decode: DecodeSettings | None = None,
                   thermal_to_rgb: Homography = None) -> "InferenceEngine":
        """An engine around an in-memory model (e.g. during training); the model is put in eval
        mode and moved to ``device``; its own weights are never changed."""
        engine = cls.__new__(cls)
        engine._setup(model, metadata, device, precision, decode or DecodeSettings(), thermal_to_rgb)
        return engine

    def _setup(self, model: RGBTNet, metadata: WeightsMetadata, device: str | torch.device, precision: str,
               decode: DecodeSettings, thermal_to_rgb: Homography) -> None:
        target = resolve_device(device)
        self.precision = resolve_precision(precision, str(target))
        self.compute_dtype = check_precision(self.precision, target)
        self.metadata = metadata
        self._init_common(metadata.class_names, metadata.palette, model.cfg.input_size, metadata.scaling, decode,
                          thermal_to_rgb)
        self._torch_device = target
        self._mask_buffers = MaskBuffers()
        self.model: RGBTNet | None
        self.model, self.merge_report = inference_network(model.eval().to(target))
        if self.compute_dtype != torch.float32 and self.model is not model:
            # Only on the engine's own copy: the caller's network keeps its weights.
            store_autocast_weights(self.model, self.compute_dtype)

    @property
    def device(self) -> str:
        return str(self._torch_device)

    # -- backend steps ----------------------------------------------------------------------------
    def _to_device(self, prepared: list[PreparedPair]) -> dict[tuple[bool, bool], Any]:
        """One batch per camera pattern:
        ``{(rgb?, thermal?): (members, rgb B,3,h,w or None, thermal B,1,h,w or None)}`` on the device."""
        groups: dict[tuple[bool, bool], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.pattern, []).append(index)
        batches = {}
        for pattern, members in groups.items():
            tensors = [None if not present else
                       torch.cat([torch.from_numpy(getattr(prepared[i], name)) for i in members]).to(self._torch_device)
                       for name, present in zip(("rgb", "thermal"), pattern)]
            batches[pattern] = (members, *tensors)
        self._synchronize()
        return batches

    def _forward(self, inputs: dict[tuple[bool, bool], Any]) -> list[tuple[list[int], dict[str, Any]]]:
        model = self.model
        with torch.inference_mode(), self._autocast():
            outputs = [(members, model(rgb, thermal)) for members, rgb, thermal in inputs.values()]
        self._synchronize()
        return outputs

    def _postprocess_batch(self, raw: list[tuple[list[int], dict[str, Any]]],
                           prepared: list[PreparedPair]) -> list[FrameOutput]:
        results: list[FrameOutput | None] = [None] * len(prepared)
        with torch.inference_mode():
            for members, outputs in raw:
                logits = outputs["semantic"].float()
                require_finite(bool(torch.isfinite(logits).all()), "class scores")
                decoded = self.model.box_head.decode(
                    outputs["boxes"], score_threshold=self.decode.score_threshold, nms_iou=self.decode.nms_iou,
                    max_detections=self.decode.max_detections, max_per_class=self.decode.max_per_class)
                for row, (index, boxes) in enumerate(zip(members, decoded)):
                    require_finite(bool(torch.isfinite(boxes["boxes"]).all()), "boxes")
                    results[index] = FrameOutput(
                        mask=self._class_mask(logits, row, prepared[index].size),
                        boxes=boxes["boxes"].float().cpu().numpy(), scores=boxes["scores"].float().cpu().numpy(),
                        labels=boxes["labels"].cpu().numpy())
        self._synchronize()
        return results  # type: ignore[return-value]

    def _class_mask(self, logits: torch.Tensor, row: int, size: tuple[int, int]) -> np.ndarray:
        """``H, W`` uint8 class ids of batch row ``row`` of ``B, K, h, w`` logits, at ``size``.

        Logits are upsampled, not the argmax, so class borders follow the interpolated scores.
        """
        if logits.device.type == "cpu":  # OpenCV per class + a running argmax: ~3x faster on the CPU
            return semantic_mask(logits[row].numpy(), size, self._mask_buffers)
        # channels_last + max().indices (argmax's first-maximum rule): argmax over the strided class
        # dimension is several times slower.
        row_logits = logits[row : row + 1].contiguous(memory_format=torch.channels_last)
        upsampled = F.interpolate(row_logits, size=size, mode="bilinear", align_corners=False)
        return upsampled.max(dim=1).indices[0].to(torch.uint8).cpu().numpy()

    def _release(self) -> None:
        if self.model is not None:
            self.model.to("cpu")
            self.model = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._torch_device.type, dtype=self.compute_dtype)

    def _synchronize(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)
