"""Class lists and display palettes of the supported data sets."""
from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassSet:
    """Semantic classes of one data set.

    ``thing_ids`` are the countable classes for which boxes are derived and detected;
    ``background_id`` is the class that "without background" metrics leave out.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    thing_ids: tuple[int, ...] = field(default_factory=tuple)
    background_id: int | None = 0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"class set {self.name!r}: {len(self.names)} names but {len(self.palette)} colours")
        bad = [i for i in self.thing_ids if not 0 <= i < len(self.names)]
        if bad:
            raise ValueError(f"class set {self.name!r}: thing ids {bad} outside 0..{len(self.names) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def flat_palette(self) -> list[int]:
        """Palette as ``[r0, g0, b0, r1, ...]`` (the layout of rgbt_msgs/ClassList)."""
        return [channel for colour in self.palette for channel in colour]


MFNET = ClassSet(
    name="mfnet",
    names=("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump"),
    palette=(
        (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192),
        (128, 128, 0), (64, 64, 128), (192, 128, 128), (192, 64, 0),
    ),
    thing_ids=(1, 2, 3, 7),
)

PST900 = ClassSet(
    name="pst900",
    names=("background", "fire_extinguisher", "backpack", "hand_drill", "survivor"),
    palette=((0, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)),
    thing_ids=(1, 2, 3, 4),
)

FMB = ClassSet(
    name="fmb",
    names=(
        "background", "Road", "Sidewalk", "Building", "Lamp", "Sign", "Vegetation", "Sky",
        "Person", "Car", "Truck", "Bus", "Motorcycle", "Bicycle", "Pole",
    ),
    palette=(
        (0, 0, 0), (179, 228, 228), (181, 57, 133), (67, 162, 177), (200, 178, 50),
        (132, 45, 199), (66, 172, 84), (179, 73, 79), (76, 99, 166), (66, 121, 253),
        (137, 165, 91), (155, 97, 152), (105, 153, 140), (222, 215, 158), (135, 113, 90),
    ),
    thing_ids=(4, 5, 8, 9, 10, 11, 12, 13, 14),
)

# Synthetic road scenes reuse MFNet's classes so models and tools are interchangeable.
SYNTHETIC = ClassSet(name="synthetic", names=MFNET.names, palette=MFNET.palette, thing_ids=MFNET.thing_ids)

CLASS_SETS: dict[str, ClassSet] = {c.name: c for c in (MFNET, PST900, FMB, SYNTHETIC)}


def get_class_set(name: str) -> ClassSet:
    """Look up a class set by data-set name; the error lists the known names."""
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise KeyError(f"unknown class set {name!r}; known: {', '.join(sorted(CLASS_SETS))}") from None
