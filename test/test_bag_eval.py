"""rgbt-make-bag and rgbt-eval-bag on a small synthetic recording: offline, live, bad bags."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from rgbt_perception.cli import eval_bag
from rgbt_perception.io.bag import RGB_FRAME_ID, RGB_TOPIC, THERMAL_TOPIC, BagReader, BagWriter, typestore
from training.cli import make_bag

SIZE = (64, 96)
SCENES = 4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Synthetic val split, micro weights and a bag made from them by the rgbt-make-bag CLI."""
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet
    from training.synth.scenes import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("bag_eval")
    data = root / "synth"
    generate_dataset(str(data), 0, SCENES, 0, seed=3, cfg=SynthConfig(size=SIZE, thermal_size=(48, 64)), progress=False)
    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=SYNTHETIC.num_classes, input_size=SIZE)
    weights = root / "micro.safetensors"
    save_weights(weights, RGBTNet(config).eval(), WeightsMetadata.for_model(config, SYNTHETIC))
    bag = root / "drive"
    assert make_bag.main(["--dataset", "synthetic", "--root", str(data), "--split", "val", "--out", str(bag),
                          "--storage", "sqlite3", "--version", "8", "--seed", "1"]) == 0
    return {"root": root, "data": data, "weights": weights, "bag": bag}


def load_metrics(out) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def test_make_bag_records_the_split_with_raw_thermal_counts(workspace):
    from training.datasets import build_dataset

    dataset = build_dataset("synthetic", str(workspace["data"]), "val")
    with BagReader(workspace["bag"]) as reader:
        assert reader.custom_data["rgbt.dataset"] == "synthetic"
        np.testing.assert_allclose(reader.thermal_to_rgb(), dataset[0]["homography"])
        thermal = [f for f in reader.frames([THERMAL_TOPIC])]
    assert len(thermal) == SCENES
    for index, frame in enumerate(thermal):
        assert frame.encoding == "mono16"
        np.testing.assert_array_equal(frame.image, dataset[index]["thermal"])
        assert frame.image.max() > 255


