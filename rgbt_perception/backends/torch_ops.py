"""The engine's per-frame work around the network in torch, with static shapes, on any device.

The twins of :mod:`rgbt_perception.core.registration`, :mod:`rgbt_perception.core.preprocess`
(OpenCV/NumPy) and :mod:`rgbt_perception.backends.numpy_ops`, written so that one frame's whole
step (registration warp, resize, thermal scaling, network, class mask, box decoding + NMS) runs on
the GPU without a host synchronisation and with shapes fixed by the frame geometry: it can be
captured once as a CUDA graph and replayed. On the CPU the same functions run, so the tests compare
them with the NumPy/OpenCV path.

How close they follow OpenCV (measured by ``test/test_engine_torch_ops.py``):

- warp: ``cv2.warpPerspective`` (OpenCV 4.x/5.x) reads every output pixel at ``H^-1`` of it,
  bilinear, zeros outside; so do :func:`warp_coordinates` + :func:`sample_bilinear`: 8/16-bit
  counts differ by at most two counts (OpenCV's 15-bit fixed-point weights) on a few % of the pixels;
- resize: ``cv2.INTER_LINEAR`` (half-pixel centres, edge pixels repeated), separable, weights
  computed as OpenCV computes them; uint8 and uint16 differ by at most one count (OpenCV's 11-bit
  fixed point for uint8, its SIMD rounding), float32 within 1e-5 of the value range;
- thermal percentiles: ``np.percentile``'s linear rule on the nonzero counts, from a sort instead
  of a histogram: the same values;
- class mask: bilinear upsampling (``align_corners=False``) and the first maximum, as
  :func:`~rgbt_perception.backends.numpy_ops.semantic_mask`;
- boxes: the candidates, scores, clipping and class-wise greedy NMS of
  :func:`~rgbt_perception.backends.numpy_ops.decode_boxes`, computed on the best
  :data:`NMS_CANDIDATES` candidates with a fixed number of suppression rounds; ``exact`` says when
  the result provably equals the unrestricted greedy NMS (otherwise the caller decodes on the host).

No ROS import; torch only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rgbt_perception.core.preprocess import ThermalScaling

#: Fixed-point scale of OpenCV's bilinear resize weights for 8-bit images (``INTER_RESIZE_COEF_SCALE``).
RESIZE_COEF_SCALE = 2048
#: Box candidates (best first) the static NMS runs on; the result is exact when they hold all
#: candidates or enough kept boxes (see :func:`decode_boxes_static`).
NMS_CANDIDATES = 1024
#: Rounds of parallel suppression; a chain of boxes each suppressing the next longer than this is
#: reported as not exact (never seen on the networks' outputs so far).
NMS_ROUNDS = 12


# -- registration --------------------------------------------------------------------------------
def warp_coordinates(homography: np.ndarray, source_size: Sequence[int], target_size: Sequence[int]) -> Tensor:
    """``2, H, W`` float32 source (x, y) pixel that ``cv2.warpPerspective`` reads for every target pixel.

    ``homography`` maps source (thermal) pixels to target (RGB) pixels; the coordinates are ``H^-1``
    of each target pixel, computed in float64 (OpenCV 4.x samples at unrounded coordinates), then
    clipped far outside the source (those read zeros either way).
    """
    src_h, src_w = (int(v) for v in source_size)
    height, width = (int(v) for v in target_size)
    inverse = np.linalg.inv(np.asarray(homography, np.float64).reshape(3, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    denominator = inverse[2, 0] * xs + inverse[2, 1] * ys + inverse[2, 2]
    scale = np.divide(1.0, denominator, out=np.zeros_like(denominator), where=denominator != 0)
    limit = max(src_w, src_h) + 4.0
    coords = [np.clip((inverse[row, 0] * xs + inverse[row, 1] * ys + inverse[row, 2]) * scale, -4.0, limit)
              for row in (0, 1)]
    return torch.from_numpy(np.stack(coords).astype(np.float32))


def sample_bilinear(image: Tensor, coords: Tensor, integer: bool) -> Tensor:
    """Bilinear samples of ``image`` (``h, w`` float32) at ``coords`` (``2, H, W`` source x, y);
    neighbours outside the image read 0 (``BORDER_CONSTANT``). ``integer``: round half up, as OpenCV's
    fixed-point remap stores 8/16-bit results. Returns ``H, W`` float32."""
    height, width = image.shape
    x0, y0 = torch.floor(coords[0]), torch.floor(coords[1])
    fx, fy = coords[0] - x0, coords[1] - y0
    out = torch.zeros_like(fx)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        row = y0 + dy
        row_inside = (row >= 0) & (row <= height - 1)
        rows = row.clamp(0, height - 1).long()
        for dx, wx in ((0, 1 - fx), (1, fx)):
            column = x0 + dx
            inside = row_inside & (column >= 0) & (column <= width - 1)
            value = image[rows, column.clamp(0, width - 1).long()]
            out = out + torch.where(inside, value, torch.zeros_like(value)) * (wy * wx)
    return torch.floor(out + 0.5) if integer else out


# -- resizing ------------------------------------------------------------------------------------
@dataclass
class ResizeTable:
    """One axis of an INTER_LINEAR resize: first source index, the next one, and their weights."""

    first: Tensor
    second: Tensor
    weights: Tensor  # 2, n float32

    @classmethod
    def build(cls, source: int, target: int, fixed_point: bool, device: torch.device) -> "ResizeTable":
        scale = source / target
        position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
        first = np.floor(position).astype(np.int64)
        fraction = (position - first).astype(np.float32)
        low = first < 0
        first[low], fraction[low] = 0, 0.0
        high = first >= source - 1
        first[high], fraction[high] = source - 1, 0.0
        second = np.minimum(first + 1, source - 1)
        weights = np.stack([1.0 - fraction, fraction]).astype(np.float32)
        if fixed_point:  # OpenCV's 8-bit path: weights in steps of 1/2048
            head = np.rint(weights[0] * RESIZE_COEF_SCALE)
            weights = np.stack([head, RESIZE_COEF_SCALE - head]).astype(np.float32) / RESIZE_COEF_SCALE
        return cls(torch.from_numpy(first).to(device), torch.from_numpy(second).to(device),
                   torch.from_numpy(weights).to(device))


@dataclass
class Resizer:
    """A fixed ``cv2.resize(..., INTER_LINEAR)`` from ``source`` to ``target`` size, rows then columns.

    ``mode``: ``"uint8"`` (fixed-point weights, rounded half up), ``"uint16"`` (float weights, rounded
    half to even) or ``"float"``. An identical size passes the image through, as ``cv2.resize`` is skipped then.
    """

    rows: ResizeTable | None
    columns: ResizeTable | None
    mode: str

    @classmethod
    def build(cls, source: Sequence[int], target: Sequence[int], mode: str, device: torch.device) -> "Resizer":
        if tuple(int(v) for v in source) == tuple(int(v) for v in target):
            return cls(None, None, mode)
        fixed = mode == "uint8"
        return cls(ResizeTable.build(int(source[0]), int(target[0]), fixed, device),
                   ResizeTable.build(int(source[1]), int(target[1]), fixed, device), mode)

    def __call__(self, image: Tensor) -> Tensor:
        """``C, h, w`` float32 -> ``C, H, W`` float32."""
        if self.rows is None:
            return image
        columns, rows = self.columns, self.rows
        across = image[:, :, columns.first] * columns.weights[0] + image[:, :, columns.second] * columns.weights[1]
        out = (across[:, rows.first, :] * rows.weights[0][:, None]
               + across[:, rows.second, :] * rows.weights[1][:, None])
        if self.mode == "uint8":  # fixed point: rounded half up
            return torch.floor(out + 0.5)
        return torch.round(out) if self.mode == "uint16" else out  # cvRound: half to even


# -- thermal scaling -----------------------------------------------------------------------------
def constants(values: Sequence[float], like: Tensor) -> Tensor:
    """``len(values)`` tensor of ``like``'s type and device made by fill kernels: ``torch.tensor(list,
    device=cuda)`` copies from pageable host memory, which a CUDA graph capture refuses."""
    return torch.stack([torch.full((), float(v), dtype=like.dtype, device=like.device) for v in values])


def thermal_percentiles(values: Tensor, low: float, high: float) -> Tensor:
    """``2`` float64: the ``low``/``high`` percentiles (0-100) of the positive values of ``values``
    (of all of them when none is positive), by ``np.percentile``'s linear rule; no host sync."""
    flat = values.reshape(-1).to(torch.float64)
    ordered = torch.sort(flat).values
    total = flat.numel()
    excluded = (flat <= 0).sum()
    nothing_seen = excluded >= total
    excluded = torch.where(nothing_seen, torch.zeros_like(excluded), excluded)
    count = (total - excluded).to(torch.float64)
    quantiles = constants((low / 100, high / 100), flat)
    virtual = (count - 1) * quantiles
    previous = torch.floor(virtual)
    above = virtual >= count - 1
    order_previous = torch.where(above, count - 1, previous)
    order_next = torch.where(above, count - 1, previous + 1)
    a = ordered[(order_previous + excluded).long().clamp(0, total - 1)]
    b = ordered[(order_next + excluded).long().clamp(0, total - 1)]
    gamma = torch.where(above, virtual + 1, virtual - previous)
    diff = b - a
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def scale_thermal(thermal: Tensor, scaling: ThermalScaling) -> Tensor:
    """Raw counts (any shape, float32) -> float32 ``[0, 1]`` as :func:`rgbt_perception.core.preprocess.scale_thermal`
    (zeros for a flat frame)."""
    if scaling.mode == "percentile":
        bounds = thermal_percentiles(thermal, scaling.low, scaling.high)
    else:
        bounds = constants((scaling.low, scaling.high), thermal.new_zeros((), dtype=torch.float64))
    span = bounds[1] - bounds[0]
    flat = span <= 0
    factor = torch.where(flat, torch.ones_like(span), 1.0 / torch.where(flat, torch.ones_like(span), span))
    scaled = ((thermal - bounds[0].to(torch.float32)) * factor.to(torch.float32)).clamp(0.0, 1.0)
    return torch.where(flat, torch.zeros_like(scaled), scaled)


