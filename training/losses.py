"""Training losses: OHEM cross-entropy, soft Jaccard, language-aided prototype distillation, and their sum."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbt_perception.core.classes import IGNORE_INDEX


def ohem_keep_mask(true_prob: Tensor, valid: Tensor, threshold: float = 0.7, min_kept: int = 0) -> Tensor:
    """Pixels OHEM trains on: those whose true-class probability is below ``threshold``.

    When fewer than ``min_kept`` valid pixels are that hard, the threshold is raised to the
    ``min_kept``-th smallest probability so that at least ``min_kept`` pixels are kept
    (ties may keep a few more).

    Args:
        true_prob: ``N`` probability of the labelled class per pixel.
        valid: ``N`` bool, pixels not labelled ignore.
    Returns:
        ``N`` bool mask of kept pixels (a subset of ``valid``).
    """
    num_valid = int(valid.sum())
    if num_valid == 0:
        return valid
    hard = true_prob < threshold
    if min_kept > 0:
        kth = torch.kthvalue(true_prob[valid], min(min_kept, num_valid)).values
        hard = hard | (true_prob <= kth)
    return valid & hard


def ohem_cross_entropy(
    logits: Tensor,
    label: Tensor,
    threshold: float = 0.7,
    min_kept_fraction: float = 1.0 / 16.0,
    ignore_index: int = IGNORE_INDEX,
    return_kept: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """Online hard example mining cross-entropy.

    Args:
        logits: ``B, K, h, w``; bilinearly upsampled to the label size when it differs.
        label: ``B, H, W`` int64 class ids, ``ignore_index`` = not scored.
        threshold: pixels whose true-class probability is below it are hard.
        min_kept_fraction: at least ``valid pixels * fraction`` pixels are kept.
    Returns:
        Mean cross-entropy over kept pixels (and the kept count when ``return_kept``).
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits.float()
    label = label.long()
    num_classes = logits.shape[1]
    valid = label != ignore_index
    bad = valid & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise ValueError(f"label holds class {int(label[bad].max())} but the model predicts {num_classes} classes")
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    pixel_loss = F.cross_entropy(logits, safe_label, reduction="none").flatten()
    valid = valid.flatten()
    with torch.no_grad():
        true_prob = torch.exp(-pixel_loss.detach())
        min_kept = int(int(valid.sum()) * min_kept_fraction)
        kept = ohem_keep_mask(true_prob, valid, threshold, min_kept)
    count = int(kept.sum())
    loss = pixel_loss[kept].sum() / max(count, 1)
    return (loss, count) if return_kept else loss


