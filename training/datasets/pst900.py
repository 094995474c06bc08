"""PST900 (Shivakumar et al., 2020): ``root/{train,test}/{rgb,thermal,thermal_raw,labels}/*.png``.

``thermal`` is an 8-bit automatic-gain image, ``thermal_raw`` the 16-bit counts; both are
registered to RGB (1280x720). Labels 0..4: background, fire_extinguisher, backpack,
hand_drill, survivor. There is no validation split.
"""
from __future__ import annotations

import os
from typing import Sequence

from rgbt_perception.core.classes import PST900, ClassSet
from training.datasets.base import FrameRecord, RGBTDataset, pair_folders, require_dir
from training.datasets.boxes import CocoBoxes
from training.datasets.registry import register_dataset

PST900_SPLITS = ("train", "test")


class PST900Dataset(RGBTDataset):
    """PST900; ``prefer_raw`` returns the 16-bit ``thermal_raw`` when that folder exists."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = PST900,
        prefer_raw: bool = True,
        thing_ids: Sequence[int] | None = None,
        min_box_area: int = 16,
        use_coco: bool = True,
    ) -> None:
        if split not in PST900_SPLITS:
            raise ValueError(f"PST900 split must be one of {', '.join(PST900_SPLITS)}, got {split!r}")
        split_dir = require_dir(os.path.join(require_dir(root, "PST900 root"), split), f"PST900 {split}")
        raw_dir = os.path.join(split_dir, "thermal_raw")
        self.uses_raw = prefer_raw and os.path.isdir(raw_dir)
        thermal_dir = raw_dir if self.uses_raw else require_dir(os.path.join(split_dir, "thermal"), "PST900 thermal")
        folders = {
            "rgb": require_dir(os.path.join(split_dir, "rgb"), "PST900 rgb"),
            "thermal": thermal_dir,
            "label": require_dir(os.path.join(split_dir, "labels"), "PST900 labels"),
        }
        pairs = pair_folders(folders, required=("rgb", "thermal", "label"))
        records = [FrameRecord(stem, p["rgb"], p["thermal"], p["label"]) for stem, p in pairs.items()]
        coco_path = os.path.join(root, "annotations", f"{split}.json")
        coco = CocoBoxes(coco_path, class_set) if use_coco and os.path.isfile(coco_path) else None
        super().__init__(records, class_set, coco=coco, thing_ids=thing_ids, min_box_area=min_box_area)


register_dataset("pst900", PST900Dataset, PST900, splits=PST900_SPLITS)
