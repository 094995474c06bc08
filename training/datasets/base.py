"""Common machinery of the RGB-T data sets: frame records, PNG reading, pairing, errors.

Every data set returns one dict per index (the contract of docs/architecture.md)::

    {"rgb": HxWx3 uint8, "thermal": hxw uint8|uint16, "label": HxW uint8 (255 = ignore) | None,
     "boxes": N,4 float32 xyxy RGB px, "box_labels": N int64, "condition": str | None,
     "name": str, "homography": 3x3 float64 | None}

``homography`` maps thermal pixel coordinates onto RGB pixel coordinates; ``None`` means the
thermal image covers the RGB field of view (a plain resize registers it). The box-only detection
sets (:mod:`training.datasets.detection`) return ``label=None`` and add ``ignore_boxes`` and
``box_occlusion``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rgbt_perception.core.classes import ClassSet
from rgbt_perception.core.registration import read_homography_file
from rgbt_perception.io.images import (  # noqa: F401  (re-exported for the loaders)
    IMAGE_EXTENSIONS,
    DatasetError,
    find_image,
    list_images,
    pair_folders,
    read_image,
    read_label,
    read_rgb,
    read_split_file,
    read_thermal,
)
from training.datasets.boxes import CocoBoxes, boxes_from_label

Sample = dict[str, Any]


@dataclass(frozen=True)
class FrameRecord:
    """Where one frame's files are. ``thermal_channel`` picks a channel of a multi-channel file."""

    name: str
    rgb_path: str
    thermal_path: str
    label_path: str | None = None
    condition: str | None = None
    homography: np.ndarray | None = None
    thermal_channel: int | None = None


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"missing {what} folder: {path}")
    return path


def read_homography(path: str) -> np.ndarray:
    """3x3 thermal->RGB homography from a text file of 9 numbers."""
    try:
        return read_homography_file(path)
    except ValueError as err:
        raise DatasetError(str(err)) from None


def read_conditions_file(path: str) -> dict[str, str]:
    """``{frame stem: condition}`` from a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            conditions = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"unreadable conditions file {path}: {err}") from None
    if not isinstance(conditions, dict) or not all(isinstance(v, str) for v in conditions.values()):
        raise DatasetError(f"conditions file must map frame names to strings: {path}")
    return {os.path.splitext(k)[0]: v for k, v in conditions.items()}


class RGBTDataset:
    """A list of ``FrameRecord`` turned into samples.

    Boxes come from a COCO file when one is given (``coco``), otherwise from connected
    components of ``thing_ids`` (default: the class set's) in the label, keeping components of
    at least ``min_box_area`` pixels.
    """

    def __init__(
        self,
        records: Sequence[FrameRecord],
        class_set: ClassSet,
        coco: CocoBoxes | None = None,
        thing_ids: Sequence[int] | None = None,
        min_box_area: int = 16,
    ) -> None:
        if not records:
            raise DatasetError("the data set has no frames")
        self.records = list(records)
        self.class_set = class_set
        self.coco = coco
        self.thing_ids = tuple(class_set.thing_ids if thing_ids is None else thing_ids)
        bad = [i for i in self.thing_ids if not 0 <= i < class_set.num_classes]
        if bad:
            raise ValueError(f"thing ids {bad} outside the {class_set.name} classes 0..{class_set.num_classes - 1}")
        self.min_box_area = int(min_box_area)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    @property
    def conditions(self) -> list[str | None]:
        return [r.condition for r in self.records]

    def load(self, index: int) -> Sample:
        """The raw sample of frame ``index`` (no transform)."""
        record = self.records[index]
        rgb = read_rgb(record.rgb_path)
        thermal = read_thermal(record.thermal_path, record.thermal_channel)
        label = None
        if record.label_path is not None:
            label = read_label(record.label_path)
            if label.shape != rgb.shape[:2]:
                raise DatasetError(
                    f"label size {label.shape[1]}x{label.shape[0]} differs from RGB size "
                    f"{rgb.shape[1]}x{rgb.shape[0]}: {record.label_path} vs {record.rgb_path}"
                )
        if record.homography is None and thermal.shape != rgb.shape[:2]:
            # Without a homography the thermal frame is only resized onto the RGB grid, which
            # needs the same aspect ratio; otherwise it is a different camera or a wrong file.
            if abs(thermal.shape[0] * rgb.shape[1] - thermal.shape[1] * rgb.shape[0]) > max(rgb.shape[:2]):
                raise DatasetError(
                    f"thermal size {thermal.shape[1]}x{thermal.shape[0]} has another aspect ratio than "
                    f"RGB {rgb.shape[1]}x{rgb.shape[0]} and no homography is given: {record.thermal_path}"
                )
        if self.coco is not None:
            boxes, box_labels = self.coco.get(record.name)
        elif label is not None:
            boxes, box_labels = boxes_from_label(label, self.thing_ids, self.min_box_area)
        else:
            boxes, box_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        return {
            "rgb": rgb,
            "thermal": thermal,
            "label": label,
            "boxes": boxes,
            "box_labels": box_labels,
            "condition": record.condition,
            "name": record.name,
            "homography": None if record.homography is None else record.homography.copy(),
        }

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        return self.load(index % len(self))
