"""LLVIP, FLIR-aligned and M3FD loaders on tiny test-made folders in their published layouts."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from rgbt_perception.core.classes import FLIR_ALIGNED, LLVIP, M3FD
from training.datasets import (
    DATASET_KINDS,
    DatasetError,
    FLIRAlignedDataset,
    LLVIPDataset,
    M3FDDataset,
    PairTransform,
    build_dataset,
    collate,
)
from training.datasets.voc import read_voc_xml, write_voc_xml

H, W = 24, 32


def image(seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, channels) if channels > 1 else (H, W), dtype=np.uint8)


def write(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array)
    return path


def xml(path: str, objects: list[tuple[str, tuple[float, ...]]], size: tuple[int, int] = (W, H),
        difficult: list[bool] | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_voc_xml(path, os.path.basename(path), size, np.asarray([b for _, b in objects], np.float64).reshape(-1, 4),
                  [n for n, _ in objects], difficult)
    return path


# ----------------------------------------------------------------------------- LLVIP

LLVIP_FRAMES = {
    "train": {"010001": [("person", (1, 2, 10, 20))],
              "010002": [("person", (3, 4, 8, 9)), ("person", (20, 1, 31, 23))]},
    "test": {"190001": [], "190002": [("Person", (0, 0, 32, 24))]},
}


def make_llvip(root: str) -> str:
    for split, frames in LLVIP_FRAMES.items():
        for i, (ident, objects) in enumerate(frames.items()):
            write(f"{root}/visible/{split}/{ident}.jpg", image(i))
            write(f"{root}/infrared/{split}/{ident}.jpg", image(i + 10, 1))
            xml(f"{root}/Annotations/{ident}.xml", objects)
    return root


def test_llvip_reads_boxes_classes_and_splits(tmp_path):
    root = make_llvip(str(tmp_path / "LLVIP"))
    assert "llvip" in DATASET_KINDS
    for split, frames in LLVIP_FRAMES.items():
        ds = build_dataset("llvip", root, split)
        assert isinstance(ds, LLVIPDataset) and ds.class_set is LLVIP
        assert ds.names == sorted(frames)
        for i, ident in enumerate(sorted(frames)):
            sample = ds[i]
            assert sample["label"] is None and sample["name"] == ident
            assert sample["rgb"].shape == (H, W, 3) and sample["thermal"].shape == (H, W)
            expected = np.asarray([b for _, b in frames[ident]], np.float32).reshape(-1, 4)
            np.testing.assert_array_equal(sample["boxes"], expected)
            np.testing.assert_array_equal(sample["box_labels"], np.ones(len(expected), np.int64))
            assert sample["ignore_boxes"].shape == (0, 4) and sample["box_occlusion"] is None
    assert LLVIP.names == ("background", "person") and LLVIP.thing_ids == (1,) and not LLVIP.has_masks
    assert LLVIP.num_classes == 2 and LLVIP.palette[0] == (0, 0, 0)


def test_llvip_samples_train_without_mask(tmp_path):
    ds = build_dataset("llvip", make_llvip(str(tmp_path / "LLVIP")), "train")
    transform = PairTransform((16, 32), augment=None)
    batch = collate([transform(ds[0]), transform(ds[1])])
    assert batch["has_mask"].tolist() == [False, False]
    assert bool((batch["label"] == 255).all())
    # Boxes follow the resize: x * 32/32, y * 16/24.
    np.testing.assert_allclose(batch["boxes"][0].numpy(), [[1, 2 * 16 / 24, 10, 20 * 16 / 24]], rtol=1e-6)


def test_llvip_errors_name_the_file(tmp_path):
    root = make_llvip(str(tmp_path / "LLVIP"))
    os.remove(f"{root}/infrared/train/010002.jpg")
    with pytest.raises(DatasetError, match=r"visible/train/010002\.jpg.*no thermal"):
        build_dataset("llvip", root, "train")

    root = make_llvip(str(tmp_path / "LLVIP2"))
    os.remove(f"{root}/Annotations/010001.xml")
    with pytest.raises(DatasetError, match=r"missing annotation file: .*Annotations/010001\.xml"):
        build_dataset("llvip", root, "train")

    root = make_llvip(str(tmp_path / "LLVIP3"))
    with open(f"{root}/Annotations/010002.xml", "w") as f:
        f.write("<annotation><object><name>person</name><bndbox><xmin>1</xmin></object>")
    with pytest.raises(DatasetError, match=r"malformed XML .*Annotations/010002\.xml"):
        build_dataset("llvip", root, "train")

    root = make_llvip(str(tmp_path / "LLVIP4"))
    xml(f"{root}/Annotations/010001.xml", [("person", (1, 2, 33, 20))])
    with pytest.raises(DatasetError, match=r"box 0 \[1, 2, 33, 20\] lies outside the 32x24 image: .*010001\.xml"):
        build_dataset("llvip", root, "train")
    clipped = build_dataset("llvip", root, "train", clip_boxes=True)
    np.testing.assert_array_equal(clipped[0]["boxes"], [[1, 2, 32, 20]])

    with pytest.raises(ValueError, match="LLVIP split must be one of train, test"):
        build_dataset("llvip", root, "val")


def test_box_checked_against_the_real_image_size(tmp_path):
    """A file that claims no size is checked when the frame is read; a wrong claimed size is an error."""
    root = make_llvip(str(tmp_path / "LLVIP"))
    with open(f"{root}/Annotations/010001.xml", "w") as f:
        f.write("<annotation><object><name>person</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
                "<xmax>40</xmax><ymax>10</ymax></bndbox></object></annotation>")
    ds = build_dataset("llvip", root, "train")
    with pytest.raises(DatasetError, match=r"outside the 32x24 image: .*010001\.xml"):
        ds[0]
    xml(f"{root}/Annotations/010001.xml", [("person", (1, 1, 5, 5))], size=(64, 48))
    with pytest.raises(DatasetError, match=r"states an image size of 64x48 but the RGB image is 32x24: .*010001\.xml"):
        build_dataset("llvip", root, "train")[0]


@pytest.mark.parametrize(
    "body, message",
    [
        ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox>"
         "</object></annotation>", r"object 0 has no <name>"),
        ("<annotation><object><name>person</name></object></annotation>", r"object 0 \(person\) has no <bndbox>"),
        ("<annotation><object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox>"
         "</object></annotation>", r"has no <ymax>"),
        ("<annotation><object><name>person</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>4</xmax>"
         "<ymax>4</ymax></bndbox></object></annotation>", r"<xmin> is 'a', not a number"),
        ("<annotation><object><name>person</name><bndbox><xmin>4</xmin><ymin>1</ymin><xmax>4</xmax>"
         "<ymax>4</ymax></bndbox></object></annotation>", r"empty box"),
        ("<annotation><object><name>horse</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>"
         "<ymax>4</ymax></bndbox></object></annotation>", r"unknown class 'horse' in object 0 \(known: person\)"),
        ("<voc></voc>", r"root element is <voc>"),
    ],
)
def test_voc_reader_errors(tmp_path, body, message):
    path = tmp_path / "frame.xml"
    path.write_text(body)
    with pytest.raises(DatasetError, match=message + r".*frame\.xml"):
        read_voc_xml(str(path), LLVIP)


def test_voc_difficult_objects_are_ignore_regions(tmp_path):
    path = xml(str(tmp_path / "a.xml"), [("car", (1, 1, 5, 6)), ("person", (2, 2, 9, 9)), ("bicycle", (0, 0, 3, 3))],
               difficult=[False, True, False])
    boxes = read_voc_xml(path, FLIR_ALIGNED)
    np.testing.assert_array_equal(boxes.boxes, [[1, 1, 5, 6], [0, 0, 3, 3]])
    np.testing.assert_array_equal(boxes.labels, [2, 3])
    np.testing.assert_array_equal(boxes.ignore, [[2, 2, 9, 9]])
    assert boxes.size == (W, H)


# ----------------------------------------------------------------------------- FLIR-aligned

FLIR_FRAMES = {
    "FLIR_00002": [("person", (1, 1, 6, 12)), ("car", (10, 5, 30, 20)), ("dog", (2, 2, 4, 4))],
    "FLIR_00005": [("bicycle", (0.5, 3.5, 9.25, 15))],
    "FLIR_08864": [("car", (0, 0, 32, 24)), ("person", (4, 4, 5, 5))],
}


def make_flir_aligned(root: str, nested_lists: bool = False) -> str:
    for i, (ident, objects) in enumerate(FLIR_FRAMES.items()):
        write(f"{root}/JPEGImages/{ident}_PreviewData.jpeg", image(i, 1))
        write(f"{root}/JPEGImages/{ident}_RGB.jpg", image(i + 5))
        xml(f"{root}/Annotations/{ident}_PreviewData.xml", objects)
    folder = f"{root}/ImageSets/Main" if nested_lists else root
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/align_train.txt", "w") as f:
        f.write("FLIR_00002_PreviewData\nFLIR_00005\n")
    with open(f"{folder}/align_validation.txt", "w") as f:
        f.write("FLIR_08864_PreviewData.jpeg\n")
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_flir_aligned_reads_boxes_classes_and_splits(tmp_path, nested):
    root = make_flir_aligned(str(tmp_path / "FLIR_aligned"), nested_lists=nested)
    train = build_dataset("flir_aligned", root, "train")
    assert isinstance(train, FLIRAlignedDataset) and train.class_set is FLIR_ALIGNED
    assert FLIR_ALIGNED.names == ("background", "person", "car", "bicycle")
    assert train.names == ["FLIR_00002", "FLIR_00005"]
    first = train[0]
    assert first["rgb"].shape == (H, W, 3) and first["thermal"].shape == (H, W) and first["label"] is None
    # The dog is not a benchmark class and is left out.
    np.testing.assert_array_equal(first["boxes"], [[1, 1, 6, 12], [10, 5, 30, 20]])
    np.testing.assert_array_equal(first["box_labels"], [1, 2])
    np.testing.assert_array_equal(train[1]["boxes"], [[0.5, 3.5, 9.25, 15]])
    np.testing.assert_array_equal(train[1]["box_labels"], [3])
    # The RGB image is the _RGB file, the thermal the _PreviewData one.
    np.testing.assert_array_equal(first["rgb"], cv2.imread(f"{root}/JPEGImages/FLIR_00002_RGB.jpg")[:, :, ::-1])
    val = build_dataset("flir_aligned", root, "val")
    assert val.names == ["FLIR_08864"]
    np.testing.assert_array_equal(val[0]["box_labels"], [2, 1])


def test_flir_aligned_errors(tmp_path):
    root = make_flir_aligned(str(tmp_path / "a"))
    os.remove(f"{root}/JPEGImages/FLIR_00005_RGB.jpg")
    with pytest.raises(DatasetError, match=r"missing RGB partner image .*FLIR_00005_RGB\.jpg for frame 'FLIR_00005'"):
        build_dataset("flir_aligned", root, "train")
    root = make_flir_aligned(str(tmp_path / "b"))
    os.remove(f"{root}/align_validation.txt")
    with pytest.raises(DatasetError, match=r"missing split file: .*align_validation\.txt"):
        build_dataset("flir_aligned", root, "val")
    root = make_flir_aligned(str(tmp_path / "c"))
    xml(f"{root}/Annotations/FLIR_00005_PreviewData.xml", [("truck", (1, 1, 4, 4))])
    with pytest.raises(DatasetError, match=r"unknown class 'truck'.*FLIR_00005_PreviewData\.xml"):
        build_dataset("flir_aligned", root, "train")
    with pytest.raises(ValueError, match="FLIR-aligned split must be one of train, val"):
        build_dataset("flir_aligned", root, "test")


# ----------------------------------------------------------------------------- M3FD

M3FD_FRAMES = {f"{i:05d}": [("People", (i, 1, i + 5, 10)), ("Truck", (10, 10, 30, 22))] for i in range(10)}
M3FD_FRAMES["00003"] = [("Lamp", (0, 0, 2, 8)), ("Bus", (3, 3, 20, 20)), ("Motorcycle", (1, 1, 3, 3)),
                        ("Car", (5, 5, 6, 6))]


def make_m3fd(root: str) -> str:
    for i, (ident, objects) in enumerate(M3FD_FRAMES.items()):
        write(f"{root}/Vis/{ident}.png", image(i))
        write(f"{root}/Ir/{ident}.png", image(i + 20, 1))
        xml(f"{root}/Annotation/{ident}.xml", objects)
    return root


def test_m3fd_class_names_and_boxes(tmp_path):
    root = make_m3fd(str(tmp_path / "M3FD"))
    os.makedirs(f"{root}/meta")
    with open(f"{root}/meta/train.txt", "w") as f:
        f.write("00003\n00001\n")
    with open(f"{root}/meta/val.txt", "w") as f:
        f.write("00000\n")
    ds = build_dataset("m3fd", root, "train")
    assert isinstance(ds, M3FDDataset) and ds.class_set is M3FD
    assert M3FD.names == ("background", "People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
    assert ds.names == ["00003", "00001"]
    np.testing.assert_array_equal(ds[0]["box_labels"], [5, 3, 4, 2])
    np.testing.assert_array_equal(ds[0]["boxes"], [[0, 0, 2, 8], [3, 3, 20, 20], [1, 1, 3, 3], [5, 5, 6, 6]])
    np.testing.assert_array_equal(ds[1]["boxes"], [[1, 1, 6, 10], [10, 10, 30, 22]])
    np.testing.assert_array_equal(ds[1]["box_labels"], [1, 6])
    np.testing.assert_array_equal(ds[1]["thermal"], cv2.imread(f"{root}/Ir/00001.png", cv2.IMREAD_UNCHANGED))
    assert build_dataset("m3fd", root, "val").names == ["00000"]


def test_m3fd_seeded_split_is_written_down(tmp_path):
    root = make_m3fd(str(tmp_path / "M3FD"))
    train = build_dataset("m3fd", root, "train")
    val = build_dataset("m3fd", root, "val")
    assert len(train) == 8 and len(val) == 2
    assert sorted(train.names + val.names) == sorted(M3FD_FRAMES)
    written = {s: [line.strip() for line in open(f"{root}/meta/{s}.txt") if not line.startswith("#")]
               for s in ("train", "val")}
    assert written == {"train": train.names, "val": val.names}
    # Read back (not redrawn) by the next loader, whatever its seed.
    assert build_dataset("m3fd", root, "val", split_seed=5).names == val.names
    # A fresh copy gets the same split from the same seed, another one from another seed.
    assert val.names == ["00004", "00006"]
    assert build_dataset("m3fd", make_m3fd(str(tmp_path / "copy")), "val").names == val.names
    assert build_dataset("m3fd", make_m3fd(str(tmp_path / "seed1")), "val", split_seed=1).names == ["00004", "00008"]


def test_m3fd_errors(tmp_path):
    root = make_m3fd(str(tmp_path / "a"))
    os.remove(f"{root}/Ir/00004.png")
    with pytest.raises(DatasetError, match=r"unpaired file .*Vis/00004\.png: no thermal image"):
        build_dataset("m3fd", root, "train")
    root = make_m3fd(str(tmp_path / "b"))
    os.makedirs(f"{root}/meta")
    with open(f"{root}/meta/train.txt", "w") as f:
        f.write("00001\n")
    with pytest.raises(DatasetError, match=r"meta/train\.txt exists but .*meta/val\.txt does not"):
        build_dataset("m3fd", root, "train")
    with open(f"{root}/meta/val.txt", "w") as f:
        f.write("00042\n")
    with pytest.raises(DatasetError, match=r"frame '00042' of .*meta/val\.txt has no Vis/Ir image pair"):
        build_dataset("m3fd", root, "val")
    root = make_m3fd(str(tmp_path / "c"))
    with open(f"{root}/Annotation/00002.xml", "w") as f:
        f.write("<annotation><size><width>32</width>")
    with pytest.raises(DatasetError, match=r"malformed XML .*Annotation/00002\.xml"):
        build_dataset("m3fd", root, "train")