def test_make_bag_bad_root_is_a_clear_error(tmp_path, capsys):
    code = make_bag.main(["--dataset", "synthetic", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("rgbt-make-bag: ") and str(tmp_path / "none") in err and "\n" not in err
    assert not (tmp_path / "b").exists()


def test_offline_scores_equal_rgbt_eval_on_the_same_frames(workspace, tmp_path):
    from training.evaluate import evaluate_weights

    out = tmp_path / "offline"
    assert eval_bag.main([str(workspace["bag"]), "--weights", str(workspace["weights"]), "--out", str(out),
                          "--device", "cpu"]) == 0
    reference = evaluate_weights(str(workspace["weights"]), str(workspace["data"]), "synthetic", "val",
                                 str(tmp_path / "rgbt_eval"), device="cpu", progress=False, num_overlays=0)
    ours = load_metrics(out)

    replay = ours["replay"]
    assert replay["mode"] == "offline" and not replay["partial"]
    assert replay["pairs_formed"] == replay["frames_scored"] == SCENES
    assert replay["frames_dropped"] == 0
    assert replay["sync_skew_ms"]["count"] == SCENES and replay["sync_skew_ms"]["max"] < 1000 / 60 + 6
    assert replay["latency_ms"]["count"] == SCENES

    seg, ref_seg = ours["segmentation"], reference["segmentation"]
    assert seg["confusion_matrix"] == ref_seg["confusion_matrix"]
    for key in ("miou", "miou_no_bg", "macc", "pixel_acc"):
        assert seg["overall"][key] == pytest.approx(ref_seg["overall"][key], nan_ok=True)
    det, ref_det = ours["detection"]["overall"], reference["detection"]["overall"]
    assert det["gt_boxes"] == ref_det["gt_boxes"] > 0
    assert det["pred_boxes"] == ref_det["pred_boxes"]
    assert det["map_50"] == pytest.approx(ref_det["map_50"], nan_ok=True)
    assert det["map_50_95"] == pytest.approx(ref_det["map_50_95"], nan_ok=True)

    report = (out / "report.md").read_text()
    assert "| mode | offline |" in report and "| frames scored | 4 |" in report
    assert "mIoU w/o bg" in report and "| car |" in report and "mAP@0.5" in report
    for name in ("latency_histogram.png", "sync_skew.png", "confusion_matrix.png"):
        assert cv2.imread(str(out / name)) is not None, name
    assert replay["overlay_frames"] and all(cv2.imread(str(out / p)) is not None for p in replay["overlay_frames"])
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == SCENES


def test_live_replay_through_the_real_node(workspace, tmp_path):
    out = tmp_path / "live"
    code = eval_bag.main([str(workspace["bag"]), "--weights", str(workspace["weights"]), "--out", str(out),
                          "--live", "--device", "cpu", "--node-timeout", "120"])
    replay = load_metrics(out)["replay"]
    assert code == 0, (out / "node.log").read_text()
    assert replay["mode"] == "live" and not replay["partial"]
    # Every pair the node formed was either answered (and scored: all frames are labelled) or dropped.
    assert replay["pairs_formed"] >= SCENES
    assert replay["frames_scored"] + replay["frames_dropped"] == replay["pairs_formed"]
    assert replay["frames_unlabelled"] == 0
    assert replay["node"]["frames_processed"] == replay["frames_scored"] > 0
    assert replay["latency_ms"]["count"] == replay["frames_scored"]
    assert replay["latency_ms"]["p50"] > 0
    with BagReader(out / "node_outputs") as outputs:
        assert outputs.count("semantic") == replay["frames_scored"]
        assert outputs.count("detections") == replay["frames_scored"]
        assert outputs.count("status") >= 1
    report = (out / "report.md").read_text()
    assert "| mode | live |" in report and f"| frames dropped | {replay['frames_dropped']} |" in report
    for name in ("latency_histogram.png", "sync_skew.png", "overlay.mp4"):
        assert (out / name).stat().st_size > 0


# ---- bad bags ----------------------------------------------------------------------------

def run_eval(bag, workspace, out, capsys) -> tuple[int, str, dict]:
    code = eval_bag.main([str(bag), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu",
                          "--no-video"])
    err = capsys.readouterr().err
    return code, err, load_metrics(out)


def assert_partial(code: int, err: str, metrics: dict, out, *fragments: str) -> None:
    assert code == 1
    # stderr also carries the progress bar; the error is one line of its own.
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("rgbt-eval-bag: ")]
    assert len(errors) == 1, err
    first = errors[0]
    for fragment in fragments:
        assert fragment in first, (fragment, first)
    assert "Traceback" not in err
    assert metrics["replay"]["partial"] is True
    assert "PARTIAL REPORT" in (out / "report.md").read_text()


def assert_refused(code: int, err: str, out, *fragments: str) -> None:
    """A bag that never opened: one error line, and no report (there is nothing to report on)."""
    assert code == 1
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("rgbt-eval-bag: "), err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in err
    assert not out.exists()


def copy_bag(source, target, rewrite=None, before=None) -> None:
    """Copy a bag message by message; ``rewrite(topic, index, msg)`` may change decoded messages,
    ``before(topic, msg, writer)`` may write extra messages ahead of one."""
    from rosbags.rosbag2 import Reader

    store = typestore()
    seen: dict[str, int] = {}
    with Reader(source) as reader, BagWriter(target, storage="mcap") as writer:
        for connection, log_time, raw in reader.messages():
            index = seen.get(connection.topic, 0)
            seen[connection.topic] = index + 1
            msg = store.deserialize_cdr(raw, connection.msgtype)
            if rewrite is not None:
                msg = rewrite(connection.topic, index, msg)
            if before is not None:
                before(connection.topic, msg, writer, log_time)
            writer.write_msg(connection.topic, msg, log_time)


def test_missing_topic(workspace, tmp_path, capsys):
    bag = tmp_path / "rgb_only"
    with BagWriter(bag) as writer:
        writer.write_image(RGB_TOPIC, np.zeros((*SIZE, 3), np.uint8), "rgb8", 1_000, RGB_FRAME_ID)
    out = tmp_path / "out"
    code, err, metrics = run_eval(bag, workspace, out, capsys)
    assert_partial(code, err, metrics, out, "lacks topic(s) thermal/image")
    assert metrics["replay"]["frames_scored"] == 0 and metrics["segmentation"] is None


def test_unknown_encoding_keeps_the_frames_scored_before(workspace, tmp_path, capsys):
    def rewrite(topic, index, msg):
        if topic == RGB_TOPIC and index >= 8:  # the third scene onwards
            msg.encoding = "fancy_raw10"  # no codec reads it
        return msg

    bag = tmp_path / "weird"
    copy_bag(workspace["bag"], bag, rewrite)
    out = tmp_path / "out"
    code, err, metrics = run_eval(bag, workspace, out, capsys)
    assert_partial(code, err, metrics, out, "fancy_raw10", "rgb/image")
    scored = metrics["replay"]["frames_scored"]
    assert 1 <= scored < SCENES
    assert metrics["segmentation"]["samples"] == scored


def test_truncated_file(workspace, tmp_path, capsys):
    bag = tmp_path / "truncated"
    copy_bag(workspace["bag"], bag)
    data = next(p for p in bag.iterdir() if p.suffix == ".mcap")
    with open(data, "r+b") as f:
        f.truncate(int(data.stat().st_size * 0.6))
    out = tmp_path / "out"
    code = eval_bag.main([str(bag), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu"])
    # MCAP keeps its index at the end: without it the bag never opens.
    assert_refused(code, capsys.readouterr().err, out, str(bag), "truncated or corrupt")


def test_corrupt_chunk_keeps_the_frames_scored_before(workspace, tmp_path, capsys):
    from training.datasets import build_dataset

    third_scene = build_dataset("synthetic", str(workspace["data"]), "val")[2]["rgb"]
    padded = [False]

    def pad_before_third_scene(topic, msg, writer, log_time):
        # A 1.2 MB message closes the storage chunk, so the third scene starts a chunk of its own.
        if topic == RGB_TOPIC and not padded[0] and np.array_equal(np.asarray(msg.data)[:512],
                                                                    third_scene.reshape(-1)[:512]):
            writer.write_image("padding/image", np.zeros((1000, 1200), np.uint8), "mono8", log_time, "none",
                               log_time)
            padded[0] = True

    bag = tmp_path / "damaged"
    copy_bag(workspace["bag"], bag, before=pad_before_third_scene)
    assert padded[0]
    data = next(p for p in bag.iterdir() if p.suffix == ".mcap")
    content = bytearray(data.read_bytes())
    start = content.find(third_scene.tobytes()[:512])
    assert start > 1_200_000
    content[start - 100:start] = b"\xff" * 100  # the record framing of that RGB message
    data.write_bytes(bytes(content))
    out = tmp_path / "out"
    code, err, metrics = run_eval(bag, workspace, out, capsys)
    assert_partial(code, err, metrics, out, str(bag), "truncated or corrupt")
    scored = metrics["replay"]["frames_scored"]
    assert 1 <= scored < SCENES
    assert metrics["segmentation"]["samples"] == scored


def test_corrupt_database(workspace, tmp_path, capsys):
    bag = tmp_path / "corrupt"
    shutil.copytree(workspace["bag"], bag)
    data = next(p for p in bag.iterdir() if p.suffix == ".db3")
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(5).bytes(size // 3))
    out = tmp_path / "out"
    code = eval_bag.main([str(bag), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu"])
    # SQLite checks the file when it opens it: a malformed database never opens.
    assert_refused(code, capsys.readouterr().err, out, str(bag), "cannot be opened", "malformed")


def test_cli_process_reports_bad_bag_without_traceback(workspace, tmp_path, repo_root):
    bag = tmp_path / "thermal_only"
    with BagWriter(bag) as writer:
        writer.write_image(THERMAL_TOPIC, np.zeros(SIZE, np.uint16), "mono16", 1_000, "thermal_camera")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "rgbt_perception.cli.eval_bag", str(bag), "--weights",
                           str(workspace["weights"]), "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "lacks topic(s) rgb/image" in proc.stderr
    assert (tmp_path / "out" / "report.md").exists()


# ---- paths that are no bag, bags without labels -----------------------------------------

@pytest.mark.parametrize("make,words", [
    (lambda d: (d / "notes.txt").write_text("not a bag"), "is not a rosbag2 bag: the folder has no metadata.yaml"),
    (lambda d: (d / "drive_0.mcap").write_bytes(b"\x89MCAP0\r\n"), "it holds drive_0.mcap: give that file instead"),
])
def test_folder_that_is_not_a_bag_is_named_and_gets_no_report(workspace, tmp_path, capsys, make, words):
    folder = tmp_path / "photos"
    folder.mkdir()
    make(folder)
    out = tmp_path / "out"
    code = eval_bag.main([str(folder), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert_refused(code, err, out, str(folder), words)
    assert "truncated or corrupt" not in err


def test_file_that_is_not_a_bag(workspace, tmp_path, capsys):
    notes = tmp_path / "drive.txt"
    notes.write_text("not a bag")
    out = tmp_path / "out"
    code = eval_bag.main([str(notes), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu"])
    assert_refused(code, capsys.readouterr().err, out, "is not a rosbag2 bag: expected a bag folder (with "
                   "metadata.yaml) or a .mcap")


def test_bag_without_labels_says_what_it_scores(workspace, tmp_path, capsys):
    """A drive recorded straight from the drivers: Bayer RGB (Blackfly) and 16UC1 thermal, no labels."""
    bag = tmp_path / "unlabelled"
    with BagWriter(bag) as writer:
        for k in range(3):
            stamp = 1_000_000_000 + k * 100_000_000
            writer.write_image(RGB_TOPIC, np.full(SIZE, 40 * k, np.uint8), "bayer_rggb8", stamp, RGB_FRAME_ID)
            writer.write_image(THERMAL_TOPIC, np.full(SIZE, 1000 * k, np.uint16), "16UC1", stamp + 1_000,
                               "thermal_camera")
    with BagReader(bag) as reader:  # read as the node reads them
        rgb, thermal = next(reader.frames([RGB_TOPIC])), next(reader.frames([THERMAL_TOPIC]))
    assert rgb.encoding == "bayer_rggb8" and rgb.image.shape == (*SIZE, 3) and rgb.image.dtype == np.uint8
    assert thermal.image.shape == SIZE and thermal.image.dtype == np.uint16
    out = tmp_path / "out"
    code = eval_bag.main([str(bag), "--weights", str(workspace["weights"]), "--out", str(out), "--device", "cpu",
                          "--no-video"])
    console = capsys.readouterr().out
    assert code == 0
    assert "no labels/image or labels/boxes messages: scoring latency, drops and sync only" in console
    replay = load_metrics(out)["replay"]
    assert replay["pairs_formed"] == 3 and replay["frames_unlabelled"] == 3 and replay["frames_scored"] == 0
    assert replay["latency_ms"]["count"] == 3
