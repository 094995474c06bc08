"""``rgbt-calibrate`` as people run it: folders and rosbag2 input, the parameters file the node
loads, the report, and every refusal (exit status non-zero, one line on stderr, nothing written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml

from rgbt_perception.calibration import synthetic as sy
from rgbt_perception.calibration.features import corner_error
from rgbt_perception.cli.calibrate import EXIT_ERROR, EXIT_REFUSED, main
from rgbt_perception.io.bag import BagWriter

try:  # where the node's parameter checks live
    from rgbt_perception.node.parameters import check_parameter
except ImportError:  # pragma: no cover - older layout
    from rgbt_perception.node.logic import check_parameter

THERMAL = (512, 640)


def write_split(folder, pairs, rgb_ext=".jpg") -> str:
    os.makedirs(os.path.join(folder, "rgb"), exist_ok=True)
    os.makedirs(os.path.join(folder, "thermal"), exist_ok=True)
    for k, (rgb, thermal) in enumerate(pairs):
        assert cv2.imwrite(os.path.join(folder, "rgb", f"{k:03d}{rgb_ext}"), rgb[:, :, ::-1])
        assert cv2.imwrite(os.path.join(folder, "thermal", f"{k:03d}.png"), thermal)
    return str(folder)


@pytest.fixture(scope="module")
def rig():
    return sy.random_rig(8)


@pytest.fixture(scope="module")
def road_split(rig, tmp_path_factory):
    pairs = [(p[0], p[1]) for p in sy.road_pairs(rig, 8, seed=8)]
    folder = write_split(tmp_path_factory.mktemp("road"), pairs)
    np.savetxt(os.path.join(folder, "truth.txt"), rig.homography)
    return folder


def run_cli(args, capsys):
    code = main([*args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_imports_nothing_heavy():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rgbt_perception.cli.calibrate", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--target" in result.stdout and "thermal_to_rgb" in result.stdout
    assert time.perf_counter() - started < 10.0
    probe = ("import sys; from rgbt_perception.cli import calibrate; calibrate.build_parser().parse_args(['--pairs', "
             "'x']); print(sorted(m for m in ('numpy', 'cv2', 'torch', 'rclpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    assert loaded.strip() == "[]"
    script = os.path.join(os.path.dirname(sys.executable), "rgbt-calibrate")
    if os.path.exists(script):  # the installed console script
        result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("usage: rgbt-calibrate")


def test_folder_split_to_node_parameters_and_report(road_split, rig, tmp_path, capsys):
    out, report = tmp_path / "calib.yaml", tmp_path / "report"
    code, stdout, stderr = run_cli(["--pairs", road_split, "--out", str(out), "--report", str(report),
                                    "--truth", os.path.join(road_split, "truth.txt")], capsys)
    assert code == 0, stderr
    params = yaml.safe_load(out.read_text())
    assert list(params) == ["/**/rgbt_perception"] and list(params["/**/rgbt_perception"]) == ["ros__parameters"]
    values = params["/**/rgbt_perception"]["ros__parameters"]["thermal_to_rgb"]
    assert len(values) == 9 and all(isinstance(v, float) for v in values)
    assert check_parameter("thermal_to_rgb", values) is None
    assert corner_error(np.reshape(values, (3, 3)), rig.homography, THERMAL) < 4.0
    summary = json.loads((report / "report.json").read_text())
    assert summary["pairs_total"] == 8 and summary["pairs_supporting"] >= 6 and summary["truth_error_px"] < 4.0
    assert summary["residual_px"] < 1.0 and len(summary["pairs"]) == 8
    assert 0.0 <= summary["edge_scale_shift_px"] < 2.0
    assert f"the corners move {summary['edge_scale_shift_px']:.2f} px" in (report / "report.md").read_text()
    pictures = summary["pictures"]
    assert 1 <= len(pictures) <= 4
    for picture in pictures:
        for kind in ("blend", "edges"):
            image = cv2.imread(str(report / picture[kind]))
            assert image is not None and image.shape[1] > 2 * 640
    assert "![blend]" in (report / "report.md").read_text()
    assert "thermal_to_rgb: [" in stdout and "error against --truth" in stdout


def test_prior_from_the_parameters_file_is_refined(road_split, rig, tmp_path, capsys):
    prior = tmp_path / "old.yaml"
    knocked = np.array([[1, 0, 7.0], [0, 1, 4.0], [0, 0, 1]]) @ rig.homography
    prior.write_text("/**/rgbt_perception:\n  ros__parameters:\n    thermal_to_rgb: "
                     f"{[float(v) for v in knocked.ravel()]}\n")
    out = tmp_path / "new.yaml"
    code, _, stderr = run_cli(["--pairs", road_split, "--init", str(prior), "--out", str(out)], capsys)
    assert code == 0, stderr
    values = yaml.safe_load(out.read_text())["/**/rgbt_perception"]["ros__parameters"]["thermal_to_rgb"]
    assert corner_error(np.reshape(values, (3, 3)), rig.homography, THERMAL) < 4.0


def test_rosbag_pairs_formed_by_the_node_synchroniser(rig, tmp_path, capsys):
    bag = tmp_path / "rig_bag"
    pairs = sy.road_pairs(rig, 6, seed=12)
    with BagWriter(bag, storage="mcap") as writer:
        for k, (rgb, thermal, _) in enumerate(pairs):
            stamp = 1_000_000_000 + k * 100_000_000
            writer.write_image("rgb/image", rgb, "rgb8", stamp, "rgb_camera")
            # Thermal 8 ms later, like a real second camera; the first one has no RGB partner.
            writer.write_image("thermal/image", thermal, "mono16", stamp + 8_000_000, "thermal_camera")
        writer.write_image("thermal/image", pairs[0][1], "mono16", 5_000_000_000, "thermal_camera")
    out, report = tmp_path / "calib.yaml", tmp_path / "report"
    code, _, stderr = run_cli(["--bag", str(bag), "--out", str(out), "--report", str(report)], capsys)
    assert code == 0, stderr
    summary = json.loads((report / "report.json").read_text())
    assert summary["pairs_total"] == 6
    values = yaml.safe_load(out.read_text())["/**/rgbt_perception"]["ros__parameters"]["thermal_to_rgb"]
    assert corner_error(np.reshape(values, (3, 3)), rig.homography, THERMAL) < 4.0
    code, _, stderr = run_cli(["--bag", str(bag), "--thermal-topic", "lwir/image", "--out", str(tmp_path / "x.yaml")],
                              capsys)
    assert code == EXIT_ERROR and "lacks topic(s) lwir/image" in stderr and not (tmp_path / "x.yaml").exists()


def test_checkerboard_mode(rig, tmp_path, capsys):
    folder = write_split(tmp_path / "board", sy.board_pairs(rig, 4, pattern=(7, 5), seed=8), rgb_ext=".png")
    out = tmp_path / "calib.yaml"
    code, stdout, stderr = run_cli(["--pairs", folder, "--target", "checkerboard", "--pattern", "7x5",
                                    "--out", str(out)], capsys)
    assert code == 0, stderr
    values = yaml.safe_load(out.read_text())["/**/rgbt_perception"]["ros__parameters"]["thermal_to_rgb"]
    assert corner_error(np.reshape(values, (3, 3)), rig.homography, THERMAL) < 2.0
    assert "checkerboard: 4 of 4 pairs" in stdout


def flat_split(folder, count=4):
    rng = np.random.default_rng(0)
    rgb = sy.road_pairs(sy.random_rig(1), 1)[0][0]
    return write_split(folder, [(rgb, (7000 + rng.integers(0, 10, THERMAL)).astype(np.uint16))] * count)


def unpaired_split(folder):
    write_split(folder, [(np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint16))])
    os.rename(os.path.join(folder, "thermal", "000.png"), os.path.join(folder, "thermal", "001.png"))
    return str(folder)


def corrupt_split(folder):
    write_split(folder, [(np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint16))])
    with open(os.path.join(folder, "thermal", "000.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n truncated")
    return str(folder)


def mixed_sizes_split(folder):
    write_split(folder, [(np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint16))])
    cv2.imwrite(os.path.join(folder, "rgb", "001.png"), np.zeros((40, 64, 3), np.uint8))
    cv2.imwrite(os.path.join(folder, "thermal", "001.png"), np.zeros((48, 64), np.uint16))
    return str(folder)


def shuffled_split(folder, rig):
    pairs = sy.road_pairs(rig, 6, seed=4)
    return write_split(folder, [(pairs[k][0], pairs[(k + 1) % 6][1]) for k in range(6)])


@pytest.mark.parametrize("case, code, message", [
    ("no structure", EXIT_REFUSED, "refused: too little shared structure"),
    ("board not found", EXIT_REFUSED, "refused: checkerboard 7x5 (inner corners) not found"),
    ("mismatched content", EXIT_REFUSED, "refused: no consistent alignment"),
    ("unpaired stems", EXIT_ERROR, "unpaired file"),
    ("unreadable image", EXIT_ERROR, "unreadable image"),
    ("mixed sizes", EXIT_ERROR, "calibrate one camera pair at a time"),
    ("missing folder", EXIT_ERROR, "does not exist"),
    ("no rgb/ folder", EXIT_ERROR, "lacks rgb/"),
    ("bad prior", EXIT_ERROR, "neither an existing file nor 9 numbers"),
    ("board without pattern", EXIT_ERROR, "needs --pattern"),
])
def test_every_refusal_exits_non_zero_and_writes_nothing(case, code, message, rig, road_split, tmp_path, capsys):
    folder = str(tmp_path / "in")
    extra: list[str] = []
    if case == "no structure":
        flat_split(folder)
    elif case == "board not found":
        write_split(folder, [(p[0], p[1]) for p in sy.road_pairs(rig, 2, seed=1)])
        extra = ["--target", "checkerboard", "--pattern", "7x5"]
    elif case == "mismatched content":
        shuffled_split(folder, rig)
    elif case == "unpaired stems":
        unpaired_split(folder)
    elif case == "unreadable image":
        corrupt_split(folder)
    elif case == "mixed sizes":
        mixed_sizes_split(folder)
    elif case == "no rgb/ folder":
        os.makedirs(os.path.join(folder, "thermal"))
    elif case == "bad prior":
        folder, extra = road_split, ["--init", "1,2,3"]
    elif case == "board without pattern":
        folder, extra = road_split, ["--target", "checkerboard"]
    out, report = tmp_path / "calib.yaml", tmp_path / "report"
    exit_code, _, stderr = run_cli(["--pairs", folder, *extra, "--out", str(out), "--report", str(report)], capsys)
    assert exit_code == code
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("rgbt-calibrate: ")
    assert "Traceback" not in stderr
    assert not out.exists() and not report.exists()
