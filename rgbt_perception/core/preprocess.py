"""Input preprocessing shared by the inference engine and training.

Images become float32 arrays (or tensors) in ``[0, 1]`` at the model input size; ImageNet
normalisation and thermal channel replication happen inside the network (registered buffers).

This module loads without torch: the engine's onnxruntime backend preprocesses with
:func:`to_model_arrays` in a process that never imports it. Thermal percentiles of 8/16-bit
frames come from a histogram (:func:`thermal_percentiles`, equal to ``np.percentile``), and
:class:`InputBuffers` lets the engine write each frame into the same arrays.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import cv2
import numpy as np

from rgbt_perception.core.registration import check_size, check_thermal

if TYPE_CHECKING:
    import torch

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


# Histogram bins of the integer thermal types whose percentiles come from counts.
_HISTOGRAM_BINS = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}
# OpenCV counts in float32, exact while no bin can exceed 2**24 pixels.
_EXACT_FLOAT32_COUNT = 2**24
_scratch = threading.local()


def _histogram(values: np.ndarray) -> np.ndarray:
    """Cumulative counts (float64, one per value) of a uint8/uint16 image, in per-thread buffers."""
    bins = _HISTOGRAM_BINS[values.dtype]
    buffers = getattr(_scratch, "histograms", None)
    if buffers is None:
        buffers = _scratch.histograms = {}
    if bins not in buffers:
        buffers[bins] = (np.empty((bins, 1), np.float32), np.empty(bins, np.float64))
    counts, cumulative = buffers[bins]
    image = values if values.flags.c_contiguous else np.ascontiguousarray(values)
    if image.size < _EXACT_FLOAT32_COUNT:
        cv2.calcHist([image], [0], None, [bins], [0, bins], hist=counts)
        np.cumsum(counts[:, 0], out=cumulative, dtype=np.float64)
    else:
        np.cumsum(np.bincount(image.ravel(), minlength=bins), out=cumulative)
    return cumulative


def thermal_percentiles(thermal: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low``/``high`` percentiles of the nonzero counts of ``thermal`` (of all counts if none
    is nonzero), exactly as ``np.percentile(values, (low, high))`` (linear interpolation between
    order statistics) computes them.

    For uint8/uint16 the order statistics are read off the cumulative histogram (a pass over the
    pixels and a search in 256/65536 bins, no sort); other types use ``np.percentile``. The
    interpolation repeats NumPy's own arithmetic (``a + (b - a) * t``, or ``b - (b - a) * (1 - t)``
    for ``t >= 0.5``, in float64), so both give the same float64 values.
    """
    if thermal.dtype not in _HISTOGRAM_BINS:
        seen = thermal[thermal > 0]
        values = np.percentile(seen if seen.size else thermal, (low, high))
        return float(values[0]), float(values[1])
    cumulative = _histogram(thermal)
    zeros = cumulative[0]
    count = cumulative[-1] - zeros
    if count <= 0:  # nothing seen: the percentiles of an all-zero frame
        return 0.0, 0.0
    quantiles = np.true_divide(np.array((low, high), np.float64), 100)
    virtual = (count - 1) * quantiles
    previous = np.floor(virtual)
    above = virtual >= count - 1
    order_previous = np.where(above, count - 1, previous)
    order_next = np.where(above, count - 1, previous + 1)
    # The value at order statistic i (0-based, zeros left out) is the first bin whose cumulative
    # count exceeds i + zeros.
    a = np.searchsorted(cumulative, order_previous + zeros, side="right").astype(np.float64)
    b = np.searchsorted(cumulative, order_next + zeros, side="right").astype(np.float64)
    gamma = np.where(above, virtual + 1, virtual - previous)
    diff = b - a
    result = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return float(result[0]), float(result[1])


def scale_thermal(thermal: np.ndarray, scaling: ThermalScaling, out: np.ndarray | None = None) -> np.ndarray:
    """Map raw thermal counts (HxW uint8/uint16/float32) to float32 ``[0, 1]`` (HxW).

    A flat frame (percentile range of zero width) maps to 0 everywhere. In percentile mode,
    zero counts are left out of the percentiles: they are the border that registration leaves
    where the thermal camera saw nothing, and counting them would squeeze the contrast of the
    pixels it did see. ``out``: an HxW float32 array to write into (returned).
    """
    thermal = check_thermal(thermal)
    if scaling.mode == "percentile":
        low, high = thermal_percentiles(thermal, scaling.low, scaling.high)
    else:
        low, high = scaling.low, scaling.high
    span = float(high) - float(low)
    if out is None:
        out = np.empty(thermal.shape, np.float32)
    elif out.shape != thermal.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {thermal.shape}, got {out.dtype} {out.shape}")
    if span <= 0.0:
        out.fill(0.0)
        return out
    np.subtract(thermal, np.float32(low), out=out, dtype=np.float32)
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


