"""Pascal VOC XML annotations, as LLVIP, FLIR-aligned and M3FD ship them.

One file per frame::

    <annotation>
      <filename>010001.jpg</filename>
      <size><width>1280</width><height>1024</height><depth>3</depth></size>
      <object>
        <name>person</name>
        <difficult>0</difficult>            optional; 1 = an ignore region
        <bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox>
      </object>
      ...
    </annotation>

Coordinates are read as they are written, as pixel coordinates of the box corners (the
convention of the releases' own converters), and may be integers or decimals.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Collection

import numpy as np

from rgbt_perception.core.classes import ClassSet
from training.datasets.base import DatasetError
from training.datasets.detection import FrameBoxes, check_boxes_in_image, class_lookup

BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _number(element: ET.Element | None, tag: str, path: str, where: str) -> float:
    child = None if element is None else element.find(tag)
    text = None if child is None or child.text is None else child.text.strip()
    if not text:
        raise DatasetError(f"malformed VOC annotation: {where} has no <{tag}>: {path}")
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"malformed VOC annotation: {where} <{tag}> is {text!r}, not a number: {path}") from None


def read_voc_xml(
    path: str,
    class_set: ClassSet,
    skip_names: Collection[str] = (),
    clip_boxes: bool = False,
) -> FrameBoxes:
    """The boxes of one VOC XML file as class ids of ``class_set``.

    Object names match class names case-insensitively; names in ``skip_names`` are left out;
    ``difficult`` objects become ignore regions. Errors (:class:`DatasetError`) name the file:
    missing file, malformed XML, missing fields, an unknown class, an empty box and a box
    outside the ``<size>`` the file states (unless ``clip_boxes``).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"missing annotation file: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetError(f"malformed XML ({err}): {path}") from None
    if root.tag != "annotation":
        raise DatasetError(f"malformed VOC annotation: root element is <{root.tag}>, not <annotation>: {path}")

    size = None
    size_element = root.find("size")
    if size_element is not None:
        width = _number(size_element, "width", path, "<size>")
        height = _number(size_element, "height", path, "<size>")
        # Some tools write 0 x 0 when they did not know the size; that states nothing.
        if width > 0 and height > 0:
            size = (int(width), int(height))

    lookup = class_lookup(class_set)
    skip = {name.lower().replace(" ", "_") for name in skip_names}
    boxes, labels, ignore = [], [], []
    for index, obj in enumerate(root.findall("object")):
        where = f"object {index}"
        name_element = obj.find("name")
        name = "" if name_element is None or name_element.text is None else name_element.text.strip()
        if not name:
            raise DatasetError(f"malformed VOC annotation: {where} has no <name>: {path}")
        key = name.lower().replace(" ", "_")
        if key in skip:
            continue
        if key not in lookup:
            known = ", ".join(class_set.names[i] for i in sorted(lookup.values()))
            raise DatasetError(f"unknown class {name!r} in {where} (known: {known}): {path}")
        box_element = obj.find("bndbox")
        if box_element is None:
            raise DatasetError(f"malformed VOC annotation: {where} ({name}) has no <bndbox>: {path}")
        box = [_number(box_element, tag, path, f"{where} ({name})") for tag in BOX_TAGS]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DatasetError(f"empty box {box} in {where} ({name}): xmax must exceed xmin and ymax ymin: {path}")
        difficult = obj.find("difficult")
        if difficult is not None and (difficult.text or "0").strip() not in ("0", ""):
            ignore.append(box)
        else:
            boxes.append(box)
            labels.append(lookup[key])

    box_array = np.asarray(boxes, np.float32).reshape(-1, 4)
    label_array = np.asarray(labels, np.int64)
    ignore_array = np.asarray(ignore, np.float32).reshape(-1, 4)
    if size is not None:
        box_array, keep = check_boxes_in_image(box_array, size[0], size[1], path, clip=clip_boxes)
        box_array, label_array = box_array[keep], label_array[keep]
        ignore_array, keep = check_boxes_in_image(ignore_array, size[0], size[1], path, "ignore box", clip=clip_boxes)
        ignore_array = ignore_array[keep]
    return FrameBoxes(source=path, boxes=box_array, labels=label_array, ignore=ignore_array, size=size)


def write_voc_xml(
    path: str,
    filename: str,
    size: tuple[int, int],
    boxes: np.ndarray,
    names: list[str],
    difficult: list[bool] | None = None,
) -> None:
    """Write one VOC XML file (``size`` is ``(width, height)``; ``boxes`` N,4 xyxy px).

    Used to lay synthetic scenes out in the VOC-based layouts; coordinates are written as
    integers when they are whole numbers.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size_element = ET.SubElement(root, "size")
    ET.SubElement(size_element, "width").text = str(int(size[0]))
    ET.SubElement(size_element, "height").text = str(int(size[1]))
    ET.SubElement(size_element, "depth").text = "3"
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(names) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(names)} names")
    for i, (box, name) in enumerate(zip(boxes, names)):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "1" if difficult is not None and difficult[i] else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(BOX_TAGS, box):
            ET.SubElement(bndbox, tag).text = str(int(value)) if float(value).is_integer() else f"{value:.2f}"
    ET.indent(root)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
