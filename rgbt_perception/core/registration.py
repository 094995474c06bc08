"""Thermal-to-RGB registration: a 3x3 homography from thermal pixels to RGB pixels.

The warp keeps raw counts (8- or 16-bit) so thermal scaling happens once, afterwards, on the
RGB grid; the engine and the training transforms both go through these functions.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import cv2
import numpy as np

# Below this reciprocal condition number a homography is numerically singular.
_MIN_RECIPROCAL_CONDITION = 1e-12

_THERMAL_DTYPES = (np.uint8, np.uint16, np.float32)


def parse_homography(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate a thermal->RGB homography given as 9 numbers (row-major) or a 3x3 array.

    Returns:
        3x3 float64 array.

    Raises:
        ValueError: wrong count, non-numeric or non-finite entries, or a singular matrix.
    """
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"homography must be 9 numbers or a 3x3 matrix: {exc}") from None
    if matrix.size != 9 or matrix.shape not in ((9,), (3, 3), (1, 9), (9, 1)):
        raise ValueError(f"homography must be 9 numbers or a 3x3 matrix, got shape {matrix.shape}")
    matrix = matrix.reshape(3, 3)
    if not np.all(np.isfinite(matrix)):
        raise ValueError("homography has non-finite entries (nan or inf)")
    singular = np.linalg.cond(matrix)
    if not np.isfinite(singular) or 1.0 / singular < _MIN_RECIPROCAL_CONDITION:
        raise ValueError("homography is singular (not invertible)")
    return matrix


def read_homography_file(path: str | os.PathLike) -> np.ndarray:
    """Read a homography from a text file of 9 numbers (whitespace, comma or semicolon separated;
    ``#`` starts a comment). Raises ``ValueError`` naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read homography file {os.fspath(path)!r}: {exc.strerror}") from None
    text = re.sub(r"#[^\n]*", "", text)
    tokens = [t for t in re.split(r"[\s,;\[\]]+", text) if t]
    try:
        numbers = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(f"homography file {os.fspath(path)!r} contains non-numeric text") from None
    try:
        return parse_homography(numbers)
    except ValueError as exc:
        raise ValueError(f"homography file {os.fspath(path)!r}: {exc}") from None


def check_thermal(thermal: np.ndarray, what: str = "thermal") -> np.ndarray:
    """Validate a thermal frame (HxW or HxWx1; uint8, uint16 or finite float32) and return it as HxW."""
    if not isinstance(thermal, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(thermal).__name__}")
    if thermal.ndim == 3 and thermal.shape[2] == 1:
        thermal = thermal[:, :, 0]
    if thermal.ndim != 2:
        raise ValueError(f"{what} must be HxW or HxWx1, got shape {thermal.shape}")
    if thermal.dtype not in _THERMAL_DTYPES:
        raise ValueError(f"{what} must be uint8, uint16 or float32, got {thermal.dtype}")
    if thermal.size == 0:
        raise ValueError(f"{what} has zero size {thermal.shape}")
    if thermal.dtype == np.float32 and not np.all(np.isfinite(thermal)):
        raise ValueError(f"{what} has non-finite values (nan or inf)")
    return thermal


def check_size(size: Sequence[int], what: str = "size") -> tuple[int, int]:
    """Validate an ``(H, W)`` pair of positive integers."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (H, W), got {size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} must be positive, got {(height, width)}")
    return height, width


def warp_thermal_to_rgb(
    thermal: np.ndarray,
    homography: np.ndarray | Sequence[float] | None,
    rgb_size: Sequence[int],
) -> np.ndarray:
    """Resample a thermal frame onto the RGB pixel grid.

    Args:
        thermal: HxW (or HxWx1) uint8/uint16/float32 raw counts.
        homography: 3x3 map from thermal pixel coordinates to RGB pixel coordinates, or
            ``None`` when both cameras see the same field of view (plain resize).
        rgb_size: ``(H, W)`` of the RGB image.

    Returns:
        rgb_H x rgb_W array of the input dtype; bilinear, pixels outside the thermal view are 0.
    """
    thermal = check_thermal(thermal)
    height, width = check_size(rgb_size, "rgb_size")
    if homography is None:
        if thermal.shape == (height, width):
            return thermal
        return cv2.resize(thermal, (width, height), interpolation=cv2.INTER_LINEAR)
    matrix = parse_homography(homography)
    return cv2.warpPerspective(
        thermal, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