def _resize(image: np.ndarray, height: int, width: int, dst: np.ndarray | None = None) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    if dst is not None and dst.dtype == image.dtype and dst.shape == (height, width) + image.shape[2:]:
        return cv2.resize(image, (width, height), dst=dst, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


class InputBuffers:
    """Arrays the engine's preprocessing writes each frame into instead of allocating new ones.

    One set per thread and per batch slot (a pair's position in ``infer_batch``), keyed by name;
    an array is replaced only when the shape or type it must hold changes. The arrays handed out
    stay valid until the same thread preprocesses the same slot again.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, slot: int, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = {}
        key = (slot, name)
        array = arrays.get(key)
        if array is None or array.shape != shape or array.dtype != np.dtype(dtype):
            array = arrays[key] = np.empty(shape, dtype)
        return array


def rgb_to_array(rgb: np.ndarray, input_size: Sequence[int], out: np.ndarray | None = None,
                 scratch: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 -> ``1, 3, H, W`` float32 in ``[0, 1]`` at ``input_size`` (``x / 255`` in float32,
    the same values as the tensor path). ``out``: the ``1,3,H,W`` float32 array to fill;
    ``scratch``: an ``H,W,3`` uint8 array for the resized frame."""
    height, width = check_size(input_size, "input_size")
    resized = _resize(check_rgb(rgb), height, width, scratch)
    if out is None:
        out = np.empty((1, 3, height, width), np.float32)
    np.divide(resized.transpose(2, 0, 1), np.float32(255.0), out=out[0], dtype=np.float32)
    return out


def thermal_to_array(thermal: np.ndarray, input_size: Sequence[int], scaling: ThermalScaling,
                     out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """HxW raw counts -> ``1, 1, H, W`` float32 in ``[0, 1]`` at ``input_size``.

    Resizing comes first so percentiles are taken on the pixels the network sees. ``out``: the
    ``1,1,H,W`` float32 array to fill; ``scratch``: an ``H,W`` array of the thermal type for the resize.
    """
    height, width = check_size(input_size, "input_size")
    thermal = check_thermal(thermal)
    resized = _resize(thermal, height, width, scratch)
    if out is None:
        out = np.empty((1, 1, height, width), np.float32)
    scale_thermal(resized, scaling, out=out[0, 0])
    return out


def to_model_arrays(
    rgb: np.ndarray | None,
    thermal: np.ndarray | None,
    input_size: Sequence[int],
    scaling: ThermalScaling = ThermalScaling(),
    buffers: InputBuffers | None = None,
    slot: int = 0,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Turn one pair into network inputs as NumPy arrays (see :func:`to_model_inputs`).

    With ``buffers`` the results (and the resized frames) live in that object's arrays for ``slot``,
    so a stream of frames allocates nothing here; the caller must use them before it preprocesses
    the same slot again.

    Returns:
        ``(rgb 1,3,H,W | None, thermal 1,1,H,W | None)``, float32 in ``[0, 1]``.
    """
    if rgb is None and thermal is None:
        raise ValueError("both rgb and thermal are missing; at least one modality is required")
    height, width = check_size(input_size, "input_size")

    def buffer(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        return None if buffers is None else buffers.get(slot, name, shape, dtype)

    rgb_array = thermal_array = None
    if rgb is not None:
        rgb_array = rgb_to_array(rgb, (height, width), buffer("rgb", (1, 3, height, width), np.float32),
                                 buffer("rgb_resized", (height, width, 3), np.uint8))
    if thermal is not None:
        thermal = check_thermal(thermal)
        thermal_array = thermal_to_array(
            thermal, (height, width), scaling, buffer("thermal", (1, 1, height, width), np.float32),
            buffer("thermal_resized", (height, width), thermal.dtype),
        )
    return rgb_array, thermal_array


def to_model_inputs(
    rgb: np.ndarray | None,
    thermal: np.ndarray | None,
    input_size: Sequence[int],
    scaling: ThermalScaling = ThermalScaling(),
) -> tuple["torch.Tensor | None", "torch.Tensor | None"]:
    """Turn one pair into network inputs.

    Args:
        rgb: HxWx3 uint8 or ``None`` (camera missing).
        thermal: HxW (or HxWx1) uint8/uint16/float32 counts, already on the RGB grid, or ``None``.
        input_size: model input ``(H, W)``.
        scaling: thermal count scaling.

    Returns:
        ``(rgb 1,3,H,W | None, thermal 1,1,H,W | None)``, float32 tensors in ``[0, 1]`` (fresh
        memory, safe to keep).
    """
    import torch

    rgb_array, thermal_array = to_model_arrays(rgb, thermal, input_size, scaling)
    return (None if rgb_array is None else torch.from_numpy(rgb_array),
            None if thermal_array is None else torch.from_numpy(thermal_array))
