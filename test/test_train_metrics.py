"""Segmentation and detection metrics against hand-computed values."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from rgbt_perception.evaluation.metrics import (
    DetectionMetrics,
    SegmentationMetrics,
    scores_from_confusion,
    write_report,
)


def test_confusion_and_means_with_and_without_background():
    # 3 classes present in the data (0 = background), class 3 never appears anywhere.
    label = np.array([[0, 0, 1, 1],
                      [2, 2, 255, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 2]], dtype=np.uint8)
    m = SegmentationMetrics(4, ["bg", "a", "b", "never"], background_id=0)
    m.update(pred, label)
    # rows = ground truth, cols = prediction; the ignore pixel (pred 0) is not counted.
    expected = np.array([[1, 1, 0, 0],
                         [0, 2, 1, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(m.confusion, expected)
    r = m.compute()["overall"]
    # IoU: bg 1/(2+2-1)=1/3, a 2/(3+3-2)=1/2, b 1/(2+2-1)=1/3, never: absent -> excluded.
    iou = [1 / 3, 1 / 2, 1 / 3]
    acc = [1 / 2, 2 / 3, 1 / 2]
    assert r["miou"] == pytest.approx(sum(iou) / 3)
    assert r["miou_no_bg"] == pytest.approx((iou[1] + iou[2]) / 2)
    assert r["macc"] == pytest.approx(sum(acc) / 3)
    assert r["macc_no_bg"] == pytest.approx((acc[1] + acc[2]) / 2)
    assert r["pixel_acc"] == pytest.approx(4 / 7)
    assert r["pixels"] == 7
    assert math.isnan(r["per_class"]["never"]["iou"])
    assert r["absent_classes"] == ["never"]


def test_predicted_but_absent_class_counts_zero_iou_and_no_accuracy():
    conf = np.array([[3, 1], [0, 0]])  # class 1 predicted once, never in ground truth
    r = scores_from_confusion(conf, ["bg", "x"], background_id=None)
    assert r["per_class"]["x"]["iou"] == 0.0
    assert math.isnan(r["per_class"]["x"]["acc"])
    assert r["miou"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert r["macc"] == pytest.approx(3 / 4)  # only bg has ground truth
    assert r["miou_no_bg"] == r["miou"]  # no background class declared


def test_per_condition_confusions_add_up_to_overall():
    rng = np.random.default_rng(0)
    m = SegmentationMetrics(3, background_id=0)
    labels = rng.integers(0, 3, size=(4, 5, 6))
    preds = rng.integers(0, 3, size=(4, 5, 6))
    m.update(preds[:2], labels[:2], condition=["day", "night"])
    m.update(preds[2:], labels[2:], condition="day")
    out = m.compute()
    assert set(out["conditions"]) == {"day", "night"}
    np.testing.assert_array_equal(m.condition_confusion["day"] + m.condition_confusion["night"], m.confusion)
    assert m.confusion.sum() == 4 * 5 * 6
    assert out["conditions"]["night"]["pixels"] == 30
    assert out["samples"] == 4


def test_bad_input_names_the_problem():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label holds class 7"):
        m.update(np.zeros((2, 2)), np.full((2, 2), 7))


def test_detection_map_perfect_half_and_none():
    names = ["bg", "car", "person"]
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), "labels": np.array([1, 2])}
    perfect = {"boxes": gt["boxes"].copy(), "scores": np.array([0.9, 0.8]), "labels": np.array([1, 2])}
    d = DetectionMetrics(names)
    d.update(perfect, gt, condition="day")
    r = d.compute()
    assert r["overall"]["map_50"] == pytest.approx(1.0)
    assert r["overall"]["map_50_95"] == pytest.approx(1.0)
    assert r["conditions"]["day"]["gt_boxes"] == 2

    # Only the car is found: the person category has AP 0, mean over the 2 categories = 0.5.
    d = DetectionMetrics(names)
    d.update({"boxes": gt["boxes"][:1], "scores": np.array([0.9]), "labels": np.array([1])}, gt)
    assert d.compute()["overall"]["map_50"] == pytest.approx(0.5)

    # A box with IoU 0.62 matches at thresholds 0.50, 0.55, 0.60 of the ten.
    d = DetectionMetrics(names)
    one = {"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([1])}
    d.update({"boxes": np.array([[0, 0, 10, 6.2]], float), "scores": np.array([0.9]), "labels": np.array([1])}, one)
    r = d.compute()["overall"]
    assert r["map_50"] == pytest.approx(1.0)
    assert r["map_50_95"] == pytest.approx(0.3, abs=1e-6)

    d = DetectionMetrics(names)
    d.update({"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}, gt)
    assert d.compute()["overall"]["map_50"] == 0.0


def test_write_report_files(tmp_path):
    m = SegmentationMetrics(3, ["bg", "a", "b"])
    m.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]), condition="fog")
    out = write_report(str(tmp_path), m, None, split="val", dataset="synthetic")
    assert {"metrics.json", "report.md", "confusion_matrix.png"} <= set(os.listdir(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "val" == out["split"]
    assert saved["segmentation"]["overall"]["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    report = (tmp_path / "report.md").read_text()
    assert "split `val`" in report and "| fog |" in report and "excluded from the means" in report


def test_compare_segmentation_reports_per_condition_boxes_and_class(tmp_path):
    from training.evaluate import comparison_table

    names = ["bg", "car", "cone"]
    label = np.array([[0, 1], [1, 1]])
    for run, pred, score in (("fused", np.array([[0, 1], [1, 1]]), 0.9), ("rgb", np.array([[0, 0], [1, 1]]), 0.3)):
        seg = SegmentationMetrics(3, names)
        seg.update(pred, label, condition="night")
        det = DetectionMetrics(names)
        det.update({"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "scores": np.array([score, 0.5]),
                    "labels": np.array([1, 1])},
                   {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([1])}, condition="night")
        write_report(str(tmp_path / run), seg, det, split="test", dataset="mfnet")
    table = comparison_table([("fused", str(tmp_path / "fused")), ("rgb", str(tmp_path / "rgb"))])
    assert "| fused | 100.0 / 100.0 | 100.0 / 100.0 |" in table
    # rgb: background 1 of 2 predicted pixels right (IoU 0.5), car 2 of 3 (IoU 2/3).
    assert "| rgb | 58.3 / 66.7 | 58.3 / 66.7 |" in table
    assert "box mAP@0.5 / mAP@0.5:0.95 (%), mfnet split `test`" in table and "| rgb | 50.0 / 50.0 |" in table
    assert "| model | bg | car | cone |" in table
    assert "| fused | 100.0 | 100.0 | - |" in table and "| rgb | 50.0 | 66.7 | - |" in table
