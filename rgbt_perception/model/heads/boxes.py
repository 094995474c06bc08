"""Anchor-free FCOS-style box head on the fused pyramid: forward, training loss and decoding."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from rgbt_perception.core.defaults import MAX_DETECTIONS, MAX_PER_CLASS, NMS_IOU, PUBLISH_SCORE_THRESHOLD

from ..neck import norm_groups

INF = float("inf")


class Scale(nn.Module):
    """One learned scalar per pyramid level (FCOS shares the regression branch across levels)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(dim: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(norm_groups(dim), dim),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class BoxHead(nn.Module):
    """FCOS head on the box fusion's strides 8 and 16 plus a stride-32 level made from stride 16.

    Both input maps are projected (1x1) to ``dim`` channels; one class tower and one box tower of
    ``num_convs`` 3x3 convs are shared by the three levels (as in FCOS).

    ``forward`` returns ``{"cls": [B,K,h,w], "reg": [B,4,h,w], "ctr": [B,1,h,w]}`` (one tensor per
    level, strides :attr:`strides`); ``reg`` holds non-negative left/top/right/bottom distances in
    input pixels from each location ``((x + 0.5) * stride, (y + 0.5) * stride)``.
    """

    strides = (8, 16, 32)
    size_ranges = ((0.0, 64.0), (64.0, 128.0), (128.0, INF))

    def __init__(
        self,
        in_dims: Sequence[int] | int,
        num_classes: int,
        dim: int | None = None,
        num_convs: int = 2,
        prior_prob: float = 0.01,
        center_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        in_dims = [in_dims] * 2 if isinstance(in_dims, int) else list(in_dims)
        if len(in_dims) != 2:
            raise ValueError(f"in_dims must give the widths of the stride-8 and stride-16 maps, got {in_dims}")
        dim = dim or in_dims[-1]
        self.num_classes = num_classes
        self.center_radius = center_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.input_proj = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_dims)
        self.extra_level = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.cls_tower = _tower(dim, num_convs)
        self.box_tower = _tower(dim, num_convs)
        self.cls_logits = nn.Conv2d(dim, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(dim, 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(dim, 1, kernel_size=3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in self.strides)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        # Distances pass a ReLU: a zero bias leaves about half the locations predicting an empty box, where
        # GIoU has no gradient, and on some seeds the head never leaves that start. One stride per side
        # starts every location with a small box.
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 1.0)

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        """The last two maps of ``features`` (strides 8 and 16, ``B,C_l,H/s,W/s``) -> raw outputs."""
        s8 = self.input_proj[0](features[-2])
        s16 = self.input_proj[1](features[-1])
        levels = [s8, s16, self.extra_level(s16)]
        outputs: dict[str, list[Tensor]] = {"cls": [], "reg": [], "ctr": []}
        for feature, scale, stride in zip(levels, self.scales, self.strides):
            cls_feat = self.cls_tower(feature)
            box_feat = self.box_tower(feature)
            outputs["cls"].append(self.cls_logits(cls_feat))
            outputs["reg"].append(F.relu(scale(self.bbox_pred(box_feat))) * stride)
            outputs["ctr"].append(self.centerness(box_feat))
        return outputs

    # -- geometry ---------------------------------------------------------------------------
    def _points(self, outputs: dict[str, list[Tensor]]) -> list[Tensor]:
        """Location centres per level, ``h*w, 2`` (x, y) in input pixels."""
        points = []
        for cls, stride in zip(outputs["cls"], self.strides):
            height, width = cls.shape[-2:]
            ys = (torch.arange(height, device=cls.device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=cls.device, dtype=torch.float32) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
        return points

    def _image_size(self, outputs: dict[str, list[Tensor]]) -> tuple[int, int]:
        height, width = outputs["cls"][0].shape[-2:]
        return height * self.strides[0], width * self.strides[0]

    @staticmethod
    def _flatten(maps: list[Tensor]) -> Tensor:
        """Per-level ``B,C,h,w`` -> ``B, sum(h*w), C``."""
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    # -- training ---------------------------------------------------------------------------
    def _targets(self, points: list[Tensor], boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """FCOS assignment for one image: class index per location (-1 = background) and its box.

        A location is positive for a box if it lies inside the box and within ``center_radius *
        stride`` of its centre, and the box's largest side distance falls in the level's size
        range; ties go to the smallest box.
        """
        num_points = sum(len(p) for p in points)
        if boxes.numel() == 0:
            return torch.full((num_points,), -1, dtype=torch.long, device=boxes.device), boxes.new_zeros(num_points, 4)
        all_points = torch.cat(points)
        strides = torch.cat(
            [torch.full((len(p),), float(s), device=boxes.device) for p, s in zip(points, self.strides)]
        )
        low = torch.cat([torch.full((len(p),), r[0], device=boxes.device) for p, r in zip(points, self.size_ranges)])
        high = torch.cat([torch.full((len(p),), r[1], device=boxes.device) for p, r in zip(points, self.size_ranges)])

        x, y = all_points[:, 0:1], all_points[:, 1:2]
        ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)  # P,G,4
        inside_box = ltrb.min(dim=2).values > 0
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        radius = strides[:, None] * self.center_radius
        near_center = ((x - centers[:, 0]).abs() < radius) & ((y - centers[:, 1]).abs() < radius)
        max_side = ltrb.max(dim=2).values
        in_range = (max_side >= low[:, None]) & (max_side <= high[:, None])

        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(len(all_points), -1)
        areas = areas.masked_fill(~(inside_box & near_center & in_range), INF)
        best_area, best = areas.min(dim=1)
        classes = labels[best].clone()
        classes[torch.isinf(best_area)] = -1
        return classes, boxes[best]

    def loss(self, box_outputs: dict[str, list[Tensor]], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Focal (classes), GIoU (boxes) and BCE (centerness) losses, normalised by positives.

        Args:
            box_outputs: ``outputs["boxes"]`` of the network.
            targets: one dict per image: ``"boxes"`` ``N,4`` xyxy in input pixels, ``"labels"``
                ``N`` class ids (``0 <= id < num_classes``).
        Returns:
            ``{"loss_cls", "loss_box", "loss_ctr", "loss"}`` (scalars; ``loss`` is their sum).
        """
        cls = self._flatten(box_outputs["cls"])
        reg = self._flatten(box_outputs["reg"])
        ctr = self._flatten(box_outputs["ctr"]).squeeze(-1)
        if len(targets) != cls.shape[0]:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {cls.shape[0]}")
        points = self._points(box_outputs)
        all_points = torch.cat(points)

        target_classes, target_boxes = [], []
        for target in targets:
            boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=cls.device).reshape(-1, 4)
            labels = torch.as_tensor(target["labels"], dtype=torch.long, device=cls.device).reshape(-1)
            if len(boxes) != len(labels):
                raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels in a target")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"box labels must lie in [0, {self.num_classes}), got {labels.tolist()}")
            classes, matched = self._targets(points, boxes, labels)
            target_classes.append(classes)
            target_boxes.append(matched)
        target_classes = torch.stack(target_classes)
        target_boxes = torch.stack(target_boxes)

        positive = target_classes >= 0
        num_pos = max(float(positive.sum()), 1.0)
        one_hot = torch.zeros_like(cls)
        one_hot[positive] = F.one_hot(target_classes[positive], self.num_classes).to(cls.dtype)
        loss_cls = sigmoid_focal_loss(cls, one_hot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_pos

        if not positive.any():
            zero = reg.sum() * 0 + ctr.sum() * 0
            return {"loss_cls": loss_cls, "loss_box": zero, "loss_ctr": zero, "loss": loss_cls + zero}

        points_b = all_points[None].expand(cls.shape[0], -1, -1)[positive]
        gt = target_boxes[positive]
        gt_ltrb = torch.cat([points_b - gt[:, :2], gt[:, 2:] - points_b], dim=1)
        lr, tb = gt_ltrb[:, 0::2], gt_ltrb[:, 1::2]
        centerness = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
        pred_ltrb = reg[positive]
        pred_boxes = torch.cat([points_b - pred_ltrb[:, :2], points_b + pred_ltrb[:, 2:]], dim=1)
        giou = generalized_box_iou_loss(pred_boxes, gt, reduction="none")
        loss_box = (giou * centerness).sum() / centerness.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[positive], centerness, reduction="sum") / num_pos
        return {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_ctr": loss_ctr,
            "loss": loss_cls + loss_box + loss_ctr,
        }

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        box_outputs: dict[str, list[Tensor]],
        score_threshold: float = PUBLISH_SCORE_THRESHOLD,
        nms_iou: float = NMS_IOU,
        max_detections: int = MAX_DETECTIONS,
        pre_nms_per_level: int = 1000,
        max_per_class: int = MAX_PER_CLASS,
    ) -> list[dict[str, Tensor]]:
        """Boxes per image after class-wise NMS, in input pixel coordinates.

        Score = ``sqrt(sigmoid(cls) * sigmoid(centerness))``; boxes scoring ``<= score_threshold``
        are dropped (0 keeps the whole score range, as mAP needs). NMS suppresses only boxes of
        the same class; then at most ``max_per_class`` boxes per class and ``max_detections`` in
        all are kept, best first. Returns one dict per image: ``"boxes"`` ``N,4`` xyxy float32
        clipped to the input, ``"scores"`` ``N``, ``"labels"`` ``N`` int64, sorted by score.
        """
        if int(max_per_class) < 1 or int(max_detections) < 1:
            raise ValueError(f"max_per_class and max_detections must be >= 1, got {max_per_class}, {max_detections}")
        height, width = self._image_size(box_outputs)
        points = self._points(box_outputs)
        batch = box_outputs["cls"][0].shape[0]
        results = []
        for image in range(batch):
            boxes_all, scores_all, labels_all = [], [], []
            for level, level_points in enumerate(points):
                cls = box_outputs["cls"][level][image].flatten(1).t().float()  # hw,K
                reg = box_outputs["reg"][level][image].flatten(1).t().float()
                ctr = box_outputs["ctr"][level][image].flatten(1).t().float()
                scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))
                keep = scores > score_threshold
                location, label = keep.nonzero(as_tuple=True)
                candidate_scores = scores[location, label]
                if candidate_scores.numel() > pre_nms_per_level:
                    candidate_scores, top = candidate_scores.topk(pre_nms_per_level)
                    location, label = location[top], label[top]
                centre = level_points[location]
                boxes = torch.cat([centre - reg[location, :2], centre + reg[location, 2:]], dim=1)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
                boxes_all.append(boxes)
                scores_all.append(candidate_scores)
                labels_all.append(label)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            labels = torch.cat(labels_all)
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
            keep = batched_nms(boxes, scores, labels, nms_iou)
            keep = keep[_rank_within_class(labels[keep]) < max_per_class][:max_detections]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


def _rank_within_class(labels: Tensor) -> Tensor:
    """For labels in score order, each entry's rank among the entries of its class (0 = best)."""
    if labels.numel() == 0:
        return labels.clone()
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    position = torch.arange(len(labels), device=labels.device)
    first = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=0).values
    rank = torch.empty_like(position)
    rank[order] = position - first
    return rank
