"""Feature pyramid over the Hiera stage maps: one per modality, output strides 4, 8 and 16."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPNNeck(nn.Module):
    """Top-down FPN: lateral 1x1 convs on all four stages, outputs at strides 4, 8, 16.

    The stride-32 stage only feeds the top-down path (as in SAM2's neck, which drops its coarsest
    level after fusing it in).
    """

    def __init__(self, in_channels: list[int], dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(norm_groups(dim), dim),
                nn.GELU(),
            )
            for _ in range(3)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[s4, s8, s16, s32]`` stage maps ``B, C_i, H/s, W/s`` -> ``[s4, s8, s16]``, ``B, dim, H/s, W/s``."""
        top = self.lateral[3](features[3])
        outputs: list[Tensor] = []
        for level in (2, 1, 0):
            top = self.lateral[level](features[level]) + F.interpolate(
                top, size=features[level].shape[-2:], mode="nearest"
            )
            outputs.append(self.output[level](top))
        return outputs[::-1]


def norm_groups(channels: int) -> int:
    """GroupNorm group count: 32 where it divides, else the largest divisor up to 32."""
    for groups in range(min(32, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1
