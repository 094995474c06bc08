"""Segmentation and detection metrics shared by ``rgbt-eval``, the training loop and ``rgbt-eval-bag``.

Segmentation convention (also printed in every report):

* Pixels labelled ``ignore_index`` (255) are not counted.
* Per class: ``IoU = TP / (TP + FP + FN)``, ``accuracy = TP / (TP + FN)`` (recall).
* A class with neither ground truth nor prediction in the scored pixels is *absent*: its IoU
  and accuracy are undefined (NaN) and it is excluded from the means. A class that is predicted
  but has no ground truth counts with IoU 0 in mIoU; its accuracy is undefined and excluded
  from mAcc.
* ``miou`` / ``macc`` average over all classes (background included, the convention of
  MFNet/PST900 papers); ``miou_no_bg`` / ``macc_no_bg`` leave the background/unlabeled class out
  (the convention of most FMB papers).

Detection: COCO box mAP@0.5 and mAP@0.5:0.95 (faster-coco-eval), averaged over the categories
that have ground truth, and the AP of each of those categories. Ground-truth ignore regions
(``ignore_boxes``: VOC ``difficult``, KAIST ``people``/``person?``/``cyclist``) enter as COCO crowd
regions of every category: a detection inside one is neither a hit nor a false positive.

Pedestrian detection (KAIST): the log-average miss rate ``MR^-2`` of the Caltech/KAIST toolbox
(:class:`MissRateMetrics`, see its docstring for the exact rules).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgbt_perception.core.classes import IGNORE_INDEX

SEGMENTATION_CONVENTION = (
    "Pixels with label 255 are ignored. IoU = TP/(TP+FP+FN), accuracy = TP/(TP+FN). "
    "Classes with no ground truth and no prediction are excluded from the means (not counted "
    "as 0); a class predicted but absent from the ground truth counts with IoU 0 in mIoU and "
    "is excluded from mAcc. 'miou'/'macc' include the background/unlabeled class, "
    "'miou_no_bg'/'macc_no_bg' exclude it."
)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def scores_from_confusion(
    confusion: np.ndarray, class_names: Sequence[str], background_id: int | None = 0
) -> dict[str, Any]:
    """Per-class and mean scores from a ``K, K`` confusion matrix (rows: ground truth, cols: prediction)."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    gt = confusion.sum(axis=1)
    pred = confusion.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    keep = np.ones(len(tp), dtype=bool)
    if background_id is not None:
        keep[background_id] = False
    total = confusion.sum()
    absent = [class_names[i] for i in range(len(tp)) if union[i] == 0]
    return {
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "miou_no_bg": _nanmean(iou[keep]),
        "macc_no_bg": _nanmean(acc[keep]),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "pixels": int(total),
        "per_class": {
            name: {"iou": float(iou[i]), "acc": float(acc[i]), "gt_pixels": int(gt[i]), "pred_pixels": int(pred[i])}
            for i, name in enumerate(class_names)
        },
        "absent_classes": absent,
    }


