"""Input preprocessing shared by the inference engine and training.

Images become float tensors in ``[0, 1]`` at the model input size; ImageNet normalisation and
thermal channel replication happen inside the network (registered buffers).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from rgbt_perception.core.registration import check_size, check_thermal

THERMAL_SCALING_MODES = ("percentile", "fixed")


@dataclass(frozen=True)
class ThermalScaling:
    """How raw thermal counts map to ``[0, 1]``.

    ``percentile``: the frame's own ``low``/``high`` percentiles (robust automatic gain).
    ``fixed``: counts ``low..high`` map to ``0..1`` (a calibrated radiometric range).
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0

    def __post_init__(self) -> None:
        if self.mode not in THERMAL_SCALING_MODES:
            raise ValueError(f"thermal scaling mode must be one of {THERMAL_SCALING_MODES}, got {self.mode!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thermal scaling {name} must be a finite number, got {value!r}")
        if not self.low < self.high:
            raise ValueError(f"thermal scaling needs low < high, got low={self.low} high={self.high}")
        if self.mode == "percentile" and not (0.0 <= self.low and self.high <= 100.0):
            raise ValueError(f"thermal scaling percentiles must lie in 0..100, got {self.low}..{self.high}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ThermalScaling":
        if not isinstance(data, Mapping):
            raise ValueError(f"thermal scaling must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"mode", "low", "high"}
        if unknown:
            raise ValueError(f"thermal scaling has unknown keys {sorted(unknown)}")
        return cls(**data)


def scale_thermal(thermal: np.ndarray, scaling: ThermalScaling) -> np.ndarray:
    """Map raw thermal counts (HxW uint8/uint16/float32) to float32 ``[0, 1]`` (HxW).

    A flat frame (percentile range of zero width) maps to 0 everywhere. In percentile mode,
    zero counts are left out of the percentiles: they are the border that registration leaves
    where the thermal camera saw nothing, and counting them would squeeze the contrast of the
    pixels it did see.
    """
    thermal = check_thermal(thermal)
    if scaling.mode == "percentile":
        seen = thermal[thermal > 0]
        low, high = np.percentile(seen if seen.size else thermal, (scaling.low, scaling.high))
    else:
        low, high = scaling.low, scaling.high
    span = float(high) - float(low)
    out = thermal.astype(np.float32)
    if span <= 0.0:
        return np.zeros_like(out)
    out -= np.float32(low)
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def check_rgb(rgb: np.ndarray, what: str = "rgb") -> np.ndarray:
    """Validate an RGB frame: HxWx3 uint8, non-empty."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what} must be HxWx3, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {rgb.dtype}")
    if rgb.size == 0:
        raise ValueError(f"{what} has zero size {rgb.shape}")
    return rgb


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def rgb_to_tensor(rgb: np.ndarray, input_size: Sequence[int]) -> torch.Tensor:
    """HxWx3 uint8 -> ``1, 3, H, W`` float32 in ``[0, 1]`` at ``input_size``."""
    height, width = check_size(input_size, "input_size")
    resized = _resize(check_rgb(rgb), height, width)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float().div_(255.0)
    return tensor.unsqueeze(0)


def thermal_to_tensor(thermal: np.ndarray, input_size: Sequence[int], scaling: ThermalScaling) -> torch.Tensor:
    """HxW raw counts -> ``1, 1, H, W`` float32 in ``[0, 1]`` at ``input_size``.

    Resizing comes first so percentiles are taken on the pixels the network sees.
    """
    height, width = check_size(input_size, "input_size")
    resized = _resize(check_thermal(thermal), height, width)
    scaled = scale_thermal(resized, scaling)
    return torch.from_numpy(scaled)[None, None]


def to_model_inputs(
    rgb: np.ndarray | None,
    thermal: np.ndarray | None,
    input_size: Sequence[int],
    scaling: ThermalScaling = ThermalScaling(),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Turn one pair into network inputs.

    Args:
        rgb: HxWx3 uint8 or ``None`` (camera missing).
        thermal: HxW (or HxWx1) uint8/uint16/float32 counts, already on the RGB grid, or ``None``.
        input_size: model input ``(H, W)``.
        scaling: thermal count scaling.

    Returns:
        ``(rgb 1,3,H,W | None, thermal 1,1,H,W | None)``, float32 in ``[0, 1]``.
    """
    if rgb is None and thermal is None:
        raise ValueError("both rgb and thermal are missing; at least one modality is required")
    rgb_tensor = None if rgb is None else rgb_to_tensor(rgb, input_size)
    thermal_tensor = None if thermal is None else thermal_to_tensor(thermal, input_size, scaling)
    return rgb_tensor, thermal_tensor
