"""Data-set loaders on tiny folders in the official layouts, boxes, and error messages."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from rgbt_perception.core.classes import FMB, MFNET, PST900
from training.datasets import (
    CocoBoxes,
    DatasetError,
    FolderDataset,
    MFNetDataset,
    boxes_from_label,
    build_dataset,
)

H, W = 24, 32


def frame(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct RGB, 8-bit thermal and a label with a person (rows 2..9, cols 3..7) and a car."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (H, W), dtype=np.uint8)
    label = np.zeros((H, W), np.uint8)
    label[2:10, 3:8] = 2
    label[12:20, 15:30] = 1
    label[0, 31] = 255
    return rgb, thermal, label


def write(path: str, image: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image)
    return path


def make_mfnet(root: str, variant: str = "official") -> dict[str, tuple]:
    stems = {"00001D": 0, "00002N": 1, "00003D": 2}
    frames = {}
    for stem, seed in stems.items():
        rgb, thermal, label = frame(seed)
        frames[stem] = (rgb, thermal, label)
        if variant == "official":
            write(f"{root}/images/{stem}.png", np.dstack([rgb[:, :, ::-1], thermal]))
        else:
            write(f"{root}/rgb/{stem}.png", rgb[:, :, ::-1])
            write(f"{root}/ther/{stem}.png", thermal)
        write(f"{root}/labels/{stem}.png", label)
    for split, names in {"train": ["00001D", "00002N"], "val": ["00003D"], "test": ["00003D"]}.items():
        with open(f"{root}/{split}.txt", "w") as f:
            f.write("\n".join(names) + "\n")
    return frames


@pytest.mark.parametrize("variant", ["official", "split"])
def test_mfnet_layouts(tmp_path, variant):
    frames = make_mfnet(str(tmp_path), variant)
    ds = MFNetDataset(str(tmp_path), "train")
    assert len(ds) == 2 and ds.names == ["00001D", "00002N"] and ds.class_set is MFNET
    assert ds.conditions == ["day", "night"]
    for i, stem in enumerate(ds.names):
        sample = ds[i]
        rgb, thermal, label = frames[stem]
        assert sample["rgb"].dtype == np.uint8 and sample["rgb"].shape == (H, W, 3)
        np.testing.assert_array_equal(sample["rgb"], rgb)  # BGRA on disk, RGB out
        assert sample["thermal"].dtype == np.uint8 and sample["thermal"].shape == (H, W)
        np.testing.assert_array_equal(sample["thermal"], thermal)
        np.testing.assert_array_equal(sample["label"], label)
        assert sample["homography"] is None and sample["name"] == stem
        # Boxes from connected components: the person then the car (class order of thing_ids).
        np.testing.assert_array_equal(sample["boxes"], np.array([[15, 12, 30, 20], [3, 2, 8, 10]], np.float32))
        np.testing.assert_array_equal(sample["box_labels"], [1, 2])
        assert sample["boxes"].dtype == np.float32 and sample["box_labels"].dtype == np.int64
    assert len(MFNetDataset(str(tmp_path), "trainval")) == 3
    assert build_dataset("mfnet", str(tmp_path), "test").names == ["00003D"]


def test_mfnet_conditions_file_and_coco(tmp_path):
    make_mfnet(str(tmp_path))
    with open(tmp_path / "conditions.json", "w") as f:
        json.dump({"00001D": "fog"}, f)
    os.makedirs(tmp_path / "annotations")
    coco = {
        "images": [{"id": 7, "file_name": "00001D.png"}, {"id": 8, "file_name": "00002N.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 30, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 40, "bbox": [5.5, 6, 2, 2], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 40, "bbox": [0, 0, 9, 9], "iscrowd": 1},
        ],
        "categories": [{"id": 30, "name": "color cone"}, {"id": 40, "name": "person"}],
    }
    with open(tmp_path / "annotations" / "train.json", "w") as f:
        json.dump(coco, f)
    ds = MFNetDataset(str(tmp_path), "train")
    assert ds.conditions == ["fog", "night"]
    first, second = ds[0], ds[1]
    np.testing.assert_array_equal(first["boxes"], [[1, 2, 4, 6], [5.5, 6, 7.5, 8]])
    np.testing.assert_array_equal(first["box_labels"], [MFNET.names.index("color_cone"), MFNET.names.index("person")])
    assert second["boxes"].shape == (0, 4) and second["box_labels"].shape == (0,)
    # Without the COCO file the boxes come from the label again.
    assert len(MFNetDataset(str(tmp_path), "train", use_coco=False)[1]["boxes"]) == 2


def test_coco_unknown_category_names_it(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "tractor"}]}))
    with pytest.raises(ValueError, match="tractor"):
        CocoBoxes(str(path), MFNET)


def test_boxes_from_label_hand_made_masks():
    label = np.zeros((20, 30), np.uint8)
    label[1:4, 1:6] = 2          # person A: 3x5 = 15 px
    label[10:18, 20:25] = 2      # person B: 8x5
    label[5:7, 10:12] = 2        # person C: 4 px, below min area
    label[12:15, 2:9] = 1        # car
    label[0:2, 25:30] = 4        # curve: stuff, never a box
    boxes, labels = boxes_from_label(label, MFNET.thing_ids, min_area=5)
    assert boxes.tolist() == [[2, 12, 9, 15], [1, 1, 6, 4], [20, 10, 25, 18]]
    assert labels.tolist() == [1, 2, 2]
    boxes, labels = boxes_from_label(label, [2], min_area=1)
    assert sorted(map(tuple, boxes.tolist())) == [(1, 1, 6, 4), (10, 5, 12, 7), (20, 10, 25, 18)]
    assert boxes_from_label(label, [3])[0].shape == (0, 4)
    # A configurable thing set: curbs as things.
    ds_boxes, ds_labels = boxes_from_label(label, [4], min_area=1)
    assert ds_boxes.tolist() == [[25, 0, 30, 2]] and ds_labels.tolist() == [4]


def make_pst900(root: str) -> str:
    """Two train frames with 8-bit and 16-bit (``thermal_raw``) thermal."""
    for stem, seed in (("a", 0), ("b", 1)):
        rgb, thermal, label = frame(seed)
        write(f"{root}/train/rgb/{stem}.png", rgb[:, :, ::-1])
        write(f"{root}/train/thermal/{stem}.png", thermal)
        write(f"{root}/train/thermal_raw/{stem}.png", thermal.astype(np.uint16) * 100 + 5000)
        write(f"{root}/train/labels/{stem}.png", np.minimum(label, 4))
    return root


def test_pst900_prefers_16bit_raw(tmp_path):
    make_pst900(str(tmp_path))
    ds = build_dataset("pst900", str(tmp_path), "train")
    sample = ds[1]
    assert ds.class_set is PST900 and ds.uses_raw and len(ds) == 2
    assert sample["thermal"].dtype == np.uint16
    np.testing.assert_array_equal(sample["thermal"], frame(1)[1].astype(np.uint16) * 100 + 5000)
    assert sample["condition"] is None and sample["label"].max() == 4
    eight = build_dataset("pst900", str(tmp_path), "train", prefer_raw=False)[1]["thermal"]
    assert eight.dtype == np.uint8
    with pytest.raises(ValueError, match="split"):
        build_dataset("pst900", str(tmp_path), "val")


def make_fmb(root: str) -> str:
    """Frame 00012 in both splits; the infrared image stored with three equal channels."""
    rgb, thermal, label = frame(3)
    for split in ("train", "test"):
        write(f"{root}/{split}/Visible/00012.png", rgb[:, :, ::-1])
        write(f"{root}/{split}/Infrared/00012.png", np.dstack([thermal] * 3))
        write(f"{root}/{split}/Label/00012.png", label)
    return root


def test_fmb_layout(tmp_path):
    rgb, thermal, _ = frame(3)
    make_fmb(str(tmp_path))
    ds = build_dataset("fmb", str(tmp_path), "test")
    sample = ds[0]
    assert ds.class_set is FMB and sample["name"] == "00012"
    np.testing.assert_array_equal(sample["rgb"], rgb)
    np.testing.assert_array_equal(sample["thermal"], thermal)
    # FMB's thing classes: class 2 (Sidewalk) is stuff, class 1 Road too: no boxes here.
    assert sample["boxes"].shape == (0, 4)


def make_folder(root: str) -> str:
    """The plain folder layout: split ``train`` with rgb/, thermal/ and labels/ of two frames."""
    for stem, seed in (("f0", 5), ("f1", 6)):
        rgb, thermal, label = frame(seed)
        write(f"{root}/train/rgb/{stem}.png", rgb[:, :, ::-1])
        write(f"{root}/train/thermal/{stem}.png", thermal)
        write(f"{root}/train/labels/{stem}.png", label)
    return root


def test_folder_layout_with_extras(tmp_path):
    rgb, thermal, label = frame(4)
    split = tmp_path / "night_run"
    write(f"{split}/rgb/f0.png", rgb[:, :, ::-1])
    write(f"{split}/thermal/f0.png", cv2.resize(thermal, (W // 2, H // 2)).astype(np.uint16) * 64)
    (split / "conditions.json").write_text(json.dumps({"f0": "night"}))
    (tmp_path / "homography.txt").write_text("2 0 1\n0 2 0.5\n0 0 1\n")
    (split / "boxes.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "f0.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [3, 4, 5, 6]}],
        "categories": [{"id": 2, "name": "car"}],
    }))
    ds = FolderDataset(str(tmp_path), "night_run", class_set="mfnet")
    sample = ds[0]
    assert sample["label"] is None and sample["condition"] == "night"
    assert sample["thermal"].shape == (H // 2, W // 2) and sample["thermal"].dtype == np.uint16
    np.testing.assert_array_equal(sample["homography"], [[2, 0, 1], [0, 2, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(sample["boxes"], [[3, 4, 8, 10]])
    assert sample["box_labels"].tolist() == [1]
    # With labels the folder pairs them and derives boxes.
    write(f"{split}/labels/f0.png", label)
    (split / "boxes.json").unlink()
    assert build_dataset("folder", str(tmp_path), "night_run")[0]["box_labels"].tolist() == [1, 2]


# ---- errors name the file --------------------------------------------------------------------


def test_error_missing_folder(tmp_path):
    make_mfnet(str(tmp_path))
    os.rename(tmp_path / "labels", tmp_path / "labels_old")
    with pytest.raises(DatasetError, match=f"missing MFNet labels folder: {tmp_path}/labels"):
        MFNetDataset(str(tmp_path), "train")
    with pytest.raises(DatasetError, match="missing FMB root folder"):
        build_dataset("fmb", str(tmp_path / "nowhere"), "train")


def test_error_missing_split_file(tmp_path):
    make_mfnet(str(tmp_path))
    os.remove(tmp_path / "val.txt")
    with pytest.raises(DatasetError, match=f"missing split file: {tmp_path}/val.txt"):
        MFNetDataset(str(tmp_path), "val")


def test_error_split_lists_missing_frame(tmp_path):
    make_mfnet(str(tmp_path))
    os.remove(tmp_path / "labels" / "00002N.png")
    with pytest.raises(DatasetError, match=f"{tmp_path}/labels/00002N.png"):
        MFNetDataset(str(tmp_path), "train")


def test_error_unpaired_file(tmp_path):
    rgb, thermal, label = frame(0)
    for stem in ("a", "b"):
        write(f"{tmp_path}/train/Visible/{stem}.png", rgb)
        write(f"{tmp_path}/train/Label/{stem}.png", label)
    write(f"{tmp_path}/train/Infrared/a.png", thermal)
    with pytest.raises(DatasetError, match=r"unpaired file .*/train/Visible/b\.png: no thermal"):
        build_dataset("fmb", str(tmp_path), "train")


def test_error_size_mismatch(tmp_path):
    make_mfnet(str(tmp_path))
    write(f"{tmp_path}/labels/00001D.png", np.zeros((H + 2, W), np.uint8))
    ds = MFNetDataset(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=f"label size .*{tmp_path}/labels/00001D.png"):
        ds[0]


def test_error_unreadable_png(tmp_path):
    make_mfnet(str(tmp_path))
    (tmp_path / "images" / "00002N.png").write_bytes(b"not a png at all")
    ds = MFNetDataset(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=f"unreadable image .*{tmp_path}/images/00002N.png"):
        ds[1]


def test_error_bad_homography_and_kind(tmp_path):
    rgb, thermal, _ = frame(0)
    write(f"{tmp_path}/s/rgb/x.png", rgb)
    write(f"{tmp_path}/s/thermal/x.png", thermal)
    (tmp_path / "homography.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match="homography.txt"):
        FolderDataset(str(tmp_path), "s")
    with pytest.raises(ValueError, match="unknown data set kind 'kitti'"):
        build_dataset("kitti", str(tmp_path), "s")