class SegmentationMetrics:
    """Confusion-matrix accumulator for semantic masks, optionally split by condition.

    ``update(pred, label)`` takes class-index arrays (numpy or torch) of equal shape
    ``H, W`` or ``B, H, W``; ``condition`` is one string for the whole update or one per
    batch element.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        background_id: int | None = 0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        if background_id is not None and not 0 <= background_id < num_classes:
            raise ValueError(f"background_id {background_id} outside 0..{num_classes - 1}")
        self.background_id = background_id
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.condition_confusion: dict[str, np.ndarray] = {}
        self.samples = 0

    def _confusion_of(self, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
        valid = label != self.ignore_index
        label = label[valid].astype(np.int64)
        pred = pred[valid].astype(np.int64)
        if label.size and (label.max() >= self.num_classes or label.min() < 0):
            raise ValueError(f"label holds class {int(label.max())} but there are {self.num_classes} classes "
                             f"(ignore {self.ignore_index})")
        if pred.size and (pred.max() >= self.num_classes or pred.min() < 0):
            raise ValueError(f"prediction holds class {int(pred.max())} but there are {self.num_classes} classes")
        k = self.num_classes
        return np.bincount(label * k + pred, minlength=k * k).reshape(k, k)

    def update(self, pred: Any, label: Any, condition: str | Sequence[str | None] | None = None) -> None:
        pred, label = _to_numpy(pred), _to_numpy(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        if pred.ndim == 2:
            pred, label = pred[None], label[None]
        if isinstance(condition, str) or condition is None:
            conditions = [condition] * pred.shape[0]
        else:
            conditions = list(condition)
            if len(conditions) != pred.shape[0]:
                raise ValueError(f"{len(conditions)} conditions for a batch of {pred.shape[0]}")
        for one_pred, one_label, cond in zip(pred, label, conditions):
            conf = self._confusion_of(one_pred, one_label)
            self.confusion += conf
            self.samples += 1
            if cond is not None:
                if cond not in self.condition_confusion:
                    self.condition_confusion[cond] = np.zeros_like(self.confusion)
                self.condition_confusion[cond] += conf

    def merge_(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add another accumulator's counts (e.g. from another process) into this one."""
        self.confusion += other.confusion
        self.samples += other.samples
        for cond, conf in other.condition_confusion.items():
            self.condition_confusion[cond] = self.condition_confusion.get(cond, 0) + conf
        return self

    def compute(self) -> dict[str, Any]:
        """``{"overall": scores, "conditions": {name: scores}, "convention": str, "samples": int}``."""
        return {
            "overall": scores_from_confusion(self.confusion, self.class_names, self.background_id),
            "conditions": {
                cond: scores_from_confusion(conf, self.class_names, self.background_id)
                for cond, conf in sorted(self.condition_confusion.items())
            },
            "confusion_matrix": self.confusion.tolist(),
            "convention": SEGMENTATION_CONVENTION,
            "samples": self.samples,
        }


