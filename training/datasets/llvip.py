"""LLVIP (Jia et al., 2021), a visible-infrared paired set of pedestrians in low light::

    root/visible/{train,test}/<id>.jpg     RGB, 1280x1024
    root/infrared/{train,test}/<id>.jpg    thermal (8-bit, stored as grey JPEG), registered to RGB
    root/Annotations/<id>.xml              Pascal VOC boxes of class ``person``, one file for both

12,025 train and 3,463 test pairs; the two images of a pair share a name and one annotation.
"""
from __future__ import annotations

import os

from rgbt_perception.core.classes import LLVIP, ClassSet
from training.datasets.base import DatasetError, FrameRecord, pair_folders, require_dir
from training.datasets.detection import BoxOnlyDataset
from training.datasets.registry import register_dataset
from training.datasets.voc import read_voc_xml

LLVIP_SPLITS = ("train", "test")


class LLVIPDataset(BoxOnlyDataset):
    """LLVIP's train or test split (box-only: ``label`` is None)."""

    def __init__(self, root: str, split: str = "train", class_set: ClassSet = LLVIP, clip_boxes: bool = False) -> None:
        if split not in LLVIP_SPLITS:
            raise ValueError(f"LLVIP split must be one of {', '.join(LLVIP_SPLITS)}, got {split!r}")
        require_dir(root, "LLVIP root")
        folders = {
            "rgb": require_dir(os.path.join(root, "visible", split), f"LLVIP visible/{split}"),
            "thermal": require_dir(os.path.join(root, "infrared", split), f"LLVIP infrared/{split}"),
        }
        annotations_dir = require_dir(os.path.join(root, "Annotations"), "LLVIP Annotations")
        pairs = pair_folders(folders, required=("rgb", "thermal"))
        records, annotations = [], {}
        for stem, paths in pairs.items():
            xml_path = os.path.join(annotations_dir, f"{stem}.xml")
            if not os.path.isfile(xml_path):
                raise DatasetError(f"missing annotation file: {xml_path} (for {paths['rgb']})")
            annotations[stem] = read_voc_xml(xml_path, class_set, clip_boxes=clip_boxes)
            records.append(FrameRecord(stem, paths["rgb"], paths["thermal"]))
        self.root = root
        self.split = split
        super().__init__(records, class_set, annotations, clip_boxes=clip_boxes)


register_dataset("llvip", LLVIPDataset, LLVIP, splits=LLVIP_SPLITS)
