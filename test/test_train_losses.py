"""OHEM cross-entropy, the soft Jaccard loss and the language distillation loss on hand-checkable cases."""
from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    LossWeights,
    RGBTCriterion,
    class_prototypes,
    language_distillation_loss,
    ohem_cross_entropy,
    similarity_distribution,
    soft_jaccard_loss,
)


def _logits_for_probs(p_true: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits, one pixel per entry, whose true-class (class 0) probability is p_true."""
    p = torch.tensor(p_true, dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log1p(-p)], dim=0)  # 2, N
    return logits.view(1, 2, 1, -1), torch.zeros(1, 1, len(p_true), dtype=torch.long)


def test_ohem_keeps_hard_pixels_below_threshold():
    probs = [0.1, 0.3, 0.5, 0.8, 0.9, 0.95] + [0.99] * 26  # 32 pixels, min_kept = 2
    logits, label = _logits_for_probs(probs)
    loss, kept = ohem_cross_entropy(logits, label, threshold=0.7, return_kept=True)
    assert kept == 3
    expected = -(math.log(0.1) + math.log(0.3) + math.log(0.5)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ohem_min_kept_raises_the_threshold():
    probs = [0.8, 0.85, 0.9, 0.95] + [0.99] * 28  # nothing below 0.7; min_kept = 32/16 = 2
    logits, label = _logits_for_probs(probs)
    loss, kept = ohem_cross_entropy(logits, label, threshold=0.7, return_kept=True)
    assert kept == 2
    assert float(loss) == pytest.approx(-(math.log(0.8) + math.log(0.85)) / 2, rel=1e-5)


def test_ohem_ignores_255_and_upsamples_logits():
    logits = torch.zeros(1, 3, 2, 2)  # uniform: every pixel hard (p = 1/3)
    label = torch.full((1, 4, 4), 255, dtype=torch.long)
    label[0, :2, :2] = 1
    loss, kept = ohem_cross_entropy(logits, label, return_kept=True)
    assert kept == 4
    assert float(loss) == pytest.approx(math.log(3), rel=1e-6)
    with pytest.raises(ValueError, match="class 5"):
        ohem_cross_entropy(logits, torch.full((1, 4, 4), 5, dtype=torch.long))


def test_language_loss_hand_computed_two_classes():
    # Text: two orthogonal embeddings -> cos sim [[1,0],[0,1]] -> rows softmax(1,0).
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Visual prototypes: class 0 = (1,0), class 1 = (1,1)/sqrt2 -> cos = 1/sqrt2.
    features = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # C=2, pixels (1,0) and (1,1)
    label = torch.tensor([[[0, 1]]])
    p_t = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    c = 1 / math.sqrt(2)
    p_v = torch.softmax(torch.tensor([1.0, c]), 0)
    expected = float((p_t * (p_t.log() - p_v.log())).sum())  # both rows are mirror images
    got = language_distillation_loss(features, label, text)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # The direction matters: KL(visual || text) is a different number.
    assert abs(float((p_v * (p_v.log() - p_t.log())).sum()) - expected) > 1e-4


def test_language_loss_zero_when_relations_agree_and_uses_present_classes_only():
    torch.manual_seed(0)
    text = torch.randn(4, 8)
    # Features equal to the text embeddings of classes 0 and 2 (class 1 and 3 absent).
    features = torch.stack([text[0], text[2]], dim=1).view(1, 8, 1, 2)
    label = torch.tensor([[[0, 2]]])
    assert float(language_distillation_loss(features, label, text)) == pytest.approx(0.0, abs=1e-6)
    protos, present = class_prototypes(features, label, 4)
    assert present.tolist() == [True, False, True, False]
    torch.testing.assert_close(protos[2], text[2])
    # A single present class gives no relation to match.
    assert float(language_distillation_loss(features, torch.tensor([[[0, 0]]]), text)) == 0.0
    assert similarity_distribution(text).sum(dim=-1).allclose(torch.ones(4))


def test_criterion_sums_weighted_terms():
    torch.manual_seed(0)
    outputs = {
        "semantic": torch.randn(2, 3, 4, 4, requires_grad=True),
        "aux": torch.randn(2, 3, 4, 4, requires_grad=True),
        "fused": [torch.randn(2, 5, 2, 2, requires_grad=True)],
        "boxes": "raw",
    }
    label = torch.randint(0, 3, (2, 8, 8))
    weights = LossWeights(aux=0.4, box=2.0, lang=0.5, jaccard=1.5)
    criterion = RGBTCriterion(weights, text_embeddings=torch.randn(3, 6))
    box_fn = lambda raw, targets: {"loss_cls": torch.tensor(0.25), "loss_box": torch.tensor(0.5),
                                   "loss": torch.tensor(0.75, requires_grad=True)}
    total, parts = criterion(outputs, label, [{}, {}], box_fn)
    assert parts["jaccard"] == pytest.approx(float(soft_jaccard_loss(outputs["semantic"].detach(), label)))
    expected = parts["ce_main"] + 1.5 * parts["jaccard"] + 0.4 * parts["ce_aux"] + 2.0 * 0.75 + 0.5 * parts["lang"]
    assert parts["total"] == pytest.approx(expected, rel=1e-6)
    assert parts["box"] == pytest.approx(0.75) and parts["box_box"] == pytest.approx(0.5) and "box_loss" not in parts
    total.backward()
    assert outputs["fused"][0].grad is not None and outputs["aux"].grad is not None


def _one_hot_logits(label: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(label, num_classes).permute(0, 3, 1, 2).double() * scale


def test_soft_jaccard_zero_for_a_perfect_prediction_and_one_for_a_wrong_one():
    label = torch.randint(0, 4, (2, 6, 8))
    assert float(soft_jaccard_loss(_one_hot_logits(label, 4), label)) == pytest.approx(0.0, abs=1e-6)
    wrong = (label + 1) % 4
    # No overlap: class c scores eps / (labelled area + predicted area + eps), with eps = 1.
    areas = torch.bincount(label.flatten(), minlength=4).double()
    predicted = torch.bincount(wrong.flatten(), minlength=4).double()
    present = areas > 0
    expected = 1.0 - float((1.0 / (areas + predicted + 1.0))[present].mean())
    assert float(soft_jaccard_loss(_one_hot_logits(wrong, 4), label)) == pytest.approx(expected, rel=1e-6)


def test_soft_jaccard_weighs_every_present_class_equally_and_ignores_255():
    # A 2x2 thin class inside a 6x6 image of class 0; uniform probabilities over 3 classes.
    label = torch.zeros(1, 6, 6, dtype=torch.long)
    label[0, :2, :2] = 1
    label[0, 5, :] = 255
    logits = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    valid = 30.0
    # Class 0: 26 pixels, class 1: 4 pixels; absent class 2 is not averaged. p = 1/3 everywhere valid.
    iou0 = (26 / 3 + 1) / (valid / 3 + 26 - 26 / 3 + 1)
    iou1 = (4 / 3 + 1) / (valid / 3 + 4 - 4 / 3 + 1)
    expected = 1.0 - (iou0 + iou1) / 2.0
    assert float(soft_jaccard_loss(logits, label)) == pytest.approx(expected, rel=1e-6)
    # The thin class gets as much weight as the large one: the gradient on its logits is not
    # scaled down by its area as in a pixel-mean cross-entropy.
    logits.requires_grad_(True)
    soft_jaccard_loss(logits, label).backward()
    thin = logits.grad[0, 1, :2, :2].abs().mean()
    ce_logits = logits.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(ce_logits, label, ignore_index=255).backward()
    ce_thin = ce_logits.grad[0, 1, :2, :2].abs().mean()
    assert thin / logits.grad[0, 0, 2:5].abs().mean() > ce_thin / ce_logits.grad[0, 0, 2:5].abs().mean()


def test_soft_jaccard_all_ignored_is_zero_with_a_gradient_path():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = soft_jaccard_loss(logits, torch.full((1, 8, 8), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None
