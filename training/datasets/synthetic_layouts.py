"""Synthetic scenes of ``training.synth`` written in the layouts of the box-only detection sets.

``write_detection_scenes(out, layout, ...)`` renders road scenes (people, cars, bikes, cones,
... of ``rgbt-synth``) and writes them as the release of ``layout`` ships, with the boxes of the
classes that release annotates:

==============  ==========================================================  =====================
layout          files                                                        boxes
==============  ==========================================================  =====================
``llvip``       ``{visible,infrared}/{train,test}/<id>.jpg``, ``Annotations``  person
``flir_aligned`` ``JPEGImages/FLIR_<n>_{RGB.jpg,PreviewData.jpeg}``,          person, car, bicycle
                ``Annotations/FLIR_<n>_PreviewData.xml``, ``align_*.txt``
``m3fd``        ``{Vis,Ir}/<n>.png``, ``Annotation/<n>.xml``, ``meta/*.txt``    People, Car
``kaist``       ``images/setXX/V000/{visible,lwir}/I<n>.jpg``,                 person (occlusion 0)
                ``annotations/setXX/V000/I<n>.txt`` (bbGt v3)
==============  ==========================================================  =====================

The thermal image is the 8-bit automatic-gain image registered onto RGB (all four releases
ship registered pairs). The two splits are ``train`` and the release's evaluation split
(``test``, or ``val`` for FLIR-aligned and M3FD). Scenes are rendered under ``condition``
(night by default); KAIST frames alternate day (sets 00 and 06) and night (sets 03 and 09) as
KAIST's sets do. The same arguments give the same files. It exists to exercise the loaders,
box-only training and the fused vs single-camera comparison without the real data.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from training.datasets.voc import write_voc_xml
from training.synth.scenes import BIKE, CAR, PERSON, SynthConfig, SynthFrame, make_rig, render_frame

DETECTION_LAYOUTS = ("llvip", "flir_aligned", "m3fd", "kaist")
# Synthetic class id -> the release's class name.
LAYOUT_CLASSES = {
    "llvip": {PERSON: "person"},
    "flir_aligned": {PERSON: "person", CAR: "car", BIKE: "bicycle"},
    "m3fd": {PERSON: "People", CAR: "Car"},
    "kaist": {PERSON: "person"},
}
EVAL_SPLIT = {"llvip": "test", "flir_aligned": "val", "m3fd": "val", "kaist": "test"}
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95]


def _write(path: str, image: np.ndarray, params: list[int] | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, image, params or []):
        raise OSError(f"could not write {path}")


def _write_list(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _kaist_frame(split: str, index: int) -> tuple[int, str, str]:
    """KAIST set, condition and image name of frame ``index`` of ``split`` (day and night sets alternate)."""
    day, night = (0, 3) if split == "train" else (6, 9)
    night_frame = index % 2 == 1
    return (night if night_frame else day), ("night" if night_frame else "day"), f"I{index:05d}"


def _save(out: str, layout: str, split: str, index: int, frame: SynthFrame, boxes: np.ndarray,
          names: list[str]) -> str:
    """Write one frame in ``layout``; returns its frame name as the loader reports it."""
    height, width = frame.rgb.shape[:2]
    bgr = frame.rgb[:, :, ::-1]
    if layout == "llvip":
        ident = f"{(10001 if split == 'train' else 190001) + index:06d}"
        _write(f"{out}/visible/{split}/{ident}.jpg", bgr, JPEG)
        _write(f"{out}/infrared/{split}/{ident}.jpg", frame.thermal8, JPEG)
        write_voc_xml(f"{out}/Annotations/{ident}.xml", f"{ident}.jpg", (width, height), boxes, names)
        return ident
    if layout == "flir_aligned":
        ident = f"FLIR_{(1 if split == 'train' else 8863) + index:05d}"
        _write(f"{out}/JPEGImages/{ident}_RGB.jpg", bgr, JPEG)
        _write(f"{out}/JPEGImages/{ident}_PreviewData.jpeg", frame.thermal8, JPEG)
        write_voc_xml(f"{out}/Annotations/{ident}_PreviewData.xml", f"{ident}_PreviewData.jpeg", (width, height),
                      boxes, names)
        return ident
    if layout == "m3fd":
        ident = f"{index if split == 'train' else 3000 + index:05d}"
        _write(f"{out}/Vis/{ident}.png", bgr)
        _write(f"{out}/Ir/{ident}.png", frame.thermal8)
        write_voc_xml(f"{out}/Annotation/{ident}.xml", f"{ident}.png", (width, height), boxes, names)
        return ident
    set_index, _, image = _kaist_frame(split, index)
    folder = f"set{set_index:02d}/V000"
    _write(f"{out}/images/{folder}/visible/{image}.jpg", bgr, JPEG)
    _write(f"{out}/images/{folder}/lwir/{image}.jpg", np.repeat(frame.thermal8[:, :, None], 3, axis=2), JPEG)
    os.makedirs(f"{out}/annotations/{folder}", exist_ok=True)
    lines = ["% bbGt version=3"]
    for (x0, y0, x1, y1), name in zip(np.asarray(boxes).tolist(), names):
        lines.append(f"{name} {x0:g} {y0:g} {x1 - x0:g} {y1 - y0:g} 0 0 0 0 0 0 0")
    _write_list(f"{out}/annotations/{folder}/{image}.txt", lines)
    return f"set{set_index:02d}_V000_{image}"


def write_detection_scenes(
    out: str,
    layout: str,
    num_train: int,
    num_eval: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    condition: str = "night",
    min_box_area: int = 24,
) -> dict[str, list[str]]:
    """Render ``num_train`` + ``num_eval`` scenes of ``size`` ``(H, W)`` into ``out`` in ``layout``.

    Returns ``{split: [frame names]}``. Frame ``i`` of a split is drawn from ``(seed, split, i)``,
    so it does not depend on the size of the other split.
    """
    if layout not in DETECTION_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(DETECTION_LAYOUTS)}, got {layout!r}")
    if num_train < 0 or num_eval < 0 or num_train + num_eval == 0:
        raise ValueError(f"need a positive number of frames, got train={num_train} eval={num_eval}")
    height, width = size
    cfg = SynthConfig(size=(height, width), thermal_size=(max(32, height // 2), max(32, width // 2)),
                      min_box_area=min_box_area)
    rig = make_rig(seed, cfg)
    classes = LAYOUT_CLASSES[layout]
    written: dict[str, list[str]] = {}
    for split_index, (split, count) in enumerate((("train", num_train), (EVAL_SPLIT[layout], num_eval))):
        names = []
        for i in range(count):
            frame_condition = _kaist_frame(split, i)[1] if layout == "kaist" else condition
            frame = render_frame(np.random.default_rng([seed, split_index, i]), cfg, rig, condition=frame_condition)
            keep = np.isin(frame.box_labels, list(classes))
            box_names = [classes[int(c)] for c in frame.box_labels[keep]]
            names.append(_save(out, layout, split, i, frame, frame.boxes[keep], box_names))
        written[split] = names
    if layout == "flir_aligned":
        for split, file in (("train", "align_train.txt"), ("val", "align_validation.txt")):
            _write_list(f"{out}/{file}", [f"{n}_PreviewData" for n in written.get(split, [])])
    if layout == "m3fd":
        os.makedirs(f"{out}/meta", exist_ok=True)
        for split in ("train", "val"):
            _write_list(f"{out}/meta/{split}.txt", written.get(split, []))
    return written


def write_llvip_scenes(out: str, num_train: int, num_test: int, seed: int = 0, size: tuple[int, int] = (256, 320),
                       condition: str = "night", min_box_area: int = 24) -> dict[str, list[str]]:
    """:func:`write_detection_scenes` in the LLVIP layout."""
    return write_detection_scenes(out, "llvip", num_train, num_test, seed, size, condition, min_box_area)
