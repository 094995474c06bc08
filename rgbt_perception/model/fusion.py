"""Cross-modal fusion of one pyramid level.

The network holds one fusion per task (masks: strides 4, 8, 16; boxes: strides 8, 16), so each
head gets the mix of the two cameras that suits it (the gates of the two tasks differ).

- :class:`CrossModalFusion` (model design 2): CMX-style feature rectification, a per-pixel gate
  and a projection after the mix.
- :class:`GatedResidualFusion` (model design 3): a per-pixel, scene-conditioned gate over the two
  unchanged camera maps plus a zero-initialised cross-camera correction that only exists when both
  cameras are present. With one camera the output *is* that camera's map, so the heads trained on
  each camera alone read exactly what the fused path gives them, and the fusion can start from (and
  keep) the better camera's features wherever the other one adds nothing.
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
        self.project = projection(dim, kernel_size)

    def forward(self, rgb: Tensor, thermal: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse ``rgb`` and ``thermal`` (``B,C,H,W``); ``present`` is ``B,2`` bool (rgb, thermal).

        Returns the fused map ``B,C,H,W`` and the gate weights ``B,2,H,W``.
        """
        rgb, thermal, keep = zero_absent(rgb, thermal, present)

        ch_rgb, ch_th = self.channel(rgb, thermal)
        sp_rgb, sp_th = self.spatial(rgb, thermal)
        rgb_rect = rgb + self.channel_scale[0] * ch_rgb * thermal + self.spatial_scale[0] * sp_rgb * thermal
        th_rect = thermal + self.channel_scale[1] * ch_th * rgb + self.spatial_scale[1] * sp_th * rgb
        # A stream that is absent stays absent: rectification must not fill it from the other one.
        rgb_rect = rgb_rect * keep[:, 0]
        th_rect = th_rect * keep[:, 1]

        logits = self.gate(torch.cat([rgb_rect, th_rect], dim=1))
        gate = masked_gate(logits, present)
        fused = gate[:, :1] * rgb_rect + gate[:, 1:] * th_rect
        return self.project(fused), gate


def projection(dim: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias), GroupNorm, GELU at ``dim`` channels: what follows the mix of two cameras."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, bias=False), nn.GroupNorm(norm_groups(dim), dim),
        nn.GELU(),
    )


def zero_absent(rgb: Tensor, thermal: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``rgb``, ``thermal`` (``B,C,H,W``) with absent samples zeroed, and the ``B,2,1,1,1`` keep factors.

    Zeroing first means whatever tensor stood in for an absent camera cannot reach the output.
    ``ValueError`` unless ``present`` is a ``B,2`` bool tensor.
    """
    if present.dtype != torch.bool or present.shape != (rgb.shape[0], 2):
        raise ValueError(
            f"present must be a bool tensor of shape ({rgb.shape[0]}, 2), got {present.dtype} {tuple(present.shape)}"
        )
    keep = present[:, :, None, None, None].to(rgb.dtype)
    return rgb * keep[:, 0], thermal * keep[:, 1], keep


def masked_gate(logits: Tensor, present: Tensor) -> Tensor:
    """Per-pixel softmax ``B,2,H,W`` over the cameras; an absent camera's logit is ``-inf``, so the
    present one gets weight exactly 1."""
    return logits.masked_fill(~present[:, :, None, None], float("-inf")).softmax(dim=1)


class SceneBias(nn.Module):
    """Per-camera gate bias ``B,2,1,1`` from both maps' pooled statistics.

    Night, fog and glare change a camera's whole map (its mean and peak responses), so the pooled
    statistics tell the gate how far to trust each camera in this scene before any pixel is looked
    at (SHIFNet's image-level modality weighting). Zero-initialised: no bias until it is learnt.
    """

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(dim * 4 // reduction, 8)
        self.mlp = nn.Sequential(nn.Linear(dim * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, both: Tensor) -> Tensor:
        """``both``: ``B,2C,H,W`` (the two maps concatenated) -> ``B,2,1,1``."""
        stats = torch.cat([both.mean(dim=(2, 3)), both.amax(dim=(2, 3))], dim=1)
        return self.mlp(stats)[..., None, None]


class GatedResidualFusion(nn.Module):
    """Model design 3: ``out = g_rgb * rgb + g_th * thermal + both * s * correct([rgb, thermal])``.

    - ``g``: per-pixel softmax gate from both maps (``kernel_size`` context) plus a per-scene bias
      (:class:`SceneBias`); an absent camera gets weight 0, the present one exactly 1.
    - ``correct``: what the other camera adds beyond the gated mix (CMX's cross-modal
      rectification as a residual), scaled per channel by ``s``, which starts at 0 (ReZero), and
      multiplied by ``both`` (1 only where both cameras are present).

    Without ``project`` nothing follows the mix, so with one camera the output equals that camera's
    input bit for bit; with it, the fused map and each camera's map alone pass the same conv,
    GroupNorm and GELU (design 2's projection) before the heads. The gate's last conv starts at
    zero (an even mix), the correction at zero strength.
    """

    def __init__(self, dim: int, reduction: int = 4, kernel_size: int | None = None, per_channel: bool = False,
                 project: bool = False) -> None:
        super().__init__()
        # As in design 2: 3x3 context on the narrow high-resolution maps, 1x1 at 128-256 channels.
        kernel_size = kernel_size or (3 if dim <= 64 else 1)
        pad = kernel_size // 2
        hidden = max(dim // reduction, 8)
        # per_channel: one gate per channel and pixel, so thin-structure channels can keep one camera
        # while warm-body channels take the other (a per-pixel gate moves all channels together).
        self.per_channel = per_channel
        self.gate = nn.Sequential(
            nn.Conv2d(dim * 2, hidden, kernel_size, padding=pad), nn.GELU(),
            nn.Conv2d(hidden, 2 * dim if per_channel else 2, kernel_size=1),
        )
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        self.scene = SceneBias(dim, reduction)
        self.correct = nn.Sequential(
            nn.Conv2d(dim * 2, dim, kernel_size, padding=pad, bias=False), nn.GroupNorm(norm_groups(dim), dim),
            nn.GELU(), nn.Conv2d(dim, dim, kernel_size=1),
        )
        self.correct_scale = nn.Parameter(torch.zeros(1, dim, 1, 1))
        # project: design 2's conv, GroupNorm and GELU after the mix, for one camera too.
        self.project = projection(dim, kernel_size) if project else None

    def forward(self, rgb: Tensor, thermal: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Fuse ``rgb`` and ``thermal`` (``B,C,H,W``); ``present`` is ``B,2`` bool (rgb, thermal).

        Returns the fused map ``B,C,H,W`` and the gate weights ``B,2,H,W``.
        """
        rgb, thermal, keep = zero_absent(rgb, thermal, present)
        both_maps = torch.cat([rgb, thermal], dim=1)
        logits = self.gate(both_maps)
        if self.per_channel:
            batch, _, height, width = logits.shape
            logits = logits.view(batch, 2, -1, height, width) + self.scene(both_maps)[:, :, None]
            weights = logits.masked_fill(~present[:, :, None, None, None], float("-inf")).softmax(dim=1)
            fused = weights[:, 0] * rgb + weights[:, 1] * thermal
            gate = weights.mean(dim=2)
        else:
            gate = masked_gate(logits + self.scene(both_maps), present)
            fused = gate[:, :1] * rgb + gate[:, 1:] * thermal
        both = keep[:, 0] * keep[:, 1]
        fused = fused + both * self.correct_scale * self.correct(both_maps)
        return (fused if self.project is None else self.project(fused)), gate
