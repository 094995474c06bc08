"""Detector targets: boxes from COCO files or from connected components of label masks."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from rgbt_perception.core.boxes import boxes_from_label, empty_boxes  # noqa: F401  (part of this module's API)
from rgbt_perception.core.classes import ClassSet


class CocoBoxes:
    """Boxes of one or more COCO detection files, looked up by frame stem.

    Categories map to class ids by name (case-insensitive, spaces and underscores alike);
    a category with no class of that name is an error naming it. Crowd annotations are skipped.
    """

    def __init__(self, path: str | Sequence[str], class_set: ClassSet) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        self.path = paths[0] if len(paths) == 1 else paths
        self._frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for one in paths:
            self._frames.update(self._read(one, class_set))

    @staticmethod
    def _read(path: str, class_set: ClassSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"unreadable COCO file {path}: {err}") from None
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise ValueError(f"COCO file needs 'images', 'annotations' and 'categories': {path}")

        def key(name: str) -> str:
            return name.lower().replace(" ", "_")

        class_ids = {key(name): i for i, name in enumerate(class_set.names)}
        category_to_class: dict[int, int] = {}
        for category in data["categories"]:
            class_id = class_ids.get(key(str(category.get("name", ""))))
            if class_id is None:
                raise ValueError(
                    f"COCO category {category.get('name')!r} (id {category.get('id')}) is not a "
                    f"{class_set.name} class: {path}"
                )
            category_to_class[int(category["id"])] = class_id
        stems = {int(image["id"]): os.path.splitext(os.path.basename(str(image["file_name"])))[0]
                 for image in data["images"]}

        per_frame: dict[str, tuple[list, list]] = {stem: ([], []) for stem in stems.values()}
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            image_id = int(ann["image_id"])
            if image_id not in stems:
                raise ValueError(f"COCO annotation {ann.get('id')} refers to unknown image id {image_id}: {path}")
            if int(ann["category_id"]) not in category_to_class:
                raise ValueError(f"COCO annotation {ann.get('id')} has unknown category {ann['category_id']}: {path}")
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes, labels = per_frame[stems[image_id]]
            boxes.append((x, y, x + w, y + h))
            labels.append(category_to_class[int(ann["category_id"])])
        return {
            stem: (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
            for stem, (boxes, labels) in per_frame.items()
        }

    def __contains__(self, name: str) -> bool:
        return name in self._frames

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes N,4 float32 xyxy px, labels N int64)`` of a frame; none when it is not listed."""
        boxes, labels = self._frames.get(name, empty_boxes())
        return boxes.copy(), labels.copy()
