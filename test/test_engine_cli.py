"""rgbt-infer end to end as a subprocess: single pair, folder of pairs, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from rgbt_perception.cli import infer as infer_cli
from rgbt_perception.core.classes import MFNET
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=(64, 96)))
    path = str(tmp_path_factory.mktemp("cli") / "micro.safetensors")
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    return path


def _rgbt_infer(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The installed console script, so the entry point is part of what is tested.
    command = [os.path.join(os.path.dirname(sys.executable), "rgbt-infer"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _write_pair(folder, stem: str, rgb_size, thermal_size, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "rgb", exist_ok=True)
    os.makedirs(folder / "thermal", exist_ok=True)
    rgb_path, thermal_path = str(folder / "rgb" / f"{stem}.png"), str(folder / "thermal" / f"{stem}.png")
    cv2.imwrite(rgb_path, rng.integers(0, 256, (*rgb_size, 3), dtype=np.uint8))
    cv2.imwrite(thermal_path, rng.integers(20000, 40000, thermal_size, dtype=np.uint16))
    return rgb_path, thermal_path


def _check_outputs(out_dir, stem: str, size: tuple[int, int]) -> dict:
    mask = cv2.imread(str(out_dir / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out_dir / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == size and mask.dtype == np.uint8 and int(mask.max()) < MFNET.num_classes
    assert overlay.shape == (*size, 3)
    record = json.loads((out_dir / f"{stem}_detections.json").read_text())
    assert record["frame"] == stem and record["image_size"] == list(size)
    assert record["class_names"] == list(MFNET.names)
    for det in record["detections"]:
        assert 0 <= det["x_min"] <= det["x_max"] <= size[1] and 0 <= det["y_min"] <= det["y_max"] <= size[0]
        assert det["label"] == MFNET.names[det["class_id"]]
    return record


def test_single_pair_with_homography(tmp_path, weights):
    rgb, thermal = _write_pair(tmp_path, "frame_0001", (70, 101), (40, 50), seed=0)
    homography = tmp_path / "h.txt"
    homography.write_text("2 0 1\n0 1.75 0\n0 0 1\n")
    out = tmp_path / "out"
    done = _rgbt_infer(
        "--weights", weights, "--rgb", rgb, "--thermal", thermal, "--homography", str(homography),
        "--out", str(out), "--device", "cpu", "--score-threshold", "0.0",
    )
    assert done.returncode == 0, done.stderr
    record = _check_outputs(out, "frame_0001", (70, 101))
    assert len(record["detections"]) > 0  # threshold 0 keeps the untrained head's boxes
    assert "1 frame(s)" in done.stdout


def test_folder_of_pairs(tmp_path, weights):
    sizes = {"a": ((64, 96), (64, 96)), "b": ((45, 77), (30, 40)), "c": ((50, 50), (100, 80))}
    for seed, (stem, (rgb_size, thermal_size)) in enumerate(sizes.items()):
        _write_pair(tmp_path, stem, rgb_size, thermal_size, seed)
    out = tmp_path / "out"
    done = _rgbt_infer(
        "--weights", weights, "--rgb-dir", str(tmp_path / "rgb"), "--thermal-dir", str(tmp_path / "thermal"),
        "--out", str(out), "--device", "cpu", "--batch-size", "2",
    )
    assert done.returncode == 0, done.stderr
    for stem, (rgb_size, _) in sizes.items():
        _check_outputs(out, stem, rgb_size)
    assert sorted(os.listdir(out)) == sorted(f"{s}_{kind}" for s in sizes
                                             for kind in ("mask.png", "overlay.png", "detections.json"))


def test_missing_input_exits_2_with_one_line(tmp_path, weights):
    rgb, _ = _write_pair(tmp_path, "x", (32, 32), (32, 32), seed=1)
    absent = tmp_path / "absent.png"
    done = _rgbt_infer("--weights", weights, "--rgb", rgb, "--thermal", str(absent), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"rgbt-infer: error: missing file: {absent}"]
    assert not (tmp_path / "o").exists()


def test_bad_input_exits_2_naming_the_problem(tmp_path, weights, capsys):
    # Same entry point in-process (a subprocess per case would only repeat the start-up).
    rgb, thermal = _write_pair(tmp_path, "x", (32, 32), (32, 32), seed=1)
    unreadable = tmp_path / "broken.png"
    unreadable.write_text("no image here")
    singular = tmp_path / "singular.txt"
    singular.write_text("0 0 0 0 0 0 0 0 0")
    _write_pair(tmp_path, "lonely", (32, 32), (32, 32), seed=2)
    os.remove(tmp_path / "thermal" / "lonely.png")
    not_weights = tmp_path / "weights.png"
    cv2.imwrite(str(not_weights), np.zeros((4, 4), np.uint8))
    cases = [
        (["--weights", str(not_weights), "--rgb", rgb], "not a weights file: it is a PNG image"),
        (["--rgb", str(unreadable), "--thermal", thermal], "unreadable image"),
        (["--rgb-dir", str(tmp_path / "rgb"), "--thermal-dir", str(tmp_path / "thermal")], "unpaired file"),
        (["--rgb", rgb, "--thermal", thermal, "--homography", str(singular)], "singular"),
        (["--rgb", rgb, "--rgb-dir", str(tmp_path / "rgb")], "not both"),
        (["--rgb", rgb, "--precision", "fp16"], "fp16 needs a CUDA device"),
        (["--weights", str(tmp_path / "absent.safetensors"), "--rgb", rgb], "file not found"),
    ]
    for args, problem in cases:
        if "--weights" not in args:
            args = ["--weights", weights, *args]
        code = infer_cli.main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"])
        captured = capsys.readouterr()
        assert code == 2, (args, captured.err)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rgbt-infer: error:") and problem in lines[0], captured.err
