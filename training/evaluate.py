"""Score a weights file on a data-set split through the node's own InferenceEngine.

Writes ``metrics.json``, ``report.md`` (naming the split), ``confusion_matrix.png`` and a few
``overlays/*.png`` (RGB | thermal | ground truth | prediction with boxes). Data sets with masks
get segmentation scores; every data set with boxes gets COCO box mAP (overall, per condition and
per class); KAIST also gets the log-average miss rate MR^-2 (reasonable and all settings).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from rgbt_perception.core.defaults import MAP_SCORE_THRESHOLD, MAX_DETECTIONS, RUN_INPUTS
from rgbt_perception.core.overlay import blend_overlay, draw_detections, gray_to_rgb
from rgbt_perception.core.registration import warp_thermal_to_rgb
from rgbt_perception.evaluation.metrics import DetectionMetrics, MissRateMetrics, SegmentationMetrics, write_report

# Data sets scored by the log-average miss rate of this class, besides mAP.
MISS_RATE_CLASS = {"kaist": "person"}


def infer_sample(engine: Any, sample: dict[str, Any], modalities: str = "both") -> Any:
    """Run ``engine`` on one data-set sample using only ``modalities``; the mask is on the RGB grid."""
    rgb, thermal, homography = sample["rgb"], sample["thermal"], sample.get("homography")
    if modalities == "rgb":
        return engine.infer(rgb, None)
    if modalities == "thermal":
        # Registered onto the RGB grid first, as in training, so the mask lines up with the labels.
        return engine.infer(None, warp_thermal_to_rgb(thermal, homography, rgb.shape[:2]))
    return engine.infer(rgb, thermal, homography=homography)


def overlay_panel(sample: dict[str, Any], result: Any, palette: Sequence[Sequence[int]],
                  class_names: Sequence[str] | None = None, masks: bool = True) -> np.ndarray:
    """One row: RGB, registered thermal, ground truth over RGB, prediction + boxes over RGB (RGB uint8).

    With ``masks=False`` (box-only data sets, whose semantic head is untrained) both panels show
    boxes only: the ground-truth boxes (named by ``class_names``) and the detections.
    """
    rgb = sample["rgb"]
    thermal = gray_to_rgb(warp_thermal_to_rgb(sample["thermal"], sample.get("homography"), rgb.shape[:2]))
    if not masks:
        from rgbt_perception.core.frames import Detection

        names = list(class_names or [])
        truth_boxes = [Detection(int(c), names[int(c)] if int(c) < len(names) else str(int(c)), 1.0, *map(float, b))
                       for b, c in zip(sample["boxes"], sample["box_labels"])]
        truth = draw_detections(rgb, truth_boxes, palette, thickness=1)
        return np.concatenate([rgb, thermal, truth, draw_detections(rgb, result.detections, palette, thickness=1)],
                              axis=1)
    label = sample["label"] if sample.get("label") is not None else np.zeros(rgb.shape[:2], np.uint8)
    truth = blend_overlay(rgb, label, palette)
    prediction = draw_detections(blend_overlay(rgb, result.mask, palette), result.detections, palette, thickness=1)
    return np.concatenate([rgb, thermal, truth, prediction], axis=1)


def evaluate_dataset(
    engine: Any,
    dataset: Any,
    out_dir: str,
    split: str,
    dataset_name: str,
    modalities: str = "both",
    num_overlays: int = 4,
    max_samples: int = 0,
    weights_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every sample (or the first ``max_samples``) of ``dataset`` and write the report."""
    if modalities not in RUN_INPUTS:
        raise ValueError(f"modalities must be one of {RUN_INPUTS}, got {modalities!r}")
    class_set = dataset.class_set
    if list(engine.class_names) != list(class_set.names):
        raise ValueError(
            f"the weights predict classes {list(engine.class_names)} but the {dataset_name} data set has "
            f"{list(class_set.names)}"
        )
    segmentation = SegmentationMetrics(class_set.num_classes, class_set.names, class_set.background_id)
    detection = DetectionMetrics(class_set.names)
    miss_rate = None
    if class_set.name in MISS_RATE_CLASS:
        miss_rate = MissRateMetrics(class_id=class_set.names.index(MISS_RATE_CLASS[class_set.name]))
    count = len(dataset) if max_samples <= 0 else min(max_samples, len(dataset))
    overlay_dir = os.path.join(out_dir, "overlays")
    os.makedirs(overlay_dir, exist_ok=True)
    labelled = gt_boxes = 0
    for index in tqdm(range(count), desc=f"eval {dataset_name}/{split}", unit="frame", disable=not progress):
        sample = dataset[index]
        result = infer_sample(engine, sample, modalities)
        condition = sample.get("condition")
        if sample.get("label") is not None:
            segmentation.update(result.mask, sample["label"], condition=condition)
            labelled += 1
        dets = result.detections
        prediction = {
            "boxes": np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in dets], np.float64).reshape(-1, 4),
            "scores": np.array([d.score for d in dets], np.float64),
            "labels": np.array([d.class_id for d in dets], np.int64),
        }
        truth = {"boxes": sample["boxes"], "labels": sample["box_labels"],
                 "ignore_boxes": sample.get("ignore_boxes", np.zeros((0, 4), np.float32))}
        detection.update(prediction, truth, condition=condition)
        gt_boxes += len(sample["boxes"])
        if miss_rate is not None:
            miss_rate.update(prediction, {**truth, "occlusion": sample.get("box_occlusion")},
                             image_size=sample["rgb"].shape[:2], condition=condition)
        if index < num_overlays:
            panel = overlay_panel(sample, result, class_set.palette, class_set.names, masks=class_set.has_masks)
            name = str(sample.get("name", index)).replace(os.sep, "_")
            cv2.imwrite(os.path.join(overlay_dir, f"{index:03d}_{name}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    if labelled == 0 and gt_boxes == 0 and class_set.has_masks:
        raise ValueError(f"split {split!r} of {dataset_name} has no labels or boxes to score")
    # Box-only data sets (and splits without masks) are scored on boxes alone.
    return write_report(out_dir, segmentation if labelled else None, detection, split=split, dataset=dataset_name,
                        weights=weights_name, extra={"modalities": modalities, "frames": count}, miss_rate=miss_rate)


def evaluate_weights(
    weights: str,
    data_root: str,
    dataset_name: str,
    split: str,
    out_dir: str,
    device: str = "auto",
    modalities: str | None = None,
    backend: str = "torch",
    **kwargs: Any,
) -> dict[str, Any]:
    """Load ``weights`` into an InferenceEngine and score ``split`` of the data set at ``data_root``.

    ``modalities=None`` uses the modalities the weights were trained with (their provenance).
    ``backend``: the engine's inference backend (torch, onnxruntime, tensorrt, auto).
    """
    from rgbt_perception.backends.base import DecodeSettings
    from rgbt_perception.backends.factory import create_engine
    from rgbt_perception.io.weights import read_metadata
    from training.datasets import build_dataset

    metadata = read_metadata(weights)
    if modalities is None:
        modalities = metadata.provenance.get("modalities") or "both"
    dataset = build_dataset(dataset_name, data_root, split)
    # mAP over the score range scoring keeps and no per-class cap below COCO's 100 (the node's
    # defaults publish only confident boxes).
    decode = DecodeSettings(score_threshold=kwargs.pop("score_threshold", MAP_SCORE_THRESHOLD),
                            max_per_class=MAX_DETECTIONS)
    engine = create_engine(weights, device=device, backend=backend, decode=decode)
    try:
        return evaluate_dataset(engine, dataset, out_dir, split, dataset_name, modalities=modalities,
                                weights_name=os.path.basename(weights), **kwargs)
    finally:
        engine.release()


def comparison_table(reports: Sequence[tuple[str, str]]) -> str:
    """Markdown table of mIoU (with / without background) of several ``rgbt-eval`` output folders,
    or of box mAP@0.5 / mAP@0.5:0.95 (and MR^-2 where scored) when they hold no segmentation scores.

    ``reports``: ``(model name, folder holding metrics.json)``; all must score the same split.
    One row per model, columns overall and per condition; segmentation reports also get the box
    table (when they scored boxes) and IoU per class.
    """
    import json

    loaded = []
    for name, folder in reports:
        path = os.path.join(folder, "metrics.json")
        try:
            with open(path) as f:
                loaded.append((name, json.load(f)))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path}: {err}") from None
    splits = {(m["dataset"], m["split"]) for _, m in loaded}
    if len(splits) != 1:
        raise ValueError(f"the reports score different data sets/splits: {sorted(splits)}")
    dataset, split = splits.pop()
    if any(m.get("segmentation") is None for _, m in loaded):
        lines = _score_table(loaded, "detection", "map_50", "map_50_95",
                             f"box mAP@0.5 / mAP@0.5:0.95 (%), {dataset} split `{split}`")
        return "\n".join(lines + _miss_rate_table(loaded, dataset, split)) + "\n"
    lines = _score_table(loaded, "segmentation", "miou", "miou_no_bg",
                         f"mIoU / mIoU without background (%), {dataset} split `{split}`")
    if all(m.get("detection") for _, m in loaded):
        lines += [""] + _score_table(loaded, "detection", "map_50", "map_50_95",
                                     f"box mAP@0.5 / mAP@0.5:0.95 (%), {dataset} split `{split}`")
    return "\n".join(lines + _class_table(loaded, dataset, split)) + "\n"


def _class_table(loaded: list[tuple[str, dict[str, Any]]], dataset: str, split: str) -> list[str]:
    """Markdown lines: IoU (%) per class and report; ``-`` where the split has no pixel of the class."""
    names = list(loaded[0][1]["segmentation"]["overall"]["per_class"])
    lines = ["", f"IoU per class (%), {dataset} split `{split}` (`-`: no ground truth)", "",
             "| model | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for name, m in loaded:
        per_class = m["segmentation"]["overall"]["per_class"]
        cells = ["-" if per_class.get(c, {}).get("gt_pixels", 0) == 0 or per_class[c].get("iou") is None
                 else f"{100 * per_class[c]['iou']:.1f}" for c in names]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return lines


def _score_table(loaded: list[tuple[str, dict[str, Any]]], section: str, first: str, second: str,
                 title: str) -> list[str]:
    """Markdown lines: one row per report, ``first / second`` (%) of ``section`` overall and per condition."""
    conditions = sorted({c for _, m in loaded for c in m[section]["conditions"]})

    def cell(scores: dict[str, Any] | None) -> str:
        if not scores or scores.get(first) is None:
            return "n/a"
        other = scores.get(second)
        return f"{100 * scores[first]:.1f} / {'n/a' if other is None else f'{100 * other:.1f}'}"

    header = ["model", "all"] + conditions
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in loaded:
        scores = m[section]
        lines.append("| " + " | ".join([name, cell(scores["overall"])]
                                       + [cell(scores["conditions"].get(c)) for c in conditions]) + " |")
    return lines


def _miss_rate_table(loaded: list[tuple[str, dict[str, Any]]], dataset: str, split: str) -> list[str]:
    """Markdown lines of MR^-2 per subset when every report has it (KAIST), else none."""
    lines: list[str] = []
    if all(m.get("miss_rate") for _, m in loaded):
        settings = list(loaded[0][1]["miss_rate"]["subsets"])
        lines += ["", f"log-average miss rate MR^-2 (%), {dataset} split `{split}`", "",
                  "| model | " + " | ".join(settings) + " |", "|" + "---|" * (len(settings) + 1)]
        for name, m in loaded:
            values = [m["miss_rate"]["subsets"].get(s, {}).get("mr") for s in settings]
            lines.append("| " + " | ".join([name] + ["n/a" if v is None else f"{100 * v:.1f}" for v in values]) + " |")
    return lines
