"""Cross-modal fusion: CMX-style feature rectification followed by per-pixel modality gating.

The network holds one fusion per task (masks: strides 4, 8, 16; boxes: strides 8, 16), so each
head gets the mix of the two cameras that suits it (the gates of the two tasks differ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .neck import norm_groups


class ChannelRectify(nn.Module):
    """Channel weights for each modality from both modalities' pooled statistics.

    ``B,C,H,W`` x2 -> two ``B,C,1,1`` weights in (0, 1): how much of the other modality each
    channel of a stream takes in.
    """

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(dim * 4 // reduction, 8)
        self.mlp = nn.Sequential(nn.Linear(dim * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim * 2))

    def forward(self, rgb: Tensor, thermal: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat([rgb, thermal], dim=1)
        stats = torch.cat([both.mean(dim=(2, 3)), both.amax(dim=(2, 3))], dim=1)
        weights = torch.sigmoid(self.mlp(stats))[..., None, None]
        return weights.chunk(2, dim=1)


class SpatialRectify(nn.Module):
    """Per-pixel weights ``B,1,H,W`` (one per modality) from both modalities' features."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(dim // reduction, 8)
        self.conv = nn.Sequential(
            nn.Conv2d(dim * 2, hidden, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 2, kernel_size=1)
        )

    def forward(self, rgb: Tensor, thermal: Tensor) -> tuple[Tensor, Tensor]:
        weights = torch.sigmoid(self.conv(torch.cat([rgb, thermal], dim=1)))
        return weights.chunk(2, dim=1)


class CrossModalFusion(nn.Module):
    """Fuse one pyramid level of RGB and thermal features.

    1. Rectification: each stream is corrected with the other stream's features, weighted per
       channel and per pixel (``x_rgb + a * (w_c * x_th) + b * (w_s * x_th)`` and vice versa).
    2. Gating: a per-pixel softmax over the two rectified streams; an absent modality's logit
       is masked to ``-inf``, so all weight goes to the present one.

    Absent modalities are zeroed before anything else, so whatever tensor stood in for them
    cannot reach the output.
    """

    def __init__(self, dim: int, reduction: int = 4, kernel_size: int | None = None) -> None:
        super().__init__()
        # Narrow high-resolution maps get 3x3 context for the gate and projection; wide maps a
        # 1x1 (a 3x3 at 256 channels is where design 1 spent its FLOPs).
        kernel_size = kernel_size or (3 if dim <= 64 else 1)
        pad = kernel_size // 2
        self.channel = ChannelRectify(dim, reduction)
        self.spatial = SpatialRectify(dim, reduction)
        self.channel_scale = nn.Parameter(torch.full((2,), 0.5))
        self.spatial_scale = nn.Parameter(torch.full((2,), 0.5))
        hidden = max(dim // reduction, 8)
        self.gate = nn.Sequential(
            nn.Conv2d(dim * 2, hidden, kernel_size, padding=pad), nn.GELU(), nn.Conv2d(hidden, 2, kernel_size=1)
        )
        self.project = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, padding=pad, bias=False), nn.GroupNorm(norm_groups(dim), dim), nn.GELU()
        )

    def forward(self, rgb: Tensor, thermal: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse ``rgb`` and ``thermal`` (``B,C,H,W``); ``present`` is ``B,2`` bool (rgb, thermal).

        Returns the fused map ``B,C,H,W`` and the gate weights ``B,2,H,W``.
        """
        if present.dtype != torch.bool or present.shape != (rgb.shape[0], 2):
            raise ValueError(
                f"present must be a bool tensor of shape ({rgb.shape[0]}, 2), "
                f"got {present.dtype} {tuple(present.shape)}"
            )
        keep = present[:, :, None, None, None].to(rgb.dtype)
        rgb = rgb * keep[:, 0]
        thermal = thermal * keep[:, 1]

        ch_rgb, ch_th = self.channel(rgb, thermal)
        sp_rgb, sp_th = self.spatial(rgb, thermal)
        rgb_rect = rgb + self.channel_scale[0] * ch_rgb * thermal + self.spatial_scale[0] * sp_rgb * thermal
        th_rect = thermal + self.channel_scale[1] * ch_th * rgb + self.spatial_scale[1] * sp_th * rgb
        # A stream that is absent stays absent: rectification must not fill it from the other one.
        rgb_rect = rgb_rect * keep[:, 0]
        th_rect = th_rect * keep[:, 1]

        logits = self.gate(torch.cat([rgb_rect, th_rect], dim=1))
        logits = logits.masked_fill(~present[:, :, None, None], float("-inf"))
        gate = logits.softmax(dim=1)
        fused = gate[:, :1] * rgb_rect + gate[:, 1:] * th_rect
        return self.project(fused), gate