def label_area_fractions(
    label: Tensor, num_classes: int, size: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Per-cell class fractions of a ``B, H, W`` label on an ``h, w`` grid (area pooling).

    Returns:
        ``(fractions B, K, h, w, valid B, 1, h, w)``: the share of each cell covered by each class,
        and by pixels not labelled ``ignore_index``. A structure half a cell wide counts as half a cell.
    """
    label = label.long()
    # Ignored pixels go to an extra last channel, so one scatter gives the classes and the valid mask.
    index = torch.where(label == ignore_index, torch.full_like(label, num_classes), label)
    one_hot = torch.zeros(label.shape[0], num_classes + 1, *label.shape[-2:], device=label.device)
    one_hot.scatter_(1, index[:, None], 1.0)
    if one_hot.shape[-2:] != tuple(size):
        one_hot = F.adaptive_avg_pool2d(one_hot, tuple(size))
    return one_hot[:, :-1], 1.0 - one_hot[:, -1:]


def soft_jaccard_loss(logits: Tensor, label: Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1.0) -> Tensor:
    """1 - soft IoU per class, averaged over the classes present in the batch's labels.

    Pixel-wise cross-entropy weighs a class by its area, so a class a few pixels wide (a kerb
    stone, a cone) barely moves it; this loss weighs every class present equally, as mIoU does.
    With ``p`` the softmax probability and ``y`` the one-hot label over all valid cells of the
    batch, class ``c`` scores ``(sum p y + eps) / (sum p + sum y - sum p y + eps)``.

    It is computed at the logits' resolution: a label finer than the logits is area-pooled to
    per-cell class fractions (a kerb stone half a cell wide counts as half a cell), which keeps
    every thin structure in the sums at a sixteenth of the cost of upsampled logits.

    Args:
        logits: ``B, K, h, w``.
        label: ``B, H, W`` int64 class ids, ``ignore_index`` = not scored.
        eps: smoothing added to both sides, so the score of a nearly empty class stays smooth.
    Returns:
        Scalar loss in ``[0, 1]``; zero (with a gradient path) when no pixel is valid.
    """
    target, valid_fraction = label_area_fractions(label, logits.shape[1], logits.shape[-2:], ignore_index)
    prob = torch.softmax(logits.float(), dim=1) * valid_fraction
    intersection = (prob * target).sum(dim=(0, 2, 3))
    label_area = target.sum(dim=(0, 2, 3))
    union = prob.sum(dim=(0, 2, 3)) + label_area - intersection
    present = label_area > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    iou = (intersection[present] + eps) / (union[present] + eps)
    return 1.0 - iou.mean()


def similarity_distribution(embeddings: Tensor, temperature: float = 1.0) -> Tensor:
    """Row-softmax of the cosine-similarity matrix of ``K, D`` embeddings -> ``K, K``."""
    normed = F.normalize(embeddings.float(), dim=-1)
    return torch.softmax(normed @ normed.t() / temperature, dim=-1)


def class_prototypes(
    features: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Masked average of ``B, C, h, w`` features per class over the whole batch.

    The ``B, H, W`` label is turned into per-class area fractions at feature resolution, so a
    feature cell half covered by a class weighs half.

    Returns:
        ``(prototypes K, C, present K bool)``; rows of absent classes are zero.
    """
    weights, _ = label_area_fractions(label, num_classes, features.shape[-2:], ignore_index)  # B, K, h, w
    mass = weights.sum(dim=(0, 2, 3))
    present = mass > 1e-6
    prototypes = torch.einsum("bkhw,bchw->kc", weights, features.float()) / mass.clamp_min(1e-6)[:, None]
    return prototypes, present


def language_distillation_loss(
    features: Tensor,
    label: Tensor,
    text_embeddings: Tensor,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """KL(P_text || P_visual) between class-relation distributions of text and visual prototypes.

    ``P_text`` is the row-softmaxed ``K', K'`` cosine-similarity matrix of the class text
    embeddings and ``P_visual`` the same for class prototypes of the fused ``B, C, h, w``
    features, both restricted to the ``K'`` classes present in the batch. The loss is
    ``sum_j P_text[i, j] (log P_text[i, j] - log P_visual[i, j])`` averaged over rows ``i``;
    zero when fewer than two classes are present.
    """
    prototypes, present = class_prototypes(features, label, text_embeddings.shape[0], ignore_index)
    if int(present.sum()) < 2:
        return features.sum() * 0.0
    text = text_embeddings.to(features.device)[present]
    log_p_text = torch.log(similarity_distribution(text, temperature))
    visual = F.normalize(prototypes[present], dim=-1)
    log_p_visual = torch.log_softmax(visual @ visual.t() / temperature, dim=-1)
    return (log_p_text.exp() * (log_p_text - log_p_visual)).sum(dim=-1).mean()


@dataclass
class LossWeights:
    # The auxiliary head did not help in the SARTM ablations on the synthetic world (docs/training.md).
    aux: float = 0.0
    box: float = 1.0
    lang: float = 0.1
    # Soft-IoU loss on the main semantic output, added to its OHEM cross-entropy: every class
    # present counts equally, so thin classes are not drowned by road and sky; 0 = cross-entropy only.
    # +3.5 mIoU on the synthetic world at 12 epochs (docs/training.md).
    jaccard: float = 1.0
    # Per-camera supervision: with both modalities, the heads also run on each camera alone (from the
    # same trunk pass) and each of those losses is added with this weight; 0 = fused loss only.
    single: float = 0.0
    lang_temperature: float = 1.0
    ohem_threshold: float = 0.7
    ohem_min_kept_fraction: float = 1.0 / 16.0


def mask_label(label: Tensor, has_mask: Tensor | None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``B, H, W`` labels with every pixel of the samples whose ``has_mask`` (``B`` bool) is False
    set to ``ignore_index``; the label itself when ``has_mask`` is None."""
    if has_mask is None:
        return label
    has_mask = torch.as_tensor(has_mask, dtype=torch.bool, device=label.device).reshape(-1)
    if has_mask.numel() != label.shape[0]:
        raise ValueError(f"has_mask has {has_mask.numel()} entries for a batch of {label.shape[0]}")
    if bool(has_mask.all()):
        return label
    return torch.where(has_mask[:, None, None], label, torch.full_like(label, ignore_index))


class RGBTCriterion(nn.Module):
    """Total = CE_main + jaccard * Jaccard_main + aux * CE_aux + box * box_loss + lang * lang_loss.

    ``forward(outputs, labels, box_targets, box_loss_fn, has_mask)`` returns ``(total, parts)``
    where ``parts`` holds every term as a float for logging (and ``mask_samples``, the number of
    samples with a mask).

    ``has_mask`` (``B`` bool) masks the segmentation terms (both cross-entropies and the
    language loss) per sample: samples without a mask (box-only detection sets) only train the
    box head and what feeds it. When no sample of the batch has a mask, the segmentation terms
    are not computed at all (logged as 0), so the semantic and auxiliary heads get no gradient
    and the optimiser leaves them exactly as they were (AdamW skips parameters without one).
    """

    def __init__(self, weights: LossWeights, text_embeddings: Tensor | None = None) -> None:
        super().__init__()
        self.weights = weights
        if text_embeddings is not None:
            self.register_buffer("text_embeddings", text_embeddings.float(), persistent=False)
        else:
            self.text_embeddings = None

    def forward(
        self,
        outputs: dict,
        label: Tensor,
        box_targets: Sequence[dict] | None = None,
        box_loss_fn: Callable[[object, Sequence[dict]], dict[str, Tensor]] | None = None,
        has_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        w = self.weights
        label = mask_label(label, has_mask)
        mask_samples = label.shape[0] if has_mask is None else int(torch.as_tensor(has_mask).sum())
        total: Tensor | None = None
        parts = {"ce_main": 0.0}
        if mask_samples > 0:
            ce = ohem_cross_entropy(outputs["semantic"], label, w.ohem_threshold, w.ohem_min_kept_fraction)
            total = ce
            parts["ce_main"] = float(ce.detach())
            if w.jaccard > 0:
                jaccard = soft_jaccard_loss(outputs["semantic"], label)
                total = total + w.jaccard * jaccard
                parts["jaccard"] = float(jaccard.detach())
        if w.aux > 0 and outputs.get("aux") is not None:
            parts["ce_aux"] = 0.0
            if mask_samples > 0:
                ce_aux = ohem_cross_entropy(outputs["aux"], label, w.ohem_threshold, w.ohem_min_kept_fraction)
                total = total + w.aux * ce_aux
                parts["ce_aux"] = float(ce_aux.detach())
        if w.box > 0 and box_loss_fn is not None and box_targets is not None and outputs.get("boxes") is not None:
            box_terms = box_loss_fn(outputs["boxes"], box_targets)
            # The box head reports its total under "loss" next to the terms it is made of.
            box = box_terms["loss"] if "loss" in box_terms else sum(box_terms.values())
            total = w.box * box if total is None else total + w.box * box
            parts["box"] = float(box.detach())
            parts.update({f"box_{k.removeprefix('loss_')}": float(v.detach())
                          for k, v in box_terms.items() if k != "loss"})
        if w.lang > 0 and self.text_embeddings is not None and outputs.get("fused") is not None:
            parts["lang"] = 0.0
            if mask_samples > 0:
                lang = language_distillation_loss(outputs["fused"][-1], label, self.text_embeddings, w.lang_temperature)
                total = total + w.lang * lang
                parts["lang"] = float(lang.detach())
        if total is None:
            raise ValueError("no sample of the batch has a mask and no box loss is computed (loss.box is 0 or the "
                             "model has no box head): the batch has nothing to train")
        parts["mask_samples"] = float(mask_samples)
        parts["total"] = float(total.detach())
        return total, parts
