"""Post-processing in NumPy/OpenCV: class mask from the semantic logits, box decoding and class-wise NMS.

The onnxruntime and TensorRT backends hand back host arrays; these functions turn them into the
engine's outputs without torch, so a process running those backends never loads it. They follow
the PyTorch post-processing of the engine and of ``BoxHead.decode`` step by step (same score,
same candidate order, same NMS rule); the tests compare both on the same network outputs.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import cv2
import numpy as np

# Defaults of ``BoxHead.decode`` that the network file does not record (the ONNX sidecar does).
PRE_NMS_PER_LEVEL = 1000


class MaskBuffers:
    """Per-thread scratch arrays of :func:`semantic_mask`, reused while the frame size stays the same."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, classes: int, height: int, width: int) -> tuple[np.ndarray, ...]:
        """``(upsampled H,W float32, best H,W float32, greater H,W uint8, class planes K,H,W uint8)``."""
        key = (classes, height, width)
        cached = getattr(self._local, "arrays", None)
        if cached is None or cached[0] != key:
            ids = np.empty((classes, height, width), np.uint8)
            ids[:] = np.arange(classes, dtype=np.uint8)[:, None, None]
            cached = (
                key,
                np.empty((height, width), np.float32),
                np.empty((height, width), np.float32),
                np.empty((height, width), np.uint8),
                ids,
            )
            self._local.arrays = cached
        return cached[1:]


_DEFAULT_BUFFERS = MaskBuffers()


def semantic_mask(
    logits: np.ndarray, size: Sequence[int], buffers: MaskBuffers | None = None
) -> np.ndarray:
    """``K,h,w`` logits -> ``H,W`` uint8 class ids at ``size = (H, W)``.

    The logits are upsampled bilinearly with half-pixel centres (``align_corners=False``, as the
    PyTorch path) one class at a time into a reused plane, and the mask keeps the first class with
    the largest score (argmax's rule) in a running comparison, so no ``K,H,W`` float array exists
    and no strided argmax runs over the class axis.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be K,h,w, got shape {logits.shape}")
    classes = logits.shape[0]
    if classes > 255:
        raise ValueError(f"a uint8 mask holds at most 256 classes, got {classes}")
    height, width = (int(v) for v in size)
    upsampled, best, greater, ids = (buffers or _DEFAULT_BUFFERS).get(classes, height, width)
    source = np.ascontiguousarray(logits, dtype=np.float32)
    same_size = source.shape[1:] == (height, width)
    mask = np.zeros((height, width), np.uint8)
    # One class at a time through one scratch plane (no K,H,W float array); OpenCV's compare, max
    # and masked copy keep NumPy's strict "greater" rule and run a third faster.
    for k in range(classes):
        if same_size:
            plane = source[k]
        else:
            plane = cv2.resize(source[k], (width, height), dst=upsampled, interpolation=cv2.INTER_LINEAR)
        if k == 0:
            np.copyto(best, plane)
            continue
        cv2.compare(plane, best, cv2.CMP_GT, dst=greater)
        cv2.max(best, plane, dst=best)
        cv2.copyTo(ids[k], greater, mask)
    return mask


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x, dtype=np.float32)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def level_points(height: int, width: int, stride: int) -> np.ndarray:
    """Location centres of one level, ``h*w, 2`` (x, y) in input pixels, row-major."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(width, dtype=np.float32) + 0.5) * stride
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.reshape(-1), grid_y.reshape(-1)], axis=1)


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``4`` xyxy box with ``N,4`` boxes (areas without a +1, as torchvision)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first; a box is dropped when its IoU with
    a kept, better box exceeds ``iou_threshold``."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size:
        best = int(order[0])
        kept.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(kept, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class; kept indices sorted by score (best first), as torchvision's ``batched_nms``."""
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    kept = [np.flatnonzero(labels == label)[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
            for label in np.unique(labels)]
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")]


def rank_within_class(labels: np.ndarray) -> np.ndarray:
    """For labels in score order, each entry's rank among the entries of its class (0 = best)."""
    rank = np.zeros(labels.shape[0], np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(where.size)
    return rank


def decode_boxes(
    box_outputs: dict[str, list[np.ndarray]],
    strides: Sequence[int],
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
    max_per_class: int,
    pre_nms_per_level: int = PRE_NMS_PER_LEVEL,
) -> list[dict[str, np.ndarray]]:
    """Boxes per image from the raw FCOS outputs, the NumPy twin of ``BoxHead.decode``.

    Args:
        box_outputs: ``{"cls": [B,K,h,w], "reg": [B,4,h,w], "ctr": [B,1,h,w]}``, one array per level.
        strides: stride of each level in input pixels.
    Returns:
        One dict per image: ``"boxes"`` ``N,4`` float32 xyxy clipped to the input, ``"scores"`` ``N``
        float32, ``"labels"`` ``N`` int64, best score first.
    """
    if int(max_per_class) < 1 or int(max_detections) < 1:
        raise ValueError(f"max_per_class and max_detections must be >= 1, got {max_per_class}, {max_detections}")
    cls_levels, reg_levels, ctr_levels = box_outputs["cls"], box_outputs["reg"], box_outputs["ctr"]
    height = cls_levels[0].shape[-2] * strides[0]
    width = cls_levels[0].shape[-1] * strides[0]
    points = [level_points(c.shape[-2], c.shape[-1], s) for c, s in zip(cls_levels, strides)]
    results = []
    for image in range(cls_levels[0].shape[0]):
        boxes_all, scores_all, labels_all = [], [], []
        for level, centres in enumerate(points):
            cls = cls_levels[level][image].reshape(cls_levels[level].shape[1], -1).T.astype(np.float32)
            reg = reg_levels[level][image].reshape(4, -1).T.astype(np.float32)
            ctr = ctr_levels[level][image].reshape(1, -1).T.astype(np.float32)
            scores = np.sqrt(_sigmoid(cls) * _sigmoid(ctr))
            location, label = np.nonzero(scores > score_threshold)
            candidate = scores[location, label]
            if candidate.size > pre_nms_per_level:
                top = np.argsort(-candidate, kind="stable")[:pre_nms_per_level]
                candidate, location, label = candidate[top], location[top], label[top]
            centre = centres[location]
            boxes = np.concatenate([centre - reg[location, :2], centre + reg[location, 2:]], axis=1)
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
            boxes_all.append(boxes)
            scores_all.append(candidate)
            labels_all.append(label.astype(np.int64))
        boxes = np.concatenate(boxes_all).astype(np.float32, copy=False)
        scores = np.concatenate(scores_all).astype(np.float32, copy=False)
        labels = np.concatenate(labels_all)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = batched_nms(boxes, scores, labels, nms_iou)
        keep = keep[rank_within_class(labels[keep]) < max_per_class][:max_detections]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def nest_named(named: dict[str, Any], prefix: str) -> Any:
    """``{"boxes.cls.0": a, ...}`` -> ``{"cls": [a, ...], ...}`` for the names under ``prefix``
    (the inverse of the ONNX export's output naming; lists where every key is a number)."""
    if prefix in named:
        return named[prefix]
    children: dict[str, dict[str, Any]] = {}
    for name, value in named.items():
        if name.startswith(prefix + "."):
            head = name[len(prefix) + 1:].split(".", 1)[0]
            children.setdefault(head, {})[name] = value
    if not children:
        raise KeyError(f"no output named {prefix!r} or below it")
    nested = {key: nest_named(group, f"{prefix}.{key}") for key, group in children.items()}
    if all(key.isdigit() for key in nested):
        return [nested[key] for key in sorted(nested, key=int)]
    return nested