class DetectionMetrics:
    """COCO-style box mAP over images, optionally split by condition.

    ``update(pred, gt, condition=None)``: ``pred = {"boxes": N,4 xyxy, "scores": N, "labels": N}``
    and ``gt = {"boxes": M,4 xyxy, "labels": M}`` for one image (or lists of both for a batch).
    Labels are ids of the semantic class list.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        self.images: list[dict[str, Any]] = []

    def update(
        self,
        pred: dict | Sequence[dict],
        gt: dict | Sequence[dict],
        condition: str | Sequence[str | None] | None = None,
    ) -> None:
        """``gt`` may also hold ``"ignore_boxes"`` (M,4 xyxy): regions scored as COCO crowds."""
        preds = [pred] if isinstance(pred, dict) else list(pred)
        gts = [gt] if isinstance(gt, dict) else list(gt)
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
        conditions = [condition] * len(preds) if isinstance(condition, str) or condition is None else list(condition)
        for p, g, cond in zip(preds, gts, conditions):
            image = {
                "pred_boxes": _to_numpy(p["boxes"]).reshape(-1, 4).astype(np.float64),
                "pred_scores": _to_numpy(p["scores"]).reshape(-1).astype(np.float64),
                "pred_labels": _to_numpy(p["labels"]).reshape(-1).astype(np.int64),
                "gt_boxes": _to_numpy(g["boxes"]).reshape(-1, 4).astype(np.float64),
                "gt_labels": _to_numpy(g["labels"]).reshape(-1).astype(np.int64),
                "gt_ignore": _to_numpy(g.get("ignore_boxes", np.zeros((0, 4)))).reshape(-1, 4).astype(np.float64),
                "condition": cond,
            }
            self.images.append(image)

    def merge_(self, other: "DetectionMetrics") -> "DetectionMetrics":
        self.images.extend(other.images)
        return self

    def _evaluate(self, images: list[dict[str, Any]]) -> dict[str, Any]:
        gt_count = sum(len(im["gt_labels"]) for im in images)
        result: dict[str, Any] = {"map_50": float("nan"), "map_50_95": float("nan"), "gt_boxes": gt_count,
                                  "pred_boxes": sum(len(im["pred_labels"]) for im in images), "per_class": {}}
        if gt_count == 0:
            return result
        from faster_coco_eval import COCO, COCOeval_faster

        gt_classes = sorted({int(c) for im in images for c in im["gt_labels"]})
        annotations, detections = [], []
        for image_id, im in enumerate(images, start=1):
            crowds = [(box, c, 1) for box in im.get("gt_ignore", ()) for c in gt_classes]
            for box, label, crowd in [(b, int(c), 0) for b, c in zip(im["gt_boxes"], im["gt_labels"])] + crowds:
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                    "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": crowd})
            for box, score, label in zip(im["pred_boxes"], im["pred_scores"], im["pred_labels"]):
                x0, y0, x1, y1 = (float(v) for v in box)
                detections.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                   "bbox": [x0, y0, x1 - x0, y1 - y0]})
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i} for i in range(1, len(images) + 1)],
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(self.class_names)],
        }
        coco_gt.createIndex()
        counts = {c: sum(int((im["gt_labels"] == c).sum()) for im in images) for c in gt_classes}
        if not detections:
            result.update(map_50=0.0, map_50_95=0.0, per_class={
                self._name(c): {"ap_50": 0.0, "ap_50_95": 0.0, "gt_boxes": counts[c]} for c in gt_classes})
            return result
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = evaluator.stats
        result.update(map_50_95=max(float(stats[0]), 0.0), map_50=max(float(stats[1]), 0.0))
        # precision: T (IoU 0.5:0.05:0.95), R (recall points), K (categories), A (area 'all' first), M (maxDets).
        precision = np.asarray(evaluator.eval["precision"])
        cat_ids = [int(c) for c in evaluator.params.catIds]
        for c in gt_classes:
            p = precision[:, :, cat_ids.index(c), 0, -1]
            result["per_class"][self._name(c)] = {
                "ap_50": float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else 0.0,
                "ap_50_95": float(p[p > -1].mean()) if (p > -1).any() else 0.0,
                "gt_boxes": counts[c],
            }
        return result

    def _name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)

    def compute(self) -> dict[str, Any]:
        """``{"overall": {"map_50", "map_50_95", ...}, "conditions": {name: {...}}}``."""
        conditions = sorted({im["condition"] for im in self.images if im["condition"] is not None})
        return {
            "overall": self._evaluate(self.images),
            "conditions": {c: self._evaluate([im for im in self.images if im["condition"] == c]) for c in conditions},
            "images": len(self.images),
        }


# The 9 reference FPPI of MR^-2: 10^-2 .. 10^0 in steps of 10^0.25 (the toolbox's ref=10.^(-2:.25:0)).
REFERENCE_FPPI = tuple(float(10.0 ** e) for e in np.arange(-2.0, 0.001, 0.25))


@dataclass(frozen=True)
class MissRateSubset:
    """Which ground truth a miss-rate setting scores: persons with box height in ``height``
    (inclusive), occlusion level in ``occlusion`` and the whole box at least ``border`` px inside
    the image; every other box is an ignore region."""

    height: tuple[float, float]
    occlusion: tuple[int, ...]
    border: float = 5.0


# KAIST's settings: "reasonable" (the benchmark's headline number) and "all" (height >= 20 px, any
# occlusion), bounds [5, 635] x [5, 507] on its 640x512 frames.
KAIST_SUBSETS = {
    "reasonable": MissRateSubset(height=(55.0, math.inf), occlusion=(0, 1)),
    "all": MissRateSubset(height=(20.0, math.inf), occlusion=(0, 1, 2)),
}


def match_detections(dt: np.ndarray, gt: np.ndarray, gt_ignore: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The toolbox's ``evalRes`` on one image: ``N`` flags, 1 hit, 0 false positive, -1 ignored.

    ``dt`` N,4 xyxy sorted by descending score; ``gt`` M,4 xyxy; ``gt_ignore`` M bool. Each
    detection, best first, takes the unmatched regular box it overlaps most (IoU >= threshold,
    ties to the later box); failing that, it falls on the first ignore region whose overlap
    (intersection over the detection's own area) reaches the threshold, and is ignored. Ignore
    regions absorb any number of detections.
    """
    flags = np.zeros(len(dt), np.int64)
    if not len(dt) or not len(gt):
        return flags
    ix = np.clip(np.minimum(dt[:, None, 2], gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(dt[:, None, 3], gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1]), 0, None)
    inter = ix * iy
    dt_area = ((dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1]))[:, None]
    gt_area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None, :]
    overlap = np.where(gt_ignore[None, :], inter / dt_area, inter / (dt_area + gt_area - inter))
    regular, ignore = np.flatnonzero(~gt_ignore), np.flatnonzero(gt_ignore)
    free = np.ones(len(regular), bool)
    for d in range(len(dt)):
        candidates = np.where(free & (overlap[d, regular] >= threshold), overlap[d, regular], -1.0)
        if candidates.max(initial=-1.0) >= 0:
            best = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
            free[best] = False
            flags[d] = 1
        elif (overlap[d, ignore] >= threshold).any():
            flags[d] = -1
    return flags


