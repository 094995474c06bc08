"""Detection defaults: a confident score threshold, class-wise NMS and a per-class cap."""
from __future__ import annotations

import inspect

import torch

from rgbt_perception.backends.base import DecodeSettings
from rgbt_perception.core.defaults import MAX_PER_CLASS as DEFAULT_MAX_PER_CLASS
from rgbt_perception.core.defaults import PUBLISH_SCORE_THRESHOLD as DEFAULT_SCORE_THRESHOLD
from rgbt_perception.inference import InferenceEngine
from rgbt_perception.model.heads import BoxHead
from rgbt_perception.node.parameters import PARAMETER_SPECS

SIZE = 128  # input pixels; the stride-8 level is 16x16


def _outputs(hits: list[tuple[int, int, int, float]], side: float) -> dict[str, list[torch.Tensor]]:
    """Raw box outputs for a 3-class head: ``hits`` = (class, row, col, probability) on the stride-8
    level, each a square of half-side ``side`` around its location; everything else scores ~0."""
    outputs: dict[str, list[torch.Tensor]] = {"cls": [], "reg": [], "ctr": []}
    for stride in BoxHead.strides:
        grid = SIZE // stride
        outputs["cls"].append(torch.full((1, 3, grid, grid), -30.0))
        outputs["reg"].append(torch.full((1, 4, grid, grid), side))
        outputs["ctr"].append(torch.full((1, 1, grid, grid), 30.0))  # centerness ~1: score = sqrt(p)
    for label, row, col, prob in hits:
        outputs["cls"][0][0, label, row, col] = torch.logit(torch.tensor(prob * prob))
    return outputs


def _head() -> BoxHead:
    return BoxHead(8, num_classes=3, dim=8, num_convs=1)


def test_defaults_publish_only_confident_boxes_everywhere():
    assert 0.3 <= DEFAULT_SCORE_THRESHOLD <= 0.6
    assert inspect.signature(BoxHead.decode).parameters["score_threshold"].default == DEFAULT_SCORE_THRESHOLD
    assert DecodeSettings().score_threshold == DEFAULT_SCORE_THRESHOLD
    assert inspect.signature(InferenceEngine.__init__).parameters["decode"].default is None  # -> DecodeSettings()
    assert PARAMETER_SPECS["score_threshold"].default == DEFAULT_SCORE_THRESHOLD

    hits = [(1, 2, 2, 0.9), (1, 8, 8, DEFAULT_SCORE_THRESHOLD - 0.05), (2, 12, 12, 0.2)]
    confident = _head().decode(_outputs(hits, side=4.0))[0]
    assert confident["labels"].tolist() == [1]
    assert torch.allclose(confident["scores"], torch.tensor([0.9]))
    # Scoring (mAP) asks for the whole score range and gets every candidate.
    everything = _head().decode(_outputs(hits, side=4.0), score_threshold=0.0)[0]
    assert everything["labels"][:3].tolist() == [1, 1, 2]


def test_nms_is_class_wise():
    # Same location, two classes: identical boxes, both kept. Neighbours of one class with 64 px
    # boxes 8 px apart (IoU 0.78): only the better one survives.
    hits = [(1, 5, 5, 0.9), (2, 5, 5, 0.8), (1, 5, 6, 0.85)]
    result = _head().decode(_outputs(hits, side=32.0), nms_iou=0.5)[0]
    assert result["labels"].tolist() == [1, 2]
    assert torch.allclose(result["scores"], torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(result["boxes"][0], result["boxes"][1])


def test_per_class_cap_keeps_the_best_of_each_class():
    # 40 separated class-1 boxes and 3 class-2 boxes, all confident.
    hits = [(1, r, c, 0.95 - 0.005 * (r * 8 + c)) for r in range(0, 16, 2) for c in range(0, 16, 2)][:40]
    hits += [(2, r, 1, 0.5) for r in (1, 7, 13)]
    result = _head().decode(_outputs(hits, side=3.0))[0]
    labels = result["labels"].tolist()
    assert labels.count(1) == DEFAULT_MAX_PER_CLASS and labels.count(2) == 3
    kept_class_1 = result["scores"][result["labels"] == 1]
    best_class_1 = torch.tensor(sorted((h[3] for h in hits if h[0] == 1), reverse=True)[:DEFAULT_MAX_PER_CLASS])
    torch.testing.assert_close(kept_class_1, best_class_1)
    assert (result["scores"][:-1] >= result["scores"][1:]).all()
    capped = _head().decode(_outputs(hits, side=3.0), max_per_class=2, max_detections=3)[0]
    assert capped["labels"].tolist() == [1, 1, 2]
