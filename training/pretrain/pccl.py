"""Patch-wise cross-modal contrastive learning (``pccl``), after UNIV.

The frozen trunk without adapter is the RGB teacher. Its attention in the last global-attention
block tells, for every query patch, which patches belong to the same thing; those patches are
the positives of a multi-label target. A student's patch embeddings are trained against the
teacher's RGB patch embeddings with temperature-scaled cosine logits and binary cross-entropy to
that target, in both directions (student -> teacher and teacher -> student).

Shapes: ``B`` batch, ``N`` patches of the attention grid, ``C`` channels, ``heads`` heads.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEACHERS = ("trunk", "rgb")
#: How the RGB adapter is held to the teacher (UNIV's ``rgb_distillation_loss`` choices): ``gram`` the
#: patch-to-patch cosine matrices of student and teacher made equal (UNIV's ``RGB_patch_simi_loss``, the
#: default here), ``feature`` each patch embedding kept on the teacher's direction, ``attention`` the same
#: attention-guided loss as the thermal student (UNIV's configured default, written for one network
#: shared by both cameras). With an adapter per camera and a teacher equal to the starting RGB path,
#: ``gram`` and ``feature`` keep that path where it is; ``attention`` moves it (docs/pretraining.md).
RGB_LOSSES = ("attention", "gram", "feature")


@dataclass
class PCCLConfig:
    """Hyper-parameters of the patch-wise cross-modal loss.

    ``threshold``: cumulative attention mass kept per query patch (the patch that crosses it is
    kept too). ``temperature``: divides the cosine logits. ``rgb_weight``: weight of the dual
    knowledge preservation term (RGB adapter against the teacher on the same RGB image).
    ``rgb_loss``: the form of that term, one of :data:`RGB_LOSSES`.
    ``teacher``: ``trunk`` = the frozen trunk without adapter (for a pretrained SAM2 trunk);
    ``rgb`` = a frozen copy of the trunk with the RGB adapter as it was when pretraining started
    (for a model whose RGB adapter was already trained, e.g. ``init.weights``).
    """

    threshold: float = 0.6
    temperature: float = 0.04
    rgb_weight: float = 1.0
    rgb_loss: str = "gram"
    teacher: str = "trunk"

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"pccl teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.rgb_loss not in RGB_LOSSES:
            raise ValueError(f"pccl rgb_loss must be one of {RGB_LOSSES}, got {self.rgb_loss!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"pccl threshold must be in (0, 1], got {self.threshold}")
        if self.temperature <= 0.0:
            raise ValueError(f"pccl temperature must be > 0, got {self.temperature}")
        if self.rgb_weight < 0.0:
            raise ValueError(f"pccl rgb_weight must be >= 0, got {self.rgb_weight}")


def attention_threshold_targets(attention: Tensor, threshold: float = 0.6) -> Tensor:
    """Multi-label positives from the teacher's attention.

    Args:
        attention: ``B, heads, N, N`` or ``B, N, N`` attention (rows are softmax
            distributions over keys); heads are averaged.
        threshold: cumulative mass to reach per query row.

    Returns:
        ``B, N, N`` float tensor of 0/1: for query ``i`` the keys with the largest attention,
        in decreasing order, until their cumulative attention reaches ``threshold``; the key
        whose attention makes the sum reach or cross the threshold is included, so every row
        has at least one positive.
    """
    if attention.dim() == 4:
        attention = attention.mean(dim=1)
    if attention.dim() != 3 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention must be B,heads,N,N or B,N,N, got shape {tuple(attention.shape)}")
    attention = attention.detach().float()
    # Rows renormalised so that a threshold means the same for every query even when the
    # attention was cropped or averaged with rounding.
    attention = attention / attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    sorted_attn, order = attention.sort(dim=-1, descending=True)
    mass_before = sorted_attn.cumsum(dim=-1) - sorted_attn
    keep_sorted = (mass_before < threshold).float()
    targets = torch.zeros_like(attention)
    targets.scatter_(-1, order, keep_sorted)
    return targets


def cosine_logits(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """``B, N, M`` cosine similarity of every query token to every key token over ``temperature``.

    Args:
        queries: ``B, N, C``.
        keys: ``B, M, C``.
    """
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2) / temperature


def pccl_loss(student: Tensor, teacher: Tensor, targets: Tensor, temperature: float = 0.04) -> Tensor:
    """Symmetrised cosine-over-temperature binary cross-entropy to the attention targets.

    Args:
        student: ``B, N, C`` student patch embeddings (e.g. thermal with the thermal adapter).
        teacher: ``B, N, C`` teacher RGB patch embeddings (no gradient flows into them).
        targets: ``B, N, N`` 0/1 positives from :func:`attention_threshold_targets`, row ``i``
            = positives of patch ``i``.

    Returns:
        Scalar: ``0.5 * (BCE(s_i . t_j / T, y_ij) + BCE(t_i . s_j / T, y_ij))``, each the mean
        over ``B * N * N`` entries.
    """
    if student.shape != teacher.shape or student.dim() != 3:
        raise ValueError(
            f"student and teacher embeddings must both be B,N,C; got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    batch, num_patches, _ = student.shape
    if targets.shape != (batch, num_patches, num_patches):
        raise ValueError(f"targets must be {(batch, num_patches, num_patches)}, got {tuple(targets.shape)}")
    teacher = teacher.detach().float()
    student = student.float()
    student_to_teacher = cosine_logits(student, teacher, temperature)
    # The reverse direction queries with teacher patches against student keys: the same
    # similarities, transposed, with the same row-wise positives.
    teacher_to_student = student_to_teacher.transpose(1, 2)
    targets = targets.to(student_to_teacher.dtype)
    forward = F.binary_cross_entropy_with_logits(student_to_teacher, targets)
    backward = F.binary_cross_entropy_with_logits(teacher_to_student, targets)
    return 0.5 * (forward + backward)


def gram_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared difference of the ``B, N, N`` patch-to-patch cosine matrices of ``student`` and
    ``teacher`` (both ``B, N, C``): the patches keep their relations, not their coordinates."""
    student = F.normalize(student.float(), dim=-1)
    teacher = F.normalize(teacher.detach().float(), dim=-1)
    return F.mse_loss(student @ student.transpose(1, 2), teacher @ teacher.transpose(1, 2))


def feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean of ``1 - cosine`` between each ``B, N, C`` student patch embedding and the teacher's."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)).mean()


def tokens_from_map(feature_map: Tensor) -> Tensor:
    """``B, C, H, W`` feature map -> ``B, H*W, C`` tokens (row-major, the attention's order)."""
    return feature_map.flatten(2).transpose(1, 2)


def attention_level(features: list[Tensor], attention: Tensor) -> int:
    """Index of the trunk feature map whose grid is the attention's token grid."""
    tokens = attention.shape[-1]
    for index, feature in enumerate(features):
        if feature.shape[-2] * feature.shape[-1] == tokens:
            return index
    sizes = [tuple(f.shape[-2:]) for f in features]
    raise ValueError(f"no trunk feature map has {tokens} tokens (the attention's); maps are {sizes}")


class PCCLObjective(nn.Module):
    """``pccl`` on an ``RGBTNet``: thermal adapter (student) and RGB adapter (preservation)
    against the frozen trunk without adapter (teacher), on the attention block's feature map.

    Trains the LoRA tensors of both adapters; has no parameters of its own.
    """

    method = "pccl"
    export_parts = ("lora",)

    def __init__(self, cfg: PCCLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # A plain list keeps the frozen copy out of this module's parameters and state dict.
        self._teacher: list[nn.Module] = []

    def prepare(self, model: nn.Module) -> None:
        """Freeze the teacher: for ``teacher="rgb"`` a copy of the encoder as it is now."""
        if self.cfg.teacher == "rgb":
            teacher = copy.deepcopy(model.encoder).eval()
            for param in teacher.parameters():
                param.requires_grad_(False)
            self._teacher = [teacher]

    def teacher_forward(self, model: nn.Module, rgb: Tensor) -> tuple[list[Tensor], Tensor]:
        """Teacher features ``[s4, s8, s16, s32]`` and attention ``B,heads,N,N`` of ``rgb``."""
        if self.cfg.teacher == "rgb":
            if not self._teacher:
                raise RuntimeError("PCCLObjective.prepare(model) must run before training with teacher='rgb'")
            return self._teacher[0](rgb, "rgb", return_attention=True)
        return model.encode_modality(rgb, None, return_attention=True)

    def trainable(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if ".lora_" in n]

    def forward(self, model: nn.Module, rgb: Tensor, thermal: Tensor, progress: float = 0.0,
                step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """``rgb`` ``B,3,H,W`` and ``thermal`` ``B,1,H,W`` in [0, 1] -> (loss, logged parts)."""
        with torch.no_grad():
            teacher_features, attention = self.teacher_forward(model, rgb)
            level = attention_level(teacher_features, attention)
            teacher = tokens_from_map(teacher_features[level])
            targets = attention_threshold_targets(attention, self.cfg.threshold)
        student = tokens_from_map(model.encode_modality(thermal, "thermal")[level])
        thermal_loss = pccl_loss(student, teacher, targets, self.cfg.temperature)
        loss = thermal_loss
        parts = {"pccl_thermal": float(thermal_loss.detach()),
                 "positives_per_patch": float(targets.sum(dim=-1).mean())}
        if self.cfg.rgb_weight > 0:
            rgb_student = tokens_from_map(model.encode_modality(rgb, "rgb")[level])
            if self.cfg.rgb_loss == "gram":
                rgb_loss = gram_loss(rgb_student, teacher)
            elif self.cfg.rgb_loss == "feature":
                rgb_loss = feature_loss(rgb_student, teacher)
            else:
                rgb_loss = pccl_loss(rgb_student, teacher, targets, self.cfg.temperature)
            loss = loss + self.cfg.rgb_weight * rgb_loss
            parts["pccl_rgb"] = float(rgb_loss.detach())
        parts["total"] = float(loss.detach())
        return loss, parts
