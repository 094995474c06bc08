"""Auxiliary FPN semantic head: a light per-pixel classifier on the fused pyramid (training only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..neck import norm_groups


class AuxiliaryHead(nn.Module):
    """Sum of per-level 3x3 conv features upsampled to stride 4, then a 1x1 classifier.

    All layers are built here, once; the forward pass creates no module.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int | None = None, num_levels: int = 3) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim, hidden_dim, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(norm_groups(hidden_dim), hidden_dim),
                nn.ReLU(inplace=True),
            )
            for _ in range(num_levels)
        )
        self.classifier = nn.Conv2d(hidden_dim, num_classes, kernel_size=1)

    def forward(self, fused: list[Tensor]) -> Tensor:
        """``fused = [s4, s8, s16]`` (``B,C,H/s,W/s``) -> logits ``B,K,H/4,W/4``."""
        size = fused[0].shape[-2:]
        total = self.levels[0](fused[0])
        for level, feature in zip(self.levels[1:], fused[1:]):
            total = total + F.interpolate(level(feature), size=size, mode="bilinear", align_corners=False)
        return self.classifier(total)
