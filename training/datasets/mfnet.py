"""MFNet (Ha et al., 2017) and the synthetic scenes of ``rgbt-synth``, which use its layout.

Official layout::

    root/images/<stem>.png     4 channels: R, G, B + 8-bit thermal (OpenCV reads B, G, R, T)
    root/labels/<stem>.png     class indices 0..8
    root/{train,val,test}.txt  stems, one per line

Split variant: ``root/rgb/``, ``root/ther/``, ``root/labels/`` plus the same split files.
Stems end in ``D`` (day) or ``N`` (night); ``conditions.json`` ({stem: condition}), when present,
overrides that. ``rgbt-synth`` adds ``thermal16/<stem>.png`` (16-bit counts at the thermal
camera's own resolution) and ``homography.txt`` (thermal->RGB); by default the loader returns
those instead of the 8-bit registered channel.
"""
from __future__ import annotations

import os
from typing import Sequence

from rgbt_perception.core.classes import MFNET, ClassSet
from training.datasets.base import (
    DatasetError,
    FrameRecord,
    RGBTDataset,
    find_image,
    read_conditions_file,
    read_homography,
    read_split_file,
    require_dir,
)
from training.datasets.boxes import CocoBoxes
from training.datasets.registry import register_dataset

MFNET_SPLITS = ("train", "val", "test", "trainval")
SUFFIX_CONDITIONS = {"D": "day", "N": "night"}


def condition_from_stem(stem: str) -> str | None:
    """MFNet's day/night flag: the last character of the stem."""
    return SUFFIX_CONDITIONS.get(stem[-1:].upper())


class MFNetDataset(RGBTDataset):
    """MFNet in the official 4-channel layout or the rgb/ther split variant.

    ``thermal16``: ``"auto"`` (prefer ``thermal16/`` + ``homography.txt`` when both exist),
    ``True`` (require them) or ``False`` (always the 8-bit registered thermal).
    ``split="trainval"`` joins train.txt and val.txt. Boxes come from
    ``annotations/<split>.json`` (both files for trainval) when present, else from the label's
    thing classes.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = MFNET,
        thermal16: bool | str = "auto",
        thing_ids: Sequence[int] | None = None,
        min_box_area: int = 16,
        use_coco: bool = True,
    ) -> None:
        if split not in MFNET_SPLITS:
            raise ValueError(f"MFNet split must be one of {', '.join(MFNET_SPLITS)}, got {split!r}")
        if thermal16 not in ("auto", True, False):
            raise ValueError(f"thermal16 must be 'auto', True or False, got {thermal16!r}")
        require_dir(root, "MFNet root")
        self.root = root
        self.split = split
        stems = self._split_stems(root, split)

        images_dir = os.path.join(root, "images")
        split_variant = not os.path.isdir(images_dir)
        if split_variant:
            if not os.path.isdir(os.path.join(root, "rgb")):
                raise DatasetError(f"missing images folder: {images_dir} (nor the split variant's rgb/ and ther/)")
            rgb_dir = os.path.join(root, "rgb")
            thermal_dir = require_dir(os.path.join(root, "ther"), "MFNet thermal")
        else:
            rgb_dir = thermal_dir = images_dir
        labels_dir = require_dir(os.path.join(root, "labels"), "MFNet labels")

        thermal16_dir = os.path.join(root, "thermal16")
        homography_path = os.path.join(root, "homography.txt")
        has_thermal16 = os.path.isdir(thermal16_dir) and os.path.isfile(homography_path)
        if thermal16 is True and not has_thermal16:
            missing = thermal16_dir if not os.path.isdir(thermal16_dir) else homography_path
            raise DatasetError(f"thermal16=True but {missing} does not exist")
        self.uses_thermal16 = has_thermal16 and thermal16 in ("auto", True)
        homography = read_homography(homography_path) if self.uses_thermal16 else None

        conditions_path = os.path.join(root, "conditions.json")
        conditions = read_conditions_file(conditions_path) if os.path.isfile(conditions_path) else {}

        records = []
        for stem in stems:
            rgb_path = find_image(rgb_dir, stem)
            if self.uses_thermal16:
                thermal_path, channel = find_image(thermal16_dir, stem), None
            elif split_variant:
                thermal_path, channel = find_image(thermal_dir, stem), None
            else:
                thermal_path, channel = rgb_path, 3
            records.append(
                FrameRecord(
                    name=stem,
                    rgb_path=rgb_path,
                    thermal_path=thermal_path,
                    label_path=find_image(labels_dir, stem),
                    condition=conditions.get(stem, condition_from_stem(stem)),
                    homography=homography,
                    thermal_channel=channel,
                )
            )
        coco_splits = ("train", "val") if split == "trainval" else (split,)
        coco_paths = [os.path.join(root, "annotations", f"{s}.json") for s in coco_splits]
        has_coco = use_coco and all(os.path.isfile(p) for p in coco_paths)
        coco = CocoBoxes(coco_paths, class_set) if has_coco else None
        super().__init__(records, class_set, coco=coco, thing_ids=thing_ids, min_box_area=min_box_area)

    @staticmethod
    def _split_stems(root: str, split: str) -> list[str]:
        if split == "trainval":
            return read_split_file(os.path.join(root, "train.txt")) + read_split_file(os.path.join(root, "val.txt"))
        return read_split_file(os.path.join(root, f"{split}.txt"))


register_dataset("mfnet", MFNetDataset, MFNET, splits=MFNET_SPLITS)
