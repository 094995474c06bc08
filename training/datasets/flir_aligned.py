"""FLIR-aligned: the RGB-thermal aligned subset of the FLIR ADAS v1 set (Zhang et al., ICIP 2020)::

    root/JPEGImages/<id>_PreviewData.jpeg    thermal, 640x512 (8-bit, stored as grey JPEG)
    root/JPEGImages/<id>_RGB.jpg             RGB aligned to the thermal view, 640x512
    root/Annotations/<id>_PreviewData.xml    Pascal VOC boxes: person, car, bicycle (and dog)
    root/align_train.txt                     4,129 ids of the train split
    root/align_validation.txt                1,013 ids of the validation split (split name ``val``)

``<id>`` is ``FLIR_NNNNN``; the split files list ``FLIR_NNNNN_PreviewData`` (a bare ``FLIR_NNNNN``
or a file name with extension is accepted too) and may also sit in ``ImageSets/Main/``. The
benchmark scores person, car and bicycle, so the few ``dog`` boxes are left out.
"""
from __future__ import annotations

import os

from rgbt_perception.core.classes import FLIR_ALIGNED, ClassSet
from training.datasets.base import DatasetError, FrameRecord, read_split_file, require_dir
from training.datasets.detection import BoxOnlyDataset
from training.datasets.registry import register_dataset
from training.datasets.voc import read_voc_xml

FLIR_SPLIT_FILES = {"train": "align_train.txt", "val": "align_validation.txt"}
THERMAL_SUFFIX = "_PreviewData"
RGB_SUFFIX = "_RGB"
SKIPPED_CLASSES = ("dog",)


def frame_id(entry: str) -> str:
    """``FLIR_00002_PreviewData.jpeg`` / ``FLIR_00002_RGB`` / ``FLIR_00002`` -> ``FLIR_00002``."""
    stem = os.path.splitext(os.path.basename(entry.strip()))[0]
    for suffix in (THERMAL_SUFFIX, RGB_SUFFIX):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _find(folder: str, stem: str, extensions: tuple[str, ...], what: str, frame: str) -> str:
    for ext in extensions:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"missing {what} image {os.path.join(folder, stem + extensions[0])} for frame {frame!r}")


class FLIRAlignedDataset(BoxOnlyDataset):
    """FLIR-aligned's train or val split (box-only: ``label`` is None)."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = FLIR_ALIGNED,
        skip_classes: tuple[str, ...] = SKIPPED_CLASSES,
        clip_boxes: bool = False,
    ) -> None:
        if split not in FLIR_SPLIT_FILES:
            raise ValueError(f"FLIR-aligned split must be one of {', '.join(FLIR_SPLIT_FILES)}, got {split!r}")
        require_dir(root, "FLIR-aligned root")
        images_dir = require_dir(os.path.join(root, "JPEGImages"), "FLIR-aligned JPEGImages")
        annotations_dir = require_dir(os.path.join(root, "Annotations"), "FLIR-aligned Annotations")
        split_path = os.path.join(root, FLIR_SPLIT_FILES[split])
        if not os.path.isfile(split_path):
            nested = os.path.join(root, "ImageSets", "Main", FLIR_SPLIT_FILES[split])
            split_path = nested if os.path.isfile(nested) else split_path
        ids = []
        for entry in read_split_file(split_path):
            ident = frame_id(entry)
            if ident not in ids:
                ids.append(ident)
        records, annotations = [], {}
        for ident in ids:
            thermal = _find(images_dir, ident + THERMAL_SUFFIX, (".jpeg", ".jpg", ".png"), "thermal", ident)
            rgb = _find(images_dir, ident + RGB_SUFFIX, (".jpg", ".jpeg", ".png"), "RGB partner", ident)
            xml_path = os.path.join(annotations_dir, f"{ident}{THERMAL_SUFFIX}.xml")
            if not os.path.isfile(xml_path):
                raise DatasetError(f"missing annotation file: {xml_path} (frame {ident!r} of {split_path})")
            annotations[ident] = read_voc_xml(xml_path, class_set, skip_names=skip_classes, clip_boxes=clip_boxes)
            records.append(FrameRecord(ident, rgb, thermal))
        self.root = root
        self.split = split
        super().__init__(records, class_set, annotations, clip_boxes=clip_boxes)


register_dataset("flir_aligned", FLIRAlignedDataset, FLIR_ALIGNED, splits=tuple(FLIR_SPLIT_FILES))