def log_average_miss_rate(flags: np.ndarray, scores: np.ndarray, num_gt: int, num_images: int,
                          reference: Sequence[float] = REFERENCE_FPPI) -> dict[str, Any]:
    """MR^-2 from the per-detection ``flags`` (1/0/-1) and ``scores`` of all images (toolbox ``compRoc``).

    Ignored detections are dropped, the rest sorted by descending score (stable); at each
    reference FPPI the recall is the one of the last point whose FPPI does not exceed it (0 when
    none does); ``MR^-2 = exp(mean(log(max(1e-10, 1 - recall))))``. NaN without ground truth.
    """
    keep = flags != -1
    order = np.argsort(-scores[keep], kind="stable")
    hits = flags[keep][order] == 1
    result: dict[str, Any] = {"mr": float("nan"), "miss_rate": [], "recall": float("nan"), "gt": int(num_gt),
                              "images": int(num_images), "reference_fppi": [float(r) for r in reference]}
    if num_gt == 0 or num_images == 0:
        return result
    fppi = np.cumsum(~hits) / num_images
    recall = np.cumsum(hits) / num_gt
    at = []
    for ref in reference:
        below = np.flatnonzero(fppi <= ref)
        at.append(float(recall[below[-1]]) if below.size else 0.0)
    miss = 1.0 - np.asarray(at)
    result.update(mr=float(np.exp(np.mean(np.log(np.maximum(1e-10, miss))))), miss_rate=miss.tolist(),
                  recall=float(recall[-1]) if recall.size else 0.0)
    return result


