"""Auxiliary semantic head: a light per-pixel classifier on the fused pyramid (training only)."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..neck import norm_groups


class AuxiliaryHead(nn.Module):
    """Sum of per-level 1x1 projections upsampled to stride 4, then a 1x1 classifier.

    It supervises every fused level directly (deep supervision); it runs only in training, so
    it is kept cheap rather than strong. All layers are built here, once.
    """

    def __init__(self, in_dims: Sequence[int], num_classes: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, hidden_dim, kernel_size=1, bias=False),
                nn.GroupNorm(norm_groups(hidden_dim), hidden_dim),
                nn.ReLU(inplace=True),
            )
            for dim in in_dims
        )
        self.classifier = nn.Conv2d(hidden_dim, num_classes, kernel_size=1)

    def forward(self, fused: list[Tensor]) -> Tensor:
        """``fused = [s4, s8, s16]`` (``B,D_l,H/s,W/s``) -> logits ``B,K,H/4,W/4``."""
        size = fused[0].shape[-2:]
        total = self.levels[0](fused[0])
        for level, feature in zip(self.levels[1:], fused[1:]):
            total = total + F.interpolate(level(feature), size=size, mode="bilinear", align_corners=False)
        return self.classifier(total)
