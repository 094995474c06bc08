"""KAIST loader on a test-made folder in the published layout: bbGt v3 annotations, splits, lists."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from rgbt_perception.core.classes import KAIST
from training.datasets import DatasetError, KAISTDataset, build_dataset
from training.datasets.kaist import parse_frame, read_bbgt

H, W = 32, 40

# (set, video, image) -> annotation lines after the header
FRAMES = {
    (0, 0, 1): ["person 2 3 10 20 0 0 0 0 0 0 0", "people 20 5 8 9 0 0 0 0 0 0 0"],
    (0, 1, 3): ["person 1 1 5 8 1 1 1 5 4 0 0", "person 10 10 6 12 2 0 0 0 0 0 0", "person? 30 2 5 6 0 0 0 0 0 0 0"],
    (3, 0, 19): [],
    (6, 0, 19): ["person 4 4 10 25 0 0 0 0 0 0 0", "cyclist 20 1 10 10 0 0 0 0 0 0 0",
                 "person 15 2 4 9 0 0 0 0 0 1 0", "person?a 1 1 2 2 0 0 0 0 0 0 0"],
    (9, 1, 39): ["person 0 0 40 32 1 0 0 0 0 0 0"],
}


def bbgt(lines: list[str]) -> str:
    return "% bbGt version=3\n" + "".join(f"{line}\n" for line in lines)


def make_kaist(root: str) -> str:
    for i, ((s, v, n), lines) in enumerate(FRAMES.items()):
        folder = f"{root}/images/set{s:02d}/V{v:03d}"
        rng = np.random.default_rng(i)
        for sub, channels in (("visible", 3), ("lwir", 3)):
            os.makedirs(f"{folder}/{sub}", exist_ok=True)
            assert cv2.imwrite(f"{folder}/{sub}/I{n:05d}.jpg", rng.integers(0, 256, (H, W, channels), np.uint8))
        os.makedirs(f"{root}/annotations/set{s:02d}/V{v:03d}", exist_ok=True)
        with open(f"{root}/annotations/set{s:02d}/V{v:03d}/I{n:05d}.txt", "w") as f:
            f.write(bbgt(lines))
    return root


def test_kaist_reads_boxes_occlusion_ignore_and_conditions(tmp_path):
    root = make_kaist(str(tmp_path / "kaist"))
    train = build_dataset("kaist", root, "train")
    assert isinstance(train, KAISTDataset) and train.class_set is KAIST
    assert KAIST.names == ("background", "person") and not KAIST.has_masks
    assert train.names == ["set00_V000_I00001", "set00_V001_I00003", "set03_V000_I00019"]
    assert train.conditions == ["day", "day", "night"]
    first = train[0]
    assert first["rgb"].shape == (H, W, 3) and first["thermal"].shape == (H, W) and first["label"] is None
    np.testing.assert_array_equal(first["boxes"], [[2, 3, 12, 23]])
    np.testing.assert_array_equal(first["box_labels"], [1])
    np.testing.assert_array_equal(first["box_occlusion"], [0])
    np.testing.assert_array_equal(first["ignore_boxes"], [[20, 5, 28, 14]])
    second = train[1]
    np.testing.assert_array_equal(second["boxes"], [[1, 1, 6, 9], [10, 10, 16, 22]])
    np.testing.assert_array_equal(second["box_occlusion"], [1, 2])
    np.testing.assert_array_equal(second["ignore_boxes"], [[30, 2, 35, 8]])
    assert train[2]["boxes"].shape == (0, 4)

    test = build_dataset("kaist", root, "test")
    assert test.names == ["set06_V000_I00019", "set09_V001_I00039"]
    assert test.conditions == ["day", "night"]
    # cyclist and the person flagged ign=1 are ignore regions; person?a is dropped as the toolbox drops it.
    np.testing.assert_array_equal(test[0]["boxes"], [[4, 4, 14, 29]])
    np.testing.assert_array_equal(test[0]["ignore_boxes"], [[20, 1, 30, 11], [15, 2, 19, 11]])
    np.testing.assert_array_equal(test[1]["boxes"], [[0, 0, 40, 32]])


def test_kaist_image_sets_and_annotation_folders(tmp_path):
    root = make_kaist(str(tmp_path / "kaist"))
    os.makedirs(f"{root}/imageSets")
    with open(f"{root}/imageSets/test-all-20.txt", "w") as f:
        f.write("set09/V001/I00039\n")
    # The cleaned list is used when present; "all" still reads every frame.
    assert build_dataset("kaist", root, "test").names == ["set09_V001_I00039"]
    assert len(build_dataset("kaist", root, "test", image_set="all")) == 2
    with open(f"{root}/imageSets/mine.txt", "w") as f:
        f.write("set03_V000_I00019.jpg\n\nset00/V000/I00001\n")
    assert build_dataset("kaist", root, "train", image_set="mine").names == ["set03_V000_I00019", "set00_V000_I00001"]
    # A cleaned annotation copy in the flat layout.
    os.makedirs(f"{root}/annotations_improved")
    with open(f"{root}/annotations_improved/set09_V001_I00039.txt", "w") as f:
        f.write(bbgt(["person 5 5 10 20 0 0 0 0 0 0 0"]))
    improved = build_dataset("kaist", root, "test", annotations="annotations_improved")
    np.testing.assert_array_equal(improved[0]["boxes"], [[5, 5, 15, 25]])
    assert parse_frame("set11_V002_I01234") == (11, 2, 1234)


def test_bbgt_versions(tmp_path):
    path = tmp_path / "v0.txt"
    path.write_text("person 1 2 3 4 0 0 0 0 0\n")
    boxes = read_bbgt(str(path))
    np.testing.assert_array_equal(boxes.boxes, [[1, 2, 4, 6]])
    path.write_text("% bbGt version=2\nperson 1 2 3 4 0 0 0 0 0 1\n")
    assert read_bbgt(str(path)).ignore.tolist() == [[1, 2, 4, 6]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("% bbGt version=7\n", r"unknown bbGt version 7"),
        ("% something else\n", r"line 1 .* is not a '% bbGt version=N' header"),
        ("% bbGt version=3\nperson 1 2 3 4 0 0 0 0 0 0\n", r"line 2 has 11 fields, bbGt version 3 has 12"),
        ("% bbGt version=3\nperson 1 2 x 4 0 0 0 0 0 0 0\n", r"line 2 holds a value that is not a number"),
        ("% bbGt version=3\n\ncar 1 2 3 4 0 0 0 0 0 0 0\n", r"line 3: unknown label 'car'"),
        ("% bbGt version=3\nperson 1 2 0 4 0 0 0 0 0 0 0\n", r"line 2: box width and height must be positive"),
        ("% bbGt version=3\nperson 1 2 3 4 5 0 0 0 0 0 0\n", r"line 2: occlusion must be 0, 1 or 2"),
    ],
)
def test_bbgt_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "I00001.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message + r".*I00001\.txt"):
        read_bbgt(str(path))


def test_kaist_errors(tmp_path):
    root = make_kaist(str(tmp_path / "a"))
    os.remove(f"{root}/images/set00/V001/lwir/I00003.jpg")
    with pytest.raises(DatasetError, match=r"missing lwir partner image .*set00/V001/lwir/I00003\.jpg"):
        build_dataset("kaist", root, "train")
    root = make_kaist(str(tmp_path / "b"))
    os.remove(f"{root}/images/set06/V000/visible/I00019.jpg")
    with pytest.raises(DatasetError, match=r"lwir image .*set06/V000/lwir/I00019\.jpg has no visible partner"):
        build_dataset("kaist", root, "test")
    root = make_kaist(str(tmp_path / "c"))
    os.remove(f"{root}/annotations/set03/V000/I00019.txt")
    with pytest.raises(DatasetError, match=r"missing annotation file: .*set03/V000/I00019\.txt"):
        build_dataset("kaist", root, "train")
    root = make_kaist(str(tmp_path / "d"))
    os.makedirs(f"{root}/imageSets")
    with open(f"{root}/imageSets/bad.txt", "w") as f:
        f.write("set00/V000/I00001\nset07/V000/I00001\n")
    with pytest.raises(DatasetError, match=r"line 2: set07 is not in the train split \(sets 00-05\): .*bad\.txt"):
        build_dataset("kaist", root, "train", image_set="bad")
    with pytest.raises(DatasetError, match=r"KAIST image set 'nothere' not found"):
        build_dataset("kaist", root, "train", image_set="nothere")
    with open(f"{root}/annotations/set00/V000/I00001.txt", "w") as f:
        f.write(bbgt(["person 30 20 20 10 0 0 0 0 0 0 0"]))
    ds = build_dataset("kaist", root, "train")
    with pytest.raises(DatasetError, match=r"box 0 \[30, 20, 50, 30\] lies outside the 40x32 image: .*I00001\.txt"):
        ds[0]
    with pytest.raises(ValueError, match="KAIST split must be one of train, test"):
        build_dataset("kaist", root, "val")
