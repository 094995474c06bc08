"""Colour class masks and draw detections for people to look at."""
from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import cv2
import numpy as np


class BoxLike(Protocol):
    """What ``draw_detections`` needs from a detection (``inference.Detection`` fits)."""

    class_id: int
    label: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float


def palette_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """``256, 3`` uint8 lookup table; class ids beyond the palette (e.g. ignore 255) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:256]
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("palette colours must lie in 0..255")
    lut[: len(colours)] = colours
    return lut


def colorize_mask(mask: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """HxW uint8 class-index mask -> HxWx3 uint8 RGB colours (``palette`` list or a ``palette_lut``)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be HxW uint8, got shape {mask.shape} dtype {mask.dtype}")
    lut = palette if isinstance(palette, np.ndarray) and palette.shape == (256, 3) else palette_lut(palette)
    return lut[mask]


def blend_overlay(
    image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured mask over an HxWx3 uint8 image (``alpha`` = weight of the colours)."""
    colours = colorize_mask(mask, palette)
    if image.shape != colours.shape:
        raise ValueError(f"image shape {image.shape} does not match mask shape {mask.shape}")
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    """HxW image of any range -> HxWx3 uint8 (min-max stretched), e.g. a thermal frame as backdrop."""
    data = image.astype(np.float32)
    low, high = float(data.min()), float(data.max())
    scaled = np.zeros_like(data) if high <= low else (data - low) * (255.0 / (high - low))
    gray = scaled.astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def draw_detections(
    image: np.ndarray,
    detections: Iterable[BoxLike],
    palette: Sequence[Sequence[int]] | np.ndarray,
    thickness: int = 2,
) -> np.ndarray:
    """Draw labelled boxes on a copy of an HxWx3 uint8 RGB image."""
    lut = palette if isinstance(palette, np.ndarray) and palette.shape == (256, 3) else palette_lut(palette)
    canvas = np.ascontiguousarray(image).copy()
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for det in detections:
        colour = tuple(int(c) for c in lut[int(det.class_id) % 256])
        if colour == (0, 0, 0):
            colour = (255, 255, 255)  # black boxes vanish on dark scenes
        top_left = (int(round(det.x_min)), int(round(det.y_min)))
        bottom_right = (int(round(det.x_max)), int(round(det.y_max)))
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness)
        text = f"{det.label} {det.score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, 1)
        text_y = max(top_left[1], text_h + baseline)
        cv2.rectangle(canvas, (top_left[0], text_y - text_h - baseline), (top_left[0] + text_w, text_y), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)
        cv2.putText(canvas, text, (top_left[0], text_y - baseline), font, font_scale, text_colour, 1, cv2.LINE_AA)
    return canvas
