"""Common machinery of the RGB-T data sets: frame records, PNG reading, pairing, errors.

Every data set returns one dict per index (the contract of docs/architecture.md)::

    {"rgb": HxWx3 uint8, "thermal": hxw uint8|uint16, "label": HxW uint8 (255 = ignore) | None,
     "boxes": N,4 float32 xyxy RGB px, "box_labels": N int64, "condition": str | None,
     "name": str, "homography": 3x3 float64 | None}

``homography`` maps thermal pixel coordinates onto RGB pixel coordinates; ``None`` means the
thermal image covers the RGB field of view (a plain resize registers it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from rgbt_perception.classes import IGNORE_INDEX, ClassSet
from rgbt_perception.registration import read_homography_file

from .boxes import CocoBoxes, boxes_from_label

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
Sample = dict[str, Any]


class DatasetError(ValueError):
    """A data set on disk is incomplete or inconsistent; the message names the file."""


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


def read_image(path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image file as stored (8 or 16 bit, 1, 3 or 4 channels); errors name the file."""
    if not os.path.isfile(path):
        raise DatasetError(f"missing file: {path}")
    image = cv2.imread(path, flags)
    if image is None:
        raise DatasetError(f"unreadable image (not a valid PNG/JPEG?): {path}")
    return image


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB from an 8-bit colour (BGR/BGRA on disk) or grey file."""
    image = read_image(path)
    if image.dtype != np.uint8:
        raise DatasetError(f"RGB image must be 8-bit, got {image.dtype}: {path}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])


def read_thermal(path: str, channel: int | None = None) -> np.ndarray:
    """HxW uint8/uint16 thermal counts; ``channel`` selects one channel of a multi-channel file
    (MFNet stores thermal as the 4th channel: index 3 of OpenCV's BGRA)."""
    image = read_image(path)
    if image.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"thermal image must be 8- or 16-bit, got {image.dtype}: {path}")
    if channel is not None:
        if image.ndim != 3 or image.shape[2] <= channel:
            channels = 1 if image.ndim == 2 else image.shape[2]
            raise DatasetError(f"expected a thermal channel {channel} but the image has {channels} channel(s): {path}")
        return np.ascontiguousarray(image[:, :, channel])
    if image.ndim == 3:
        # Colour-mapped or replicated grey thermal: all channels carry the same counts.
        return np.ascontiguousarray(image[:, :, 0])
    return image


def read_label(path: str) -> np.ndarray:
    """HxW uint8 class indices (255 = ignore)."""
    image = read_image(path)
    if image.ndim == 3:
        # Some releases store labels as replicated 3-channel images.
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        if image.max(initial=0) > IGNORE_INDEX:
            raise DatasetError(f"label values must fit 0..255, got max {int(image.max())}: {path}")
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def read_split_file(path: str) -> list[str]:
    """Frame stems listed one per line (extensions and blank lines ignored)."""
    if not os.path.isfile(path):
        raise DatasetError(f"missing split file: {path}")
    with open(path, encoding="utf-8") as f:
        stems = [os.path.splitext(line.strip())[0] for line in f if line.strip()]
    if not stems:
        raise DatasetError(f"split file lists no frames: {path}")
    return stems


def list_images(folder: str) -> dict[str, str]:
    """Stem -> path of the image files in ``folder``; two files with one stem are an error."""
    found: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        path = os.path.join(folder, entry)
        if stem in found:
            raise DatasetError(f"two files for frame {stem!r}: {found[stem]} and {path}")
        found[stem] = path
    return found


def find_image(folder: str, stem: str) -> str:
    """Path of the image for ``stem`` in ``folder``; the error names the expected file."""
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"missing file: {os.path.join(folder, stem + '.png')} (frame {stem!r})")


def pair_folders(folders: dict[str, str], required: Sequence[str]) -> dict[str, dict[str, str]]:
    """Pair files by stem across ``folders`` (role -> folder). Every stem must exist in each
    ``required`` role; a file without its partners is an error naming it."""
    listings = {role: list_images(folder) for role, folder in folders.items()}
    stems = sorted(set().union(*(listing.keys() for listing in listings.values())))
    pairs: dict[str, dict[str, str]] = {}
    for stem in stems:
        present = {role: listing[stem] for role, listing in listings.items() if stem in listing}
        missing = [role for role in required if role not in present]
        if missing:
            some_file = next(iter(present.values()))
            raise DatasetError(
                f"unpaired file {some_file}: no {', '.join(missing)} image for frame {stem!r} "
                f"(looked in {', '.join(folders[r] for r in missing)})"
            )
        pairs[stem] = present
    if not pairs:
        raise DatasetError(f"no images found in {', '.join(folders.values())}")
    return pairs


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
