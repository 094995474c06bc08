"""Box-only RGB-T detection sets: per-frame box annotations and the data set class around them.

The detection benchmarks (LLVIP, FLIR-aligned, M3FD, KAIST) annotate boxes and no masks. Their
samples follow the contract of :mod:`training.datasets.base` with ``label=None`` and two extra
keys::

    "ignore_boxes": M,4 float32 xyxy RGB px  regions that are neither positive nor negative
                                             (VOC ``difficult``, KAIST people/person?/cyclist)
    "box_occlusion": N int64 | None          KAIST occlusion level per box (0 none, 1 partial,
                                             2 heavy); None for the other sets

Boxes are continuous pixel coordinates: ``[x0, y0, x1, y1]`` with ``0 <= x0 < x1 <= width``.
A box outside the image is an error naming the annotation file, unless the loader was given
``clip_boxes=True`` (then it is clipped to the image and dropped when nothing is left).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from rgbt_perception.core.classes import ClassSet
from training.datasets.base import DatasetError, FrameRecord, RGBTDataset, Sample


def _empty(columns: int = 4) -> np.ndarray:
    return np.zeros((0, columns), np.float32)


@dataclass(frozen=True)
class FrameBoxes:
    """The annotation of one frame.

    ``boxes`` N,4 float32 xyxy and ``labels`` N int64 (class ids); ``ignore`` M,4 float32 xyxy;
    ``occlusion`` N int64 or None; ``size`` the ``(width, height)`` the file states (None when it
    states none); ``source`` the annotation file, named in errors.
    """

    source: str
    boxes: np.ndarray = field(default_factory=_empty)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray = field(default_factory=_empty)
    occlusion: np.ndarray | None = None
    size: tuple[int, int] | None = None


def check_boxes_in_image(boxes: np.ndarray, width: int, height: int, source: str, what: str = "box",
                         clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boxes inside ``[0, width] x [0, height]``.

    Returns ``(boxes, keep)`` where ``keep`` marks the rows kept. Without ``clip`` a box that
    leaves the image raises :class:`DatasetError` naming ``source``; with ``clip`` it is clipped
    and dropped when it has no area left.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    if not len(boxes):
        return boxes, keep
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    if outside.any() and not clip:
        i = int(np.flatnonzero(outside)[0])
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        raise DatasetError(
            f"{what} {i} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {width}x{height} image: {source} "
            f"(clip_boxes=True clips such boxes)"
        )
    if outside.any():
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep


def class_lookup(class_set: ClassSet) -> dict[str, int]:
    """Category name (case-insensitive, spaces and underscores alike) -> class id, background left out."""
    return {
        name.lower().replace(" ", "_"): i for i, name in enumerate(class_set.names) if i != class_set.background_id
    }


class BoxOnlyDataset(RGBTDataset):
    """Frames whose boxes come from per-frame annotations (``annotations[record.name]``).

    Every record needs its annotation. Samples carry ``label=None`` and the extra keys of the
    module docstring; the annotation's stated size (when given) must match the RGB image.
    """

    def __init__(
        self,
        records: Sequence[FrameRecord],
        class_set: ClassSet,
        annotations: Mapping[str, FrameBoxes],
        clip_boxes: bool = False,
    ) -> None:
        super().__init__(records, class_set)
        missing = [r.name for r in records if r.name not in annotations]
        if missing:
            raise DatasetError(f"no annotation for frame {missing[0]!r} ({len(missing)} frame(s) without one)")
        self.annotations = dict(annotations)
        self.clip_boxes = bool(clip_boxes)

    def load(self, index: int) -> Sample:
        sample = super().load(index)
        record = self.records[index]
        ann = self.annotations[record.name]
        height, width = sample["rgb"].shape[:2]
        if ann.size is not None and tuple(ann.size) != (width, height):
            raise DatasetError(
                f"annotation states an image size of {ann.size[0]}x{ann.size[1]} but the RGB image is "
                f"{width}x{height}: {ann.source} vs {record.rgb_path}"
            )
        boxes, keep = check_boxes_in_image(ann.boxes, width, height, ann.source, clip=self.clip_boxes)
        ignore, keep_ignore = check_boxes_in_image(ann.ignore, width, height, ann.source, "ignore box",
                                                   clip=self.clip_boxes)
        sample["boxes"] = boxes[keep]
        sample["box_labels"] = ann.labels[keep].copy()
        sample["ignore_boxes"] = ignore[keep_ignore]
        sample["box_occlusion"] = None if ann.occlusion is None else ann.occlusion[keep].copy()
        return sample
