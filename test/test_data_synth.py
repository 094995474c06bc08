"""rgbt-synth: determinism, the MFNet layout it writes, and modalities that complement each other."""
from __future__ import annotations

import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from rgbt_perception.core.classes import SYNTHETIC
from rgbt_perception.core.preprocess import ThermalScaling, scale_thermal
from rgbt_perception.core.registration import warp_thermal_to_rgb
from training.cli.synth import main as synth_main
from training.datasets import MFNetDataset, build_dataset
from training.synth.scenes import BUMP, CAR, COLOR_CONE, CURVE, PERSON, SynthConfig, make_rig, render_frame

SIZE, THERMAL_SIZE = (96, 128), (48, 64)
ARGS = ["--num-train", "3", "--num-val", "2", "--num-test", "1", "--size", "96x128", "--thermal-size", "48x64",
        "--no-progress"]


def all_files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def make_synthetic(root: str) -> str:
    """rgbt-synth's output: 3 train, 2 val and 1 test frame(s)."""
    assert synth_main(["--out", root, "--seed", "7", *ARGS]) == 0
    return root


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    dirs = {}
    for key, seed in (("a", 7), ("b", 7), ("c", 8)):
        dirs[key] = str(base / key)
        assert synth_main(["--out", dirs[key], "--seed", str(seed), *ARGS]) == 0
    return dirs


def test_same_seed_same_bytes_other_seed_differs(synth_dirs):
    files = all_files(synth_dirs["a"])
    assert files == all_files(synth_dirs["b"])
    match, mismatch, errors = filecmp.cmpfiles(synth_dirs["a"], synth_dirs["b"], files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)
    images = [f for f in files if f.startswith("images/")]
    _, differ, _ = filecmp.cmpfiles(synth_dirs["a"], synth_dirs["c"], images, shallow=False)
    assert differ, "another seed must give other images"


