"""Ground truth of a recording: label images and boxes looked up by the RGB frame's stamp."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbt_perception.core.boxes import boxes_from_label
from rgbt_perception.core.classes import CLASS_SETS
from rgbt_perception.evaluation.report import BoxSet


@dataclass
class GroundTruth:
    """Labels and boxes of the bag, looked up by RGB stamp."""

    labels: dict[int, np.ndarray]
    boxes: dict[int, BoxSet]
    thing_ids: tuple[int, ...] | None

    def take(self, stamp_ns: int) -> tuple[np.ndarray | None, BoxSet | None]:
        label = self.labels.pop(stamp_ns, None)
        boxes = self.boxes.pop(stamp_ns, None)
        if label is not None and boxes is None and self.thing_ids is not None:
            derived, classes = boxes_from_label(label, self.thing_ids)
            boxes = BoxSet(derived, classes)
        return label, boxes

    def forget_before(self, stamp_ns: int) -> None:
        """Drop labels of RGB frames that can no longer be paired (keeps memory bounded)."""
        for table in (self.labels, self.boxes):
            for stamp in [s for s in table if s < stamp_ns]:
                del table[stamp]


def thing_ids_for(class_names: list[str]) -> tuple[int, ...] | None:
    """Thing classes of the class set whose names the weights carry (for boxes from labels)."""
    for class_set in CLASS_SETS.values():
        if list(class_set.names) == list(class_names):
            return tuple(class_set.thing_ids)
    return None


