"""Image preparation shared by calibration and the run-time alignment check.

Both cameras are reduced to the same kind of picture before they are compared: a map of
where the image has edges, blind to which side is brighter. Thermal and visible light
disagree on brightness (a warm black square is bright in thermal, a cold sky may be dark in
both or only in one) but they agree on *where* object boundaries are, so calibration and the
monitor compare gradient maps, never intensities.

Coordinates follow :mod:`rgbt_perception.core.registration`: a homography maps thermal
pixel coordinates (x right, y down, pixel centres at integers) onto RGB pixel coordinates.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# Edge strength is compressed as g / (g + c): c is this percentile of the image's gradient
# magnitude, so strong and weak boundaries weigh alike and a modality with low contrast (night
# RGB, a cool scene in thermal) still takes part.
_COMPRESSION_PERCENTILE = 90.0
# Below this gradient magnitude (image normalised to unit range) nothing counts as an edge:
# keeps sensor noise of a flat image from being stretched into fake structure.
_NOISE_FLOOR = 0.01


def to_gray(image: np.ndarray) -> np.ndarray:
    """``H, W, 3`` (RGB) or ``H, W`` (any dtype) to ``H, W`` float32 stretched to about [0, 1].

    The stretch uses the 0.5 and 99.5 percentiles, so raw 16-bit thermal counts, 8-bit thermal
    and dark night RGB all come out on one scale.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        else:
            image = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
    gray = image.astype(np.float32)
    if not np.all(np.isfinite(gray)):  # radiometric float thermal may carry NaN for dead pixels
        gray = np.nan_to_num(gray, nan=float(np.nanmedian(gray)) if np.isfinite(gray).any() else 0.0,
                             posinf=0.0, neginf=0.0)
    low, high = np.percentile(gray[:: max(1, gray.shape[0] // 64), :: max(1, gray.shape[1] // 64)], (0.5, 99.5))
    span = float(high - low)
    if span <= 0:
        return np.zeros(gray.shape, np.float32)
    return (gray - np.float32(low)) * np.float32(1.0 / span)


def remove_column_offsets(gray: np.ndarray, width: int = 9) -> np.ndarray:
    """``H, W`` float32 thermal with each column's offset removed (microbolometer fixed-pattern
    noise: every column has its own readout, so a flat scene shows thin vertical stripes that
    an adaptive edge detector turns into long vertical lines, the same in every frame).

    A column's offset is the median over rows of its difference from a ``width`` px horizontal
    average: scene edges cover a part of a column's rows and barely move the median; the
    horizon, a horizontal edge, is untouched.
    """
    smooth = cv2.blur(gray, (int(width), 1), borderType=cv2.BORDER_REFLECT)
    offsets = np.median(gray - smooth, axis=0).astype(np.float32)
    return gray - offsets[None, :]


def resize_matrix(src_size: Sequence[int], dst_size: Sequence[int]) -> np.ndarray:
    """3x3 map of pixel coordinates from an image of ``src_size`` (H, W) to the same image
    resized to ``dst_size`` (H, W), with OpenCV's pixel-centre convention."""
    sy, sx = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def same_view_homography(thermal_size: Sequence[int], rgb_size: Sequence[int]) -> np.ndarray:
    """The map the node uses for an identity ``thermal_to_rgb``: both cameras see the same
    field of view, thermal is resized onto the RGB grid."""
    return resize_matrix(thermal_size, rgb_size)


def level_homography(homography: np.ndarray, thermal_scale: np.ndarray, rgb_scale: np.ndarray) -> np.ndarray:
    """Full-resolution homography expressed between two resized images.

    ``thermal_scale`` / ``rgb_scale``: :func:`resize_matrix` of each image's resize."""
    out = rgb_scale @ homography @ np.linalg.inv(thermal_scale)
    return out / out[2, 2]


def full_homography(level: np.ndarray, thermal_scale: np.ndarray, rgb_scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`level_homography`."""
    out = np.linalg.inv(rgb_scale) @ level @ thermal_scale
    return out / out[2, 2]


def edge_features(gray: np.ndarray, sigma: float = 1.0, orientation: bool = True) -> np.ndarray:
    """Polarity-blind edge map of an ``H, W`` float image.

    Returns:
        ``C, H, W`` float32 in about [-1, 1]: with ``orientation`` the doubled-angle gradient
        direction weighted by compressed strength (``C = 2``: cos 2a and sin 2a, so an edge
        and the same edge with inverted contrast look alike while crossing edges do not);
        otherwise the compressed strength alone (``C = 1``).
    """
    if sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    magnitude = cv2.magnitude(gx, gy)
    scale = max(float(np.percentile(magnitude, _COMPRESSION_PERCENTILE)), _NOISE_FLOOR)
    strength = magnitude / (magnitude + np.float32(scale))
    if not orientation:
        return strength[None]
    inv = np.float32(1.0) / np.maximum(magnitude * magnitude, np.float32(1e-12))
    cos2 = (gx * gx - gy * gy) * inv * strength
    sin2 = (2.0 * gx * gy) * inv * strength
    return np.stack([cos2, sin2]).astype(np.float32)


def resize_to(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Area-average resize to ``size`` (H, W) (bilinear when enlarging)."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0] and width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def level_size(size: Sequence[int], width: int) -> tuple[int, int]:
    """``(H, W)`` of an image of ``size`` resized to ``width`` columns (aspect kept, at least 8 px)."""
    factor = width / float(size[1])
    return max(8, int(round(size[0] * factor))), max(8, int(round(size[1] * factor)))


def thermal_footprint(homography: np.ndarray, thermal_size: Sequence[int]) -> np.ndarray:
    """``4, 2`` RGB pixel positions of the thermal image's corner pixels (TL, TR, BR, BL)."""
    height, width = thermal_size
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    return project(homography, corners)


def project(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to ``N, 2`` points."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.c_[points, np.ones(len(points))] @ np.asarray(homography, np.float64).T
    return mapped[:, :2] / mapped[:, 2:3]


def cross2(a: np.ndarray, b: np.ndarray) -> float:
    """z component of the cross product of two 2-vectors."""
    return float(a[0] * b[1] - a[1] * b[0])


def corner_error(estimate: np.ndarray, truth: np.ndarray, thermal_size: Sequence[int]) -> float:
    """Largest distance (RGB px) between where two homographies put the thermal image's corners."""
    return float(np.max(corner_distances(estimate, truth, thermal_size)))


def mean_corner_error(estimate: np.ndarray, truth: np.ndarray, thermal_size: Sequence[int]) -> float:
    """Mean distance (RGB px) over the thermal image's 4 corners between two homographies."""
    return float(np.mean(corner_distances(estimate, truth, thermal_size)))


def corner_distances(estimate: np.ndarray, truth: np.ndarray, thermal_size: Sequence[int]) -> np.ndarray:
    """``4`` distances (RGB px, TL, TR, BR, BL) between where two homographies put the thermal image's corners."""
    diff = thermal_footprint(estimate, thermal_size) - thermal_footprint(truth, thermal_size)
    return np.hypot(diff[:, 0], diff[:, 1])
