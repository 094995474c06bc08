"""Class lists and display palettes of the supported data sets."""
from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassSet:
    """Semantic classes of one data set.

    ``thing_ids`` are the countable classes for which boxes are derived and detected;
    ``background_id`` is the class that "without background" metrics leave out.

    ``has_masks`` is False for the box-only detection sets (LLVIP, FLIR-aligned, M3FD, KAIST).
    Their class lists keep the layout of the mask sets so one network, weights file and node
    serve both: id 0 is ``background`` (black in the palette, never a box), the object
    categories follow as ids 1..K and are all thing classes, so ``num_classes`` is K + 1, a
    box's class id is the semantic channel of its category and the box head's channel 0 is
    never a positive target. Samples of these sets carry no mask (``label`` None) and train
    the box head only; the semantic head of a model trained on them alone stays untrained.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    thing_ids: tuple[int, ...] = field(default_factory=tuple)
    background_id: int | None = 0
    has_masks: bool = True

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"class set {self.name!r}: {len(self.names)} names but {len(self.palette)} colours")
        bad = [i for i in self.thing_ids if not 0 <= i < len(self.names)]
        if bad:
            raise ValueError(f"class set {self.name!r}: thing ids {bad} outside 0..{len(self.names) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.names)


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


def box_class_set(name: str, categories: tuple[str, ...], colours: tuple[tuple[int, int, int], ...]) -> ClassSet:
    """A box-only class set: ``background`` at id 0, then ``categories`` as thing classes 1..K."""
    return ClassSet(
        name=name,
        names=("background",) + tuple(categories),
        palette=((0, 0, 0),) + tuple(colours),
        thing_ids=tuple(range(1, len(categories) + 1)),
        background_id=0,
        has_masks=False,
    )


# Box-only RGB-T detection sets; category names as their annotation files spell them.
LLVIP = box_class_set("llvip", ("person",), ((220, 20, 60),))
FLIR_ALIGNED = box_class_set("flir_aligned", ("person", "car", "bicycle"), ((220, 20, 60), (0, 0, 142), (119, 11, 32)))
M3FD = box_class_set(
    "m3fd",
    ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck"),
    ((220, 20, 60), (0, 0, 142), (0, 60, 100), (0, 0, 230), (250, 170, 30), (0, 0, 70)),
)
KAIST = box_class_set("kaist", ("person",), ((220, 20, 60),))

CLASS_SETS: dict[str, ClassSet] = {
    c.name: c for c in (MFNET, PST900, FMB, SYNTHETIC, LLVIP, FLIR_ALIGNED, M3FD, KAIST)
}


def get_class_set(name: str) -> ClassSet:
    """Look up a class set by data-set name; the error lists the known names."""
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise KeyError(f"unknown class set {name!r}; known: {', '.join(sorted(CLASS_SETS))}") from None
