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
that have ground truth.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
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
            raise ValueError(f"label holds class {int(label.max())} but there are {self.num_classes} classes (ignore {self.ignore_index})")
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
        for p, l, cond in zip(pred, label, conditions):
            conf = self._confusion_of(p, l)
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
                "condition": cond,
            }
            self.images.append(image)

    def merge_(self, other: "DetectionMetrics") -> "DetectionMetrics":
        self.images.extend(other.images)
        return self

    def _evaluate(self, images: list[dict[str, Any]]) -> dict[str, Any]:
        gt_count = sum(len(im["gt_labels"]) for im in images)
        result: dict[str, Any] = {"map_50": float("nan"), "map_50_95": float("nan"), "gt_boxes": gt_count,
                                  "pred_boxes": sum(len(im["pred_labels"]) for im in images)}
        if gt_count == 0:
            return result
        from faster_coco_eval import COCO, COCOeval_faster

        annotations, detections = [], []
        for image_id, im in enumerate(images, start=1):
            for box, label in zip(im["gt_boxes"], im["gt_labels"]):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                    "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
            for box, score, label in zip(im["pred_boxes"], im["pred_scores"], im["pred_labels"]):
                detections.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                   "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i} for i in range(1, len(images) + 1)],
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(self.class_names)],
        }
        coco_gt.createIndex()
        if not detections:
            result.update(map_50=0.0, map_50_95=0.0)
            return result
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = evaluator.stats
        result.update(map_50_95=max(float(stats[0]), 0.0), map_50=max(float(stats[1]), 0.0))
        return result

    def compute(self) -> dict[str, Any]:
        """``{"overall": {"map_50", "map_50_95", ...}, "conditions": {name: {...}}}``."""
        conditions = sorted({im["condition"] for im in self.images if im["condition"] is not None})
        return {
            "overall": self._evaluate(self.images),
            "conditions": {c: self._evaluate([im for im in self.images if im["condition"] == c]) for c in conditions},
            "images": len(self.images),
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
) -> str:
    """Markdown report: split scored, overall means, per-condition table, per-class table."""
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
            f"| all | {_fmt(o['miou'])} | {_fmt(o['miou_no_bg'])} | {_fmt(o['macc'])} | {_fmt(o['macc_no_bg'])} | {_fmt(o['pixel_acc'])} |",
        ]
        for cond, s in segmentation["conditions"].items():
            lines.append(f"| {cond} | {_fmt(s['miou'])} | {_fmt(s['miou_no_bg'])} | {_fmt(s['macc'])} | {_fmt(s['macc_no_bg'])} | {_fmt(s['pixel_acc'])} |")
        lines += ["", "| class | IoU | accuracy | gt pixels | predicted pixels |", "|---|---|---|---|---|"]
        for name, c in o["per_class"].items():
            lines.append(f"| {name} | {_fmt(c['iou'])} | {_fmt(c['acc'])} | {c['gt_pixels']} | {c['pred_pixels']} |")
        if o["absent_classes"]:
            lines += ["", f"Absent (excluded from the means): {', '.join(o['absent_classes'])}."]
        lines.append("")
    if detection is not None:
        o = detection["overall"]
        lines += ["## Detection", "", "| subset | mAP@0.5 | mAP@0.5:0.95 | gt boxes | predicted boxes |", "|---|---|---|---|---|",
                  f"| all | {_fmt(o['map_50'])} | {_fmt(o['map_50_95'])} | {o['gt_boxes']} | {o['pred_boxes']} |"]
        for cond, s in detection["conditions"].items():
            lines.append(f"| {cond} | {_fmt(s['map_50'])} | {_fmt(s['map_50_95'])} | {s['gt_boxes']} | {s['pred_boxes']} |")
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
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and ``confusion_matrix.png`` into ``out_dir``.

    Returns the metrics dictionary written to ``metrics.json`` (NaN written as null).
    """
    os.makedirs(out_dir, exist_ok=True)
    seg = segmentation.compute() if segmentation is not None else None
    det = detection.compute() if detection is not None else None
    metrics = {"dataset": dataset, "split": split, "weights": weights, "segmentation": seg, "detection": det}
    if extra:
        metrics.update(extra)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(_json_safe(metrics), f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(format_report(seg, det, split, dataset, weights))
    if segmentation is not None:
        plot_confusion_matrix(segmentation.confusion, segmentation.class_names,
                              os.path.join(out_dir, "confusion_matrix.png"), title=f"{dataset} {split}: confusion (row-normalised)")
    return _json_safe(metrics)

