"""Per-modality neck over the Hiera stage maps: 1x1 projections only, as in SAM2's FPN neck.

Outputs strides 4, 8 and 16. The two high-resolution levels are projected straight to narrow
widths (SAM2's mask decoder projects them to 32 and 64 channels with ``conv_s0``/``conv_s1``), so
nothing wide runs at strides 4 and 8; the stride-16 level carries the wide map the decoder's
transformer and the box head read, with the stride-32 stage added top-down (SAM2's
``fpn_top_down_levels``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LeanNeck(nn.Module):
    """1x1 convs: ``s4 -> highres_dims[0]``, ``s8 -> highres_dims[1]``, ``s16 + up(s32) -> dim``.

    ``normalize`` (model design 3): a GroupNorm on each output, so both cameras' maps reach the
    fusion and the shared heads at the same scale. Design 3's fusion hands a single camera's map to
    the heads unchanged; without the norm the heads would see two differently scaled inputs.
    """

    def __init__(
        self, in_channels: list[int], dim: int, highres_dims: tuple[int, int], normalize: bool = False
    ) -> None:
        super().__init__()
        widths = (highres_dims[0], highres_dims[1], dim, dim)
        self.lateral = nn.ModuleList(nn.Conv2d(c, w, kernel_size=1) for c, w in zip(in_channels, widths))
        self.out_dims = list(widths[:3])
        self.norms = nn.ModuleList(nn.GroupNorm(norm_groups(w), w) for w in self.out_dims) if normalize else None

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[s4, s8, s16, s32]`` stage maps ``B, C_i, H/s, W/s`` -> ``[s4, s8, s16]``, ``B, D_l, H/s, W/s``

        with ``D = (highres_dims[0], highres_dims[1], dim)``.
        """
        top = self.lateral[3](features[3])
        s16 = self.lateral[2](features[2]) + F.interpolate(top, size=features[2].shape[-2:], mode="nearest")
        levels = [self.lateral[0](features[0]), self.lateral[1](features[1]), s16]
        if self.norms is None:
            return levels
        return [norm(level) for norm, level in zip(self.norms, levels)]


def norm_groups(channels: int) -> int:
    """GroupNorm group count: 32 where it divides, else the largest divisor up to 32."""
    for groups in range(min(32, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1
