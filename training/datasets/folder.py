"""A generic folder layout for one's own recordings::

    root/
      homography.txt            optional: 9 numbers, thermal pixel -> RGB pixel (all splits)
      <split>/                  any name: train, val, test, night_run, ...
        rgb/<stem>.png          8-bit colour (PNG, JPEG, BMP or TIFF)
        thermal/<stem>.png      8- or 16-bit single-channel counts
        labels/<stem>.png       optional folder: class indices, 255 = ignore
        conditions.json         optional: {"<stem>": "day" | "night" | ...}
        homography.txt          optional: overrides the root one for this split
        boxes.json              optional: COCO boxes (categories named like the classes)

Files pair by stem. Without ``labels/`` the samples carry ``label=None`` (label-free
adaptation, inference); without a homography the thermal image must cover the RGB field of
view and is resized onto it.
"""
from __future__ import annotations

import os
from typing import Sequence

from rgbt_perception.core.classes import MFNET, ClassSet, get_class_set
from training.datasets.base import (
    FrameRecord,
    RGBTDataset,
    pair_folders,
    read_conditions_file,
    read_homography,
    require_dir,
)
from training.datasets.boxes import CocoBoxes
from training.datasets.registry import register_dataset


class FolderDataset(RGBTDataset):
    """One split of the generic folder layout; ``class_set`` is a ClassSet or its name."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet | str = "mfnet",
        thing_ids: Sequence[int] | None = None,
        min_box_area: int = 16,
        use_coco: bool = True,
    ) -> None:
        if isinstance(class_set, str):
            class_set = get_class_set(class_set)
        split_dir = require_dir(os.path.join(require_dir(root, "data set root"), split), f"split {split!r}")
        folders = {
            "rgb": require_dir(os.path.join(split_dir, "rgb"), "rgb"),
            "thermal": require_dir(os.path.join(split_dir, "thermal"), "thermal"),
        }
        labels_dir = os.path.join(split_dir, "labels")
        required = ["rgb", "thermal"]
        if os.path.isdir(labels_dir):
            folders["label"] = labels_dir
            required.append("label")
        pairs = pair_folders(folders, required=required)

        homography = None
        for candidate in (os.path.join(split_dir, "homography.txt"), os.path.join(root, "homography.txt")):
            if os.path.isfile(candidate):
                homography = read_homography(candidate)
                break
        conditions_path = os.path.join(split_dir, "conditions.json")
        conditions = read_conditions_file(conditions_path) if os.path.isfile(conditions_path) else {}

        records = [
            FrameRecord(stem, p["rgb"], p["thermal"], p.get("label"), conditions.get(stem), homography)
            for stem, p in pairs.items()
        ]
        coco_path = os.path.join(split_dir, "boxes.json")
        coco = CocoBoxes(coco_path, class_set) if use_coco and os.path.isfile(coco_path) else None
        super().__init__(records, class_set, coco=coco, thing_ids=thing_ids, min_box_area=min_box_area)


register_dataset("folder", FolderDataset, MFNET, splits=None)