# -- outputs -------------------------------------------------------------------------------------
def class_mask(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``1, K, h, w`` logits -> ``H, W`` uint8 class ids at ``size`` (bilinear, first maximum)."""
    height, width = (int(v) for v in size)
    scores = logits.float().contiguous(memory_format=torch.channels_last)
    if tuple(scores.shape[-2:]) != (height, width):
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    # max().indices over channels_last keeps argmax's first-maximum rule and reads contiguous classes.
    return scores.max(dim=1).indices[0].to(torch.uint8)


def blend_colours(image: Tensor, mask: Tensor, lut: Tensor, alpha: float) -> Tensor:
    """``H, W, 3`` uint8 image and ``H, W`` uint8 mask -> the colour overlay without boxes, as
    :func:`rgbt_perception.core.overlay.blend_overlay` (``cv2.addWeighted``: float, rounded)."""
    colours = lut[mask.long()].float()
    mixed = image.float() * (1.0 - alpha) + colours * alpha
    return torch.floor(mixed + 0.5).clamp(0, 255).to(torch.uint8)


def level_points(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Location centres of one level, ``h*w, 2`` (x, y) in input pixels, row-major."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


@dataclass
class StaticDetections:
    """Decoded boxes of one image in fixed-size tensors (``M = max_detections``): ``boxes`` ``M, 4``
    xyxy in input pixels, ``scores`` ``M``, ``labels`` ``M`` int64, best first, the first ``count`` valid;
    ``exact``: the same boxes as the unrestricted greedy NMS (bool scalar tensors, no host sync)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    count: Tensor
    exact: Tensor


def level_candidates(cls: Tensor, reg: Tensor, ctr: Tensor, stride: int, threshold: float,
                     pre_nms: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The best ``pre_nms`` (location, class) scores of one level of image 0 (``1,K,h,w``, ``1,4,h,w``,
    ``1,1,h,w``): ``(boxes n,4 unclipped, scores n, labels n, flat index n)``; scores at or below
    ``threshold`` are -1."""
    classes, height, width = cls.shape[1:]
    scores = torch.sqrt(torch.sigmoid(cls[0].flatten(1).t().float()) * torch.sigmoid(ctr[0].flatten(1).t().float()))
    flat = scores.flatten()  # location-major, then class: np.nonzero's order
    masked = torch.where(flat > threshold, flat, torch.full_like(flat, -1.0))
    top, index = masked.topk(min(int(pre_nms), flat.numel()))
    location, label = index // classes, index % classes
    centre = level_points(height, width, stride, cls.device)[location]
    distances = reg[0].flatten(1).t().float()[location]
    boxes = torch.cat([centre - distances[:, :2], centre + distances[:, 2:]], dim=1)
    return boxes, top, label, index


def suppression_matrix(boxes: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """``N, N`` bool: box ``i`` (better, ``i < j``) suppresses box ``j`` of its class (IoU > threshold),
    with the arithmetic of :func:`~rgbt_perception.backends.numpy_ops.box_iou_one_to_many`."""
    x1 = torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = torch.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = torch.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    count = boxes.shape[0]
    later = torch.arange(count, device=boxes.device)[None, :] > torch.arange(count, device=boxes.device)[:, None]
    # numpy keeps a box whose IoU is <= threshold; NaN (never for valid boxes) suppresses as there.
    return later & (labels[:, None] == labels[None, :]) & ~(iou <= iou_threshold)


def greedy_keep(suppresses: Tensor, valid: Tensor, rounds: int = NMS_ROUNDS) -> tuple[Tensor, Tensor]:
    """Greedy NMS on boxes sorted best first, in parallel rounds: ``(keep N bool, converged bool)``.

    A box is kept when no kept better box suppresses it. Starting from all valid boxes, each round
    recomputes that rule from the previous round's kept set; after ``r`` rounds every box whose
    chain of suppressors is shorter than ``r`` is decided as the sequential greedy NMS decides it,
    and a round that changes nothing means all are (the rule has exactly one fixed point).
    """
    weights = suppresses.float()
    keep = valid
    for _ in range(rounds):
        keep = valid & ~((keep.float() @ weights) > 0)
    again = valid & ~((keep.float() @ weights) > 0)
    return keep, (again == keep).all()


def decode_boxes_static(box_outputs: dict[str, list[Tensor]], strides: Sequence[int], score_threshold: float,
                        nms_iou: float, caps: tuple[int, int], pre_nms_per_level: int = 1000,
                        candidates: int = NMS_CANDIDATES) -> StaticDetections:
    """Boxes of image 0 from the raw FCOS outputs with fixed shapes (graph-capturable).

    Args:
        box_outputs: ``{"cls": [1,K,h,w], "reg": [1,4,h,w], "ctr": [1,1,h,w]}`` per level.
        caps: ``(max_detections, max_per_class)``.
    Same candidates, scores, clipping, class-wise greedy NMS and caps as
    :func:`~rgbt_perception.backends.numpy_ops.decode_boxes` (equal scores are ordered by level,
    location and class there by class first). Only the best ``candidates`` valid candidates enter the
    NMS: exact when they are all, or when they already give ``max_detections`` boxes.
    """
    max_detections, max_per_class = (int(v) for v in caps)
    height = box_outputs["cls"][0].shape[-2] * strides[0]
    width = box_outputs["cls"][0].shape[-1] * strides[0]
    parts, offset = [], 0
    for cls, reg, ctr, stride in zip(box_outputs["cls"], box_outputs["reg"], box_outputs["ctr"], strides):
        boxes, scores, labels, index = level_candidates(cls, reg, ctr, stride, score_threshold, pre_nms_per_level)
        parts.append((boxes, scores, labels, index + offset))
        offset += cls[0].numel()
    boxes, scores, labels, order_key = (torch.cat(p) for p in zip(*parts))
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width),
                         boxes[:, 3].clamp(0, height)], dim=1)
    valid = (scores > score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # Best first; equal scores in candidate order (a stable sort after ordering by the flat index).
    by_index = torch.argsort(order_key)
    ranked = by_index[torch.sort(torch.where(valid, scores, -2.0)[by_index], descending=True, stable=True).indices]
    ranked = ranked[: min(int(candidates), ranked.numel())]
    boxes, scores, labels, valid = boxes[ranked], scores[ranked], labels[ranked], valid[ranked]
    keep, converged = greedy_keep(suppression_matrix(boxes, labels, nms_iou), valid)
    classes = box_outputs["cls"][0].shape[1]
    # One-hot by comparison: F.one_hot checks its labels on the host.
    same_class = ((labels[:, None] == torch.arange(classes, device=labels.device)[None, :]) & keep[:, None]).long()
    rank_in_class = (torch.cumsum(same_class, dim=0) - same_class).gather(1, labels[:, None])[:, 0]
    final = keep & (rank_in_class < max_per_class)
    position = torch.cumsum(final.long(), dim=0) - 1
    final = final & (position < max_detections)
    slot = torch.where(final, position, torch.full_like(position, max_detections))  # the last slot is a sink
    out_boxes = boxes.new_zeros(max_detections + 1, 4).index_copy(0, slot, boxes)
    out_scores = scores.new_zeros(max_detections + 1).index_copy(0, slot, scores)
    out_labels = labels.new_zeros(max_detections + 1).index_copy(0, slot, labels)
    count = final.sum()
    complete = (valid.sum() < ranked.numel()) | (ranked.numel() == offset_total(box_outputs, pre_nms_per_level))
    exact = converged & (complete | (count >= max_detections))
    return StaticDetections(out_boxes[:max_detections], out_scores[:max_detections], out_labels[:max_detections],
                            count, exact)


def offset_total(box_outputs: dict[str, list[Tensor]], pre_nms_per_level: int) -> int:
    """How many candidates the levels hand to the NMS at most (their top-``pre_nms_per_level`` each)."""
    return sum(min(int(pre_nms_per_level), cls[0].numel()) for cls in box_outputs["cls"])