def test_layout_reads_as_mfnet(synth_dirs):
    root = synth_dirs["a"]
    files = all_files(root)
    for name in ("train.txt", "val.txt", "test.txt", "homography.txt", "conditions.json", "synth.json",
                 "annotations/train.json", "annotations/val.json", "annotations/test.json"):
        assert name in files
    image = cv2.imread(os.path.join(root, "images", sorted(os.listdir(os.path.join(root, "images")))[0]),
                       cv2.IMREAD_UNCHANGED)
    assert image.shape == (*SIZE, 4) and image.dtype == np.uint8

    splits = {s: build_dataset("synthetic", root, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    assert not set(splits["train"].names) & set(splits["val"].names)
    trainval = build_dataset("synthetic", root, "trainval")
    assert trainval.names == splits["train"].names + splits["val"].names and trainval.coco is not None
    conditions = json.load(open(os.path.join(root, "conditions.json")))
    homography = np.loadtxt(os.path.join(root, "homography.txt"))
    ds = splits["train"]
    assert ds.class_set is SYNTHETIC and ds.uses_thermal16 and ds.coco is not None
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["rgb"].shape == (*SIZE, 3) and sample["label"].shape == SIZE
        assert sample["thermal"].dtype == np.uint16 and sample["thermal"].shape == THERMAL_SIZE
        assert sample["thermal"].max() > 1000  # counts, not an 8-bit image
        np.testing.assert_allclose(sample["homography"], homography)
        assert sample["condition"] == conditions[sample["name"]]
        assert sample["name"][-1] == ("N" if sample["condition"] == "night" else "D")
        assert sample["label"].max() < SYNTHETIC.num_classes
        # Every COCO box frames pixels of its class.
        for (x0, y0, x1, y1), cls in zip(sample["boxes"].astype(int), sample["box_labels"]):
            assert cls in SYNTHETIC.thing_ids
            assert (sample["label"][y0:y1, x0:x1] == cls).any()
        # Registered thermal covers the whole RGB view (no empty border).
        assert warp_thermal_to_rgb(sample["thermal"], sample["homography"], SIZE).min() > 0

    eight = MFNetDataset(root, "train", class_set=SYNTHETIC, thermal16=False)[0]
    assert eight["thermal"].dtype == np.uint8 and eight["thermal"].shape == SIZE and eight["homography"] is None


def test_rerun_replaces_earlier_output(tmp_path, capsys):
    out = str(tmp_path / "data")
    small = ["--size", "64x96", "--thermal-size", "32x48", "--no-progress", "--out", out]
    assert synth_main([*small, "--num-train", "4", "--num-val", "1", "--num-test", "1"]) == 0
    assert synth_main([*small, "--num-train", "2", "--num-val", "1", "--num-test", "0", "--seed", "1"]) == 0
    assert len(os.listdir(os.path.join(out, "images"))) == 3 and not os.path.exists(os.path.join(out, "test.txt"))
    foreign = tmp_path / "mine"
    os.makedirs(foreign / "images")
    (foreign / "images" / "a.png").write_bytes(b"x")
    assert synth_main([*small[:-1], str(foreign), "--num-train", "1"]) == 2
    assert "did not write" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth_main(["--out", str(tmp_path), "--size", "big"])
    assert exit_info.value.code == 2 and "HEIGHTxWIDTH" in capsys.readouterr().err
    assert synth_main(["--out", str(tmp_path), "--num-train", "0", "--num-val", "0", "--num-test", "0"]) == 2
    assert "nothing to generate" in capsys.readouterr().err


def region_contrast(image: np.ndarray, mask: np.ndarray, label: np.ndarray) -> float:
    """|mean inside - mean of the unlabeled ring around it| (per channel, summed) in [0,1] units."""
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask & (label == 0)
    if image.ndim == 2:
        image = image[..., None]
    return float(np.abs(image[mask].mean(0) - image[ring].mean(0)).sum())


def contrasts(condition: str, class_id: int, seeds=range(12)) -> tuple[float, float]:
    """Median RGB and thermal contrast of ``class_id`` over a few frames of ``condition``."""
    cfg = SynthConfig(size=(192, 256), thermal_size=(96, 128))
    rig = make_rig(0, cfg)
    rgb_c, th_c = [], []
    for seed in seeds:
        f = render_frame(np.random.default_rng([1, seed]), cfg, rig, condition)
        mask = f.label == class_id
        if mask.sum() < 30:
            continue
        thermal = scale_thermal(warp_thermal_to_rgb(f.thermal16, rig.homography, cfg.size), ThermalScaling())
        rgb_c.append(region_contrast(f.rgb.astype(np.float32) / 255.0, mask, f.label) / 3.0)
        th_c.append(region_contrast(thermal, mask, f.label))
    assert len(rgb_c) >= 3, f"too few frames with class {class_id}"
    return float(np.median(rgb_c)), float(np.median(th_c))


@pytest.mark.parametrize("condition,class_id", [("night", PERSON), ("night", CAR), ("fog", PERSON)])
def test_warm_bodies_stand_out_in_thermal(condition, class_id):
    rgb_c, th_c = contrasts(condition, class_id)
    assert th_c > 0.15 and th_c > 4 * rgb_c, (rgb_c, th_c)


@pytest.mark.parametrize("class_id", [COLOR_CONE, CURVE, BUMP])
def test_cold_road_furniture_stands_out_in_rgb_by_day(class_id):
    rgb_c, th_c = contrasts("day", class_id)
    assert rgb_c > 0.1 and rgb_c > 4 * th_c, (rgb_c, th_c)


def test_glare_saturates_rgb_only():
    cfg = SynthConfig(size=(96, 128), thermal_size=(48, 64))
    rig = make_rig(0, cfg)
    for seed in range(3):
        glare = render_frame(np.random.default_rng(seed), cfg, rig, "glare")
        day = render_frame(np.random.default_rng(seed), cfg, rig, "day")
        saturated = glare.rgb.min(axis=2) == 255
        assert saturated.mean() > 0.03 and (day.rgb.min(axis=2) == 255).mean() < 0.01
        # Under the glare the thermal image keeps its grey levels: neither clipped nor flat.
        thermal = scale_thermal(warp_thermal_to_rgb(glare.thermal16, rig.homography, cfg.size), ThermalScaling())
        assert (thermal[saturated] >= 1.0).mean() < 0.2 and thermal[saturated].std() > 0.01
