"""Log-average miss rate (KAIST/Caltech toolbox rules) on a hand-computed case; per-class COCO AP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rgbt_perception.evaluation.metrics import (
    REFERENCE_FPPI,
    DetectionMetrics,
    MissRateMetrics,
    log_average_miss_rate,
    match_detections,
    write_report,
)

SIZE = (512, 640)  # KAIST frames: H, W; the subsets keep boxes inside [5, 635] x [5, 507]


def pred(boxes, scores, labels=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"boxes": boxes, "scores": np.asarray(scores, np.float64),
            "labels": np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels)}


def gt(boxes, occlusion, ignore=()):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.ones(len(boxes), np.int64), "occlusion": np.asarray(occlusion, np.int64),
            "ignore_boxes": np.asarray(ignore, np.float64).reshape(-1, 4)}


def hand_case() -> MissRateMetrics:
    """Three frames. A (day): G1 h80 occ0, G2 h40, G3 h100 heavy, ignore region I1; B (night): G4 h80
    partial, G5 touching the left border; C (night): G6 h100, no detection on it."""
    m = MissRateMetrics(class_id=1)
    m.update(pred([[100, 100, 130, 180], [505, 310, 535, 370], [300, 100, 320, 140], [200, 200, 230, 280],
                   [0, 0, 50, 50]],
                  [0.6, 0.8, 0.7, 0.9, 0.99], labels=[1, 1, 1, 1, 0]),  # the label-0 box is not a person
             gt([[100, 100, 130, 180], [300, 100, 320, 140], [400, 50, 440, 150]], [0, 0, 2],
                ignore=[[500, 300, 560, 420]]), SIZE, "day")
    m.update(pred([[52, 52, 82, 132], [600, 400, 630, 480], [3, 200, 41, 300]], [0.95, 0.5, 0.4]),
             gt([[50, 50, 80, 130], [2, 200, 40, 300]], [1, 0]), SIZE, "night")
    m.update(pred([[10, 10, 40, 90]], [0.99]), gt([[200, 100, 240, 200]], [0]), SIZE, "night")
    return m


def test_reference_fppi_points():
    assert len(REFERENCE_FPPI) == 9
    np.testing.assert_allclose(REFERENCE_FPPI, [10 ** (-2 + 0.25 * i) for i in range(9)])


def test_miss_rate_matches_hand_computation():
    result = hand_case().compute()
    # reasonable: G1, G4, G6 count (G2 too small, G3 heavy, G5 at the border: ignore regions).
    # Non-ignored detections by score: C .99 FP, B .95 TP(G4), A .9 FP, A .6 TP(G1), B .5 FP;
    # A .8 falls on I1, A .7 on the ignored G2, B .4 on the ignored G5.
    # FPPI 1/3 1/3 2/3 2/3 1, recall 0 1/3 1/3 2/3 2/3: the 7 references below 1/3 see recall 0,
    # 10^-0.25 sees 1/3 and 10^0 sees 2/3.
    reasonable = result["subsets"]["reasonable"]
    assert reasonable["gt"] == 3 and reasonable["images"] == 3
    np.testing.assert_allclose(reasonable["miss_rate"], [1] * 7 + [2 / 3, 1 / 3])
    assert reasonable["mr"] == pytest.approx(math.exp((math.log(2 / 3) + math.log(1 / 3)) / 9))
    assert reasonable["mr"] == pytest.approx(0.84610, abs=1e-5)
    assert reasonable["recall"] == pytest.approx(2 / 3)
    # all (height >= 20, any occlusion): G1, G2, G3, G4, G6 count; A .7 is now a hit on G2.
    everything = result["subsets"]["all"]
    assert everything["gt"] == 5
    np.testing.assert_allclose(everything["miss_rate"], [1] * 7 + [0.8, 0.4])
    assert everything["mr"] == pytest.approx(math.exp((math.log(0.8) + math.log(0.4)) / 9))
    # Day alone: FP .9 then TP .6, both at FPPI 1: recall 0 below 1 and 1 at 1, clamped to 1e-10.
    day = result["conditions"]["day"]["reasonable"]
    assert day["images"] == 1 and day["gt"] == 1
    assert day["mr"] == pytest.approx(1e-10 ** (1 / 9))
    assert set(result["conditions"]) == {"day", "night"}


def test_matching_rules():
    dt = np.asarray([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], np.float64)
    gt_boxes = np.asarray([[0, 0, 10, 10], [40, 40, 80, 80], [21, 21, 31, 31], [20, 20, 30, 30]], np.float64)
    ignore = np.asarray([False, True, False, True])
    flags = match_detections(dt, gt_boxes, ignore)
    # A gt box is matched once (the second identical detection is a false positive); a detection
    # inside an ignore region (overlap over its own area) is ignored; a regular box wins over an
    # ignore region even when the ignore region overlaps more.
    assert flags.tolist() == [1, 0, -1, 1]


def test_no_detections_and_no_ground_truth():
    nothing = log_average_miss_rate(np.zeros(0, np.int64), np.zeros(0), num_gt=4, num_images=2)
    assert nothing["mr"] == pytest.approx(1.0) and nothing["recall"] == 0.0
    assert math.isnan(log_average_miss_rate(np.ones(2, np.int64), np.ones(2), num_gt=0, num_images=2)["mr"])


def test_per_class_ap_and_ignore_regions():
    names = ["background", "person", "car"]
    d = DetectionMetrics(names)
    d.update(pred([[0, 0, 10, 20], [50, 50, 60, 60], [30, 30, 40, 40], [100, 100, 120, 110]],
                  [0.9, 0.95, 0.4, 0.99], [1, 2, 2, 1]),
             {"boxes": np.asarray([[0, 0, 10, 20], [30, 30, 40, 40]]), "labels": np.asarray([1, 2]),
              "ignore_boxes": np.asarray([[95, 95, 125, 115]])})
    overall = d.compute()["overall"]
    # person: its one box is found and the .99 detection lies in an ignore region -> AP 1.
    # car: a false positive (.95) ranks above the hit (.4) -> precision 1/2 at every recall -> AP 0.5.
    person = overall["per_class"]["person"]
    assert person == {"ap_50": pytest.approx(1.0), "ap_50_95": pytest.approx(1.0), "gt_boxes": 1}
    assert overall["per_class"]["car"]["ap_50"] == pytest.approx(0.5)
    assert "background" not in overall["per_class"]
    assert overall["map_50"] == pytest.approx(0.75)


def test_report_holds_miss_rate_and_per_class_ap(tmp_path):
    d = DetectionMetrics(["background", "person"])
    d.update(pred([[0, 0, 10, 20]], [0.9]), {"boxes": np.asarray([[0, 0, 10, 20]]), "labels": np.asarray([1])})
    metrics = write_report(str(tmp_path), None, d, split="test", dataset="kaist", miss_rate=hand_case())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["segmentation"] is None
    assert saved["miss_rate"]["subsets"]["reasonable"]["mr"] == pytest.approx(0.84610, abs=1e-5)
    assert saved["detection"]["overall"]["per_class"]["person"]["ap_50"] == pytest.approx(1.0)
    assert metrics["miss_rate"]["subsets"]["all"]["gt"] == 5
    report = (tmp_path / "report.md").read_text()
    assert "| all | reasonable | 84.61 |" in report and "| night | all |" in report
    assert "| person | 100.00 | 100.00 | 1 |" in report
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_compare_box_only_reports(tmp_path):
    from training.evaluate import comparison_table

    for name, score in (("fused", 0.9), ("rgb", 0.3)):
        d = DetectionMetrics(["background", "person"])
        d.update(pred([[0, 0, 10, 20], [40, 40, 50, 60]], [score, 0.5]),
                 {"boxes": np.asarray([[0, 0, 10, 20]]), "labels": np.asarray([1])}, condition="night")
        write_report(str(tmp_path / name), None, d, split="test", dataset="kaist", miss_rate=hand_case())
    table = comparison_table([("fused", str(tmp_path / "fused")), ("rgb", str(tmp_path / "rgb"))])
    assert "box mAP@0.5 / mAP@0.5:0.95 (%), kaist split `test`" in table
    # fused: the hit outranks the false positive (AP 1); rgb: the false positive comes first (AP 0.5).
    assert "| fused | 100.0 / 100.0 | 100.0 / 100.0 |" in table
    assert "| rgb | 50.0 / 50.0 | 50.0 / 50.0 |" in table
    assert "| model | reasonable | all |" in table and "| fused | 84.6 | 88.1 |" in table