class MissRateMetrics:
    """Log-average miss rate of one class (KAIST's ``person``) over FPPI 10^-2..10^0, per subset.

    The rules of the Caltech/KAIST toolbox (``bbGt`` loadAll/evalRes/compRoc as the KAIST
    evaluation calls them): a ground-truth box counts only when it is in the subset (height,
    occlusion, inside ``border`` px of the image, see :class:`MissRateSubset`), otherwise it is an
    ignore region, as are the sample's ``ignore_boxes``; detections of the class are matched by
    :func:`match_detections` at IoU 0.5 (no size filter on detections) and scored by
    :func:`log_average_miss_rate` over all images (including those without ground truth).

    ``update(pred, gt, image_size, condition)``: ``pred = {"boxes", "scores", "labels"}``,
    ``gt = {"boxes", "labels", "ignore_boxes", "occlusion"}`` (occlusion 0/1/2 per box; missing
    means 0), ``image_size = (H, W)``.
    """

    def __init__(self, class_id: int = 1, subsets: dict[str, MissRateSubset] | None = None,
                 iou_threshold: float = 0.5) -> None:
        self.class_id = int(class_id)
        self.subsets = dict(KAIST_SUBSETS if subsets is None else subsets)
        self.iou_threshold = float(iou_threshold)
        self.images: list[dict[str, Any]] = []

    def update(self, pred: dict, gt: dict, image_size: Sequence[int], condition: str | None = None) -> None:
        labels = _to_numpy(pred["labels"]).reshape(-1)
        mine = labels == self.class_id
        boxes = _to_numpy(pred["boxes"]).reshape(-1, 4).astype(np.float64)[mine]
        scores = _to_numpy(pred["scores"]).reshape(-1).astype(np.float64)[mine]
        order = np.argsort(-scores, kind="stable")
        gt_labels = _to_numpy(gt["labels"]).reshape(-1)
        gt_boxes = _to_numpy(gt["boxes"]).reshape(-1, 4).astype(np.float64)
        occlusion = gt.get("occlusion")
        occlusion = np.zeros(len(gt_boxes), np.int64) if occlusion is None else _to_numpy(occlusion).reshape(-1)
        self.images.append({
            "dt": boxes[order], "scores": scores[order], "gt": gt_boxes[gt_labels == self.class_id],
            "occlusion": occlusion[gt_labels == self.class_id].astype(np.int64),
            "ignore": _to_numpy(gt.get("ignore_boxes", np.zeros((0, 4)))).reshape(-1, 4).astype(np.float64),
            "size": (int(image_size[0]), int(image_size[1])), "condition": condition,
        })

    def _score(self, images: list[dict[str, Any]], subset: MissRateSubset) -> dict[str, Any]:
        flags, scores, num_gt = [], [], 0
        for im in images:
            gt, (height, width) = im["gt"], im["size"]
            h = gt[:, 3] - gt[:, 1]
            b = subset.border
            inside = (gt[:, 0] >= b) & (gt[:, 1] >= b) & (gt[:, 2] <= width - b) & (gt[:, 3] <= height - b)
            counted = inside & (h >= subset.height[0]) & (h <= subset.height[1])
            counted &= np.isin(im["occlusion"], subset.occlusion)
            all_gt = np.concatenate([gt, im["ignore"]])
            ignored = np.concatenate([~counted, np.ones(len(im["ignore"]), bool)])
            flags.append(match_detections(im["dt"], all_gt, ignored, self.iou_threshold))
            scores.append(im["scores"])
            num_gt += int(counted.sum())
        if not images:
            return log_average_miss_rate(np.zeros(0, np.int64), np.zeros(0), 0, 0)
        return log_average_miss_rate(np.concatenate(flags), np.concatenate(scores), num_gt, len(images))

    def compute(self) -> dict[str, Any]:
        """``{"subsets": {name: scores}, "conditions": {condition: {name: scores}}, "definition": str}``."""
        conditions = sorted({im["condition"] for im in self.images if im["condition"] is not None})
        return {
            "subsets": {name: self._score(self.images, sub) for name, sub in self.subsets.items()},
            "conditions": {c: {name: self._score([im for im in self.images if im["condition"] == c], sub)
                               for name, sub in self.subsets.items()} for c in conditions},
            "definition": "; ".join(
                f"{name}: height {sub.height[0]:g}-{sub.height[1]:g} px, occlusion {list(sub.occlusion)}, "
                f"{sub.border:g} px from the border" for name, sub in self.subsets.items()
            ) + f"; IoU {self.iou_threshold:g}; FPPI 10^-2..10^0 (9 points)",
        }


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Row-normalised confusion matrix (rows: ground truth) as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(k):
        for j in range(k):
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_report(
    segmentation: dict[str, Any] | None,
    detection: dict[str, Any] | None,
    split: str,
    dataset: str,
    weights: str | None = None,
    miss_rate: dict[str, Any] | None = None,
) -> str:
    """Markdown report: split scored, overall means, per-condition table, per-class table
    (and the miss-rate table when ``miss_rate``, a :meth:`MissRateMetrics.compute` result, is given)."""
    lines = [f"# Evaluation: {dataset}, split `{split}`", ""]
    if weights:
        lines += [f"Weights: `{weights}`", ""]
    lines += [f"Scored split: **{split}**.", ""]
    if segmentation is not None:
        o = segmentation["overall"]
        lines += [
            "## Segmentation",
            "",
            f"Samples: {segmentation['samples']}. {segmentation['convention']}",
            "",
            "| subset | mIoU | mIoU w/o bg | mAcc | mAcc w/o bg | pixel acc |",
            "|---|---|---|---|---|---|",
        ]
        for cond, s in [("all", o)] + list(segmentation["conditions"].items()):
            scores = " | ".join(_fmt(s[k]) for k in ("miou", "miou_no_bg", "macc", "macc_no_bg", "pixel_acc"))
            lines.append(f"| {cond} | {scores} |")
        lines += ["", "| class | IoU | accuracy | gt pixels | predicted pixels |", "|---|---|---|---|---|"]
        for name, c in o["per_class"].items():
            lines.append(f"| {name} | {_fmt(c['iou'])} | {_fmt(c['acc'])} | {c['gt_pixels']} | {c['pred_pixels']} |")
        if o["absent_classes"]:
            lines += ["", f"Absent (excluded from the means): {', '.join(o['absent_classes'])}."]
        lines.append("")
    if detection is not None:
        o = detection["overall"]
        lines += ["## Detection", "", "| subset | mAP@0.5 | mAP@0.5:0.95 | gt boxes | predicted boxes |",
                  "|---|---|---|---|---|"]
        for cond, s in [("all", o)] + list(detection["conditions"].items()):
            maps = f"{_fmt(s['map_50'])} | {_fmt(s['map_50_95'])}"
            lines.append(f"| {cond} | {maps} | {s['gt_boxes']} | {s['pred_boxes']} |")
        if o.get("per_class"):
            lines += ["", "| class | AP@0.5 | AP@0.5:0.95 | gt boxes |", "|---|---|---|---|"]
            lines += [f"| {name} | {_fmt(c['ap_50'])} | {_fmt(c['ap_50_95'])} | {c['gt_boxes']} |"
                      for name, c in o["per_class"].items()]
        lines.append("")
    if miss_rate is not None:
        lines += ["## Log-average miss rate (MR^-2, lower is better)", "", miss_rate["definition"] + ".", "",
                  "| condition | setting | MR^-2 | recall | gt | images |", "|---|---|---|---|---|---|"]
        for cond, subsets in [("all", miss_rate["subsets"])] + list(miss_rate["conditions"].items()):
            for name, m in subsets.items():
                lines.append(f"| {cond} | {name} | {_fmt(m['mr'])} | {_fmt(m['recall'])} | {m['gt']} | {m['images']} |")
        lines.append("")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_report(
    out_dir: str,
    segmentation: SegmentationMetrics | None,
    detection: DetectionMetrics | None = None,
    split: str = "val",
    dataset: str = "",
    weights: str | None = None,
    extra: dict[str, Any] | None = None,
    miss_rate: MissRateMetrics | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and ``confusion_matrix.png`` into ``out_dir``.

    ``metrics.json`` holds ``segmentation`` and ``detection`` (null when not scored) and, with
    ``miss_rate``, ``miss_rate``. Returns the metrics dictionary written (NaN written as null).
    """
    os.makedirs(out_dir, exist_ok=True)
    seg = segmentation.compute() if segmentation is not None else None
    det = detection.compute() if detection is not None else None
    metrics = {"dataset": dataset, "split": split, "weights": weights, "segmentation": seg, "detection": det}
    mr = miss_rate.compute() if miss_rate is not None else None
    if mr is not None:
        metrics["miss_rate"] = mr
    if extra:
        metrics.update(extra)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(_json_safe(metrics), f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(format_report(seg, det, split, dataset, weights, miss_rate=mr))
    if segmentation is not None:
        plot_confusion_matrix(segmentation.confusion, segmentation.class_names,
                              os.path.join(out_dir, "confusion_matrix.png"),
                              title=f"{dataset} {split}: confusion (row-normalised)")
    return _json_safe(metrics)

