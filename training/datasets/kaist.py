"""KAIST multispectral pedestrians (Hwang et al., CVPR 2015)::

    root/images/setXX/V00Y/visible/I<5 digits>.jpg    RGB, 640x512
    root/images/setXX/V00Y/lwir/I<5 digits>.jpg       thermal (8-bit), aligned to RGB
    root/annotations/setXX/V00Y/I<5 digits>.txt       Piotr's toolbox text annotation
    root/imageSets/<list>.txt                         optional frame lists (the cleaned subsets)

Sets 00-05 are the train split, 06-11 the test split; sets 00-02 and 06-08 are day, the others
night. An annotation file is ``% bbGt version=3`` and then one object per line::

    label x y w h occ vx vy vw vh ign ang

(``x y w h`` the box in pixels, ``occ`` 0 none / 1 partial / 2 heavy occlusion, ``v*`` the visible
part, ``ign`` the annotator's ignore flag, ``ang`` unused; versions 0-2 have 10 or 11 fields).
``person`` boxes are the targets; ``people``, ``person?`` and ``cyclist`` (and ``person`` with
``ign`` 1) are ignore regions, as in the toolbox's evaluation; ``person?a`` and ``unpaired`` (in
the paired re-annotations) are dropped, as the toolbox drops labels it was not asked for.

Frame lists (``image_set``): lines ``setXX/V00Y/I00000`` (or ``setXX_V00Y_I00000``). The common
cleaned subsets are ``train-all-02.txt`` (every 2nd train frame, with the sanitised annotations)
and ``test-all-20.txt`` (every 20th test frame, 2,252 frames, scored with the improved test
annotations); ``image_set=None`` uses those when ``imageSets/`` holds them and
every frame of the split otherwise. ``annotations`` names the annotation folder, e.g. the
cleaned ``annotations_sanitized`` or ``annotations_improved`` copies in the same layout (also
flat: ``<folder>/setXX_V00Y_I00000.txt``).
"""
from __future__ import annotations

import os
import re

import numpy as np

from rgbt_perception.core.classes import KAIST, ClassSet
from training.datasets.base import DatasetError, FrameRecord, require_dir
from training.datasets.detection import BoxOnlyDataset, FrameBoxes
from training.datasets.registry import register_dataset

KAIST_SPLITS = {"train": tuple(range(0, 6)), "test": tuple(range(6, 12))}
DAY_SETS = frozenset({0, 1, 2, 6, 7, 8})
DEFAULT_IMAGE_SETS = {"train": "train-all-02.txt", "test": "test-all-20.txt"}
TARGET_LABELS = ("person",)
IGNORE_LABELS = ("people", "person?", "cyclist")
DROPPED_LABELS = ("person?a", "unpaired")
FIELDS_BY_VERSION = {0: 10, 1: 10, 2: 11, 3: 12}
_FRAME = re.compile(r"^set(\d{2})[/_\\]V(\d{3})[/_\\](?:visible[/_\\]|lwir[/_\\])?I(\d{5})(?:\.\w+)?$")


def kaist_condition(set_index: int) -> str:
    return "day" if set_index in DAY_SETS else "night"


