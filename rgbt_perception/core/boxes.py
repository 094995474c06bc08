"""Boxes from label masks: connected components of thing classes (no instance ids needed)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def boxes_from_label(
    label: np.ndarray, thing_ids: Sequence[int], min_area: int = 16, connectivity: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected components of each thing class in an HxW class-index map.

    Returns ``(boxes N,4 float32 xyxy px, labels N int64)``; a box spans whole pixels, so a
    single pixel at (x, y) gives ``[x, y, x + 1, y + 1]``. Components smaller than
    ``min_area`` pixels are dropped. Touching instances of one class merge into one box
    (a label map carries no instance ids).
    """
    all_boxes, all_labels = [], []
    for class_id in thing_ids:
        mask = (label == class_id).astype(np.uint8)
        if not mask.any():
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
        for x, y, w, h, area in stats[1:count]:
            if area >= min_area:
                all_boxes.append((x, y, x + w, y + h))
                all_labels.append(class_id)
    if not all_boxes:
        return empty_boxes()
    return np.asarray(all_boxes, np.float32), np.asarray(all_labels, np.int64)
