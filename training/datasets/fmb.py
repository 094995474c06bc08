"""FMB (Liu et al., 2023): ``root/{train,test}/{Visible,Infrared,Label}/*.png``, 800x600.

Labels 0..14 with 0 = background (Road, Sidewalk, Building, Lamp, Sign, Vegetation, Sky,
Person, Car, Truck, Bus, Motorcycle, Bicycle, Pole). Infrared is 8-bit and registered to RGB.
"""
from __future__ import annotations

import os
from typing import Sequence

from rgbt_perception.core.classes import FMB, ClassSet
from training.datasets.base import FrameRecord, RGBTDataset, pair_folders, require_dir
from training.datasets.boxes import CocoBoxes
from training.datasets.registry import register_dataset

FMB_SPLITS = ("train", "test")


class FMBDataset(RGBTDataset):
    """FMB's train or test split."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = FMB,
        thing_ids: Sequence[int] | None = None,
        min_box_area: int = 16,
        use_coco: bool = True,
    ) -> None:
        if split not in FMB_SPLITS:
            raise ValueError(f"FMB split must be one of {', '.join(FMB_SPLITS)}, got {split!r}")
        split_dir = require_dir(os.path.join(require_dir(root, "FMB root"), split), f"FMB {split}")
        folders = {
            "rgb": require_dir(os.path.join(split_dir, "Visible"), "FMB Visible"),
            "thermal": require_dir(os.path.join(split_dir, "Infrared"), "FMB Infrared"),
            "label": require_dir(os.path.join(split_dir, "Label"), "FMB Label"),
        }
        pairs = pair_folders(folders, required=("rgb", "thermal", "label"))
        records = [FrameRecord(stem, p["rgb"], p["thermal"], p["label"]) for stem, p in pairs.items()]
        coco_path = os.path.join(root, "annotations", f"{split}.json")
        coco = CocoBoxes(coco_path, class_set) if use_coco and os.path.isfile(coco_path) else None
        super().__init__(records, class_set, coco=coco, thing_ids=thing_ids, min_box_area=min_box_area)


register_dataset("fmb", FMBDataset, FMB, splits=FMB_SPLITS)