def parse_frame(entry: str) -> tuple[int, int, int]:
    """``set06/V001/I00019`` (or ``set06_V001_I00019``, optionally with an extension) -> (6, 1, 19)."""
    match = _FRAME.match(entry.strip())
    if match is None:
        raise ValueError(f"not a KAIST frame (expected setXX/V00Y/I00000): {entry.strip()!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def frame_name(set_index: int, video: int, image: int) -> str:
    return f"set{set_index:02d}_V{video:03d}_I{image:05d}"


def read_bbgt(path: str, class_set: ClassSet = KAIST) -> FrameBoxes:
    """The boxes of one toolbox annotation file (see the module docstring).

    ``person`` maps to the class set's ``person`` id; ``occlusion`` holds each box's ``occ``.
    Errors name the file and line: unknown version, wrong field count, non-numbers, unknown
    labels, non-positive sizes.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"missing annotation file: {path}")
    person = class_set.names.index("person") if "person" in class_set.names else None
    if person is None:
        raise ValueError(f"class set {class_set.name} has no 'person' class")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    version = 0
    body = lines
    if lines and lines[0].startswith("%"):
        match = re.match(r"^%\s*bbGt\s+version\s*=\s*(\d+)\s*$", lines[0])
        if match is None:
            raise DatasetError(f"line 1 {lines[0]!r} is not a '% bbGt version=N' header: {path}")
        version = int(match.group(1))
        if version not in FIELDS_BY_VERSION:
            raise DatasetError(f"unknown bbGt version {version} (known 0-3): {path}")
        body = lines[1:]
    fields = FIELDS_BY_VERSION[version]
    boxes, occlusion, ignore = [], [], []
    first_line = len(lines) - len(body) + 1
    for number, line in enumerate(body, start=first_line):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            raise DatasetError(
                f"line {number} has {len(parts)} fields, bbGt version {version} has {fields} "
                f"(label x y w h occ vx vy vw vh{' ign' if fields > 10 else ''}{' ang' if fields > 11 else ''}): {path}"
            )
        label = parts[0]
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise DatasetError(f"line {number} holds a value that is not a number: {line.strip()!r}: {path}") from None
        x, y, w, h, occ = values[:5]
        if label in DROPPED_LABELS:
            continue
        if label not in TARGET_LABELS + IGNORE_LABELS:
            known = ", ".join(TARGET_LABELS + IGNORE_LABELS + DROPPED_LABELS)
            raise DatasetError(f"line {number}: unknown label {label!r} (known: {known}): {path}")
        if w <= 0 or h <= 0:
            raise DatasetError(f"line {number}: box width and height must be positive, got {w:g}x{h:g}: {path}")
        flagged = fields > 10 and values[9] != 0
        box = (x, y, x + w, y + h)
        if label in IGNORE_LABELS or flagged:
            ignore.append(box)
        else:
            if occ not in (0, 1, 2):
                raise DatasetError(f"line {number}: occlusion must be 0, 1 or 2, got {occ:g}: {path}")
            boxes.append(box)
            occlusion.append(int(occ))
    return FrameBoxes(
        source=path,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.full(len(boxes), person, np.int64),
        ignore=np.asarray(ignore, np.float32).reshape(-1, 4),
        occlusion=np.asarray(occlusion, np.int64),
    )


def _annotation_path(folder: str, set_index: int, video: int, image: int) -> str:
    nested = os.path.join(folder, f"set{set_index:02d}", f"V{video:03d}", f"I{image:05d}.txt")
    if os.path.isfile(nested):
        return nested
    flat = os.path.join(folder, frame_name(set_index, video, image) + ".txt")
    return flat if os.path.isfile(flat) else nested


class KAISTDataset(BoxOnlyDataset):
    """KAIST's train (sets 00-05) or test (06-11) split (box-only: ``label`` is None).

    ``image_set``: a list name under ``imageSets/`` or a path; ``None`` picks the cleaned list
    of the split when present (see the module docstring), ``"all"`` every frame.
    ``annotations``: the annotation folder under ``root`` (or a path).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = KAIST,
        image_set: str | None = None,
        annotations: str = "annotations",
        clip_boxes: bool = False,
    ) -> None:
        if split not in KAIST_SPLITS:
            raise ValueError(f"KAIST split must be one of {', '.join(KAIST_SPLITS)}, got {split!r}")
        require_dir(root, "KAIST root")
        images_dir = require_dir(os.path.join(root, "images"), "KAIST images")
        annotations_dir = require_dir(
            annotations if os.path.isabs(annotations) else os.path.join(root, annotations), "KAIST annotations")
        sets = KAIST_SPLITS[split]
        list_path = self._image_set_path(root, split, image_set)
        if list_path is not None:
            frames = self._read_list(list_path, sets, split)
        else:
            frames = self._walk(images_dir, sets)
        if not frames:
            raise DatasetError(f"no KAIST frames of sets {sets[0]:02d}-{sets[-1]:02d} under {images_dir}")
        records, boxes = [], {}
        for set_index, video, image in frames:
            name = frame_name(set_index, video, image)
            folder = os.path.join(images_dir, f"set{set_index:02d}", f"V{video:03d}")
            rgb = os.path.join(folder, "visible", f"I{image:05d}.jpg")
            thermal = os.path.join(folder, "lwir", f"I{image:05d}.jpg")
            if not os.path.isfile(rgb):
                raise DatasetError(f"missing visible image {rgb} (frame {name})")
            if not os.path.isfile(thermal):
                raise DatasetError(f"missing lwir partner image {thermal} for {rgb}")
            boxes[name] = read_bbgt(_annotation_path(annotations_dir, set_index, video, image), class_set)
            records.append(FrameRecord(name, rgb, thermal, condition=kaist_condition(set_index)))
        self.root = root
        self.split = split
        self.image_set = list_path
        super().__init__(records, class_set, boxes, clip_boxes=clip_boxes)

    @staticmethod
    def _image_set_path(root: str, split: str, image_set: str | None) -> str | None:
        if image_set == "all":
            return None
        if image_set is None:
            default = os.path.join(root, "imageSets", DEFAULT_IMAGE_SETS[split])
            return default if os.path.isfile(default) else None
        candidates = [image_set, os.path.join(root, "imageSets", image_set),
                      os.path.join(root, "imageSets", image_set + ".txt")]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        raise DatasetError(f"KAIST image set {image_set!r} not found (looked for {', '.join(candidates[1:])})")

    @staticmethod
    def _read_list(path: str, sets: tuple[int, ...], split: str) -> list[tuple[int, int, int]]:
        frames = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    frame = parse_frame(line)
                except ValueError as err:
                    raise DatasetError(f"line {number}: {err}: {path}") from None
                if frame[0] not in sets:
                    raise DatasetError(
                        f"line {number}: set{frame[0]:02d} is not in the {split} split "
                        f"(sets {sets[0]:02d}-{sets[-1]:02d}): {path}")
                frames.append(frame)
        if not frames:
            raise DatasetError(f"image set lists no frames: {path}")
        return frames

    @staticmethod
    def _walk(images_dir: str, sets: tuple[int, ...]) -> list[tuple[int, int, int]]:
        frames = []
        for set_index in sets:
            set_dir = os.path.join(images_dir, f"set{set_index:02d}")
            if not os.path.isdir(set_dir):
                continue
            for video_name in sorted(os.listdir(set_dir)):
                match = re.fullmatch(r"V(\d{3})", video_name)
                visible = os.path.join(set_dir, video_name, "visible")
                if match is None or not os.path.isdir(visible):
                    continue
                names = {e for e in os.listdir(visible) if re.fullmatch(r"I\d{5}\.jpg", e)}
                lwir = os.path.join(set_dir, video_name, "lwir")
                orphans = sorted({e for e in os.listdir(lwir) if re.fullmatch(r"I\d{5}\.jpg", e)} - names
                                 if os.path.isdir(lwir) else ())
                if orphans:
                    raise DatasetError(f"lwir image {os.path.join(lwir, orphans[0])} has no visible partner "
                                       f"{os.path.join(visible, orphans[0])}")
                frames.extend((set_index, int(match.group(1)), int(e[1:6])) for e in sorted(names))
        return frames


register_dataset("kaist", KAISTDataset, KAIST, splits=tuple(KAIST_SPLITS))
