"""rosbag2 writing/reading (bag_io) and the camera timeline of rgbt-make-bag."""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from rgbt_perception.io.bag import (
    LABEL_BOXES_TOPIC,
    LABEL_TOPIC,
    RGB_FRAME_ID,
    RGB_TOPIC,
    THERMAL_FRAME_ID,
    THERMAL_TOPIC,
    BagError,
    BagReader,
    BagWriter,
    BoxesFrame,
    array_to_image_msg,
    typestore,
)
from training.recording import DEFAULT_START_NS, TimelineConfig, write_scenes_bag

CLASS_NAMES = [f"class{i}" for i in range(9)]


def make_scenes(count: int, thermal_dtype=np.uint16, size=(24, 32)) -> list[dict]:
    """Scenes whose pixels encode their index, so a frame tells which scene it shows."""
    rng = np.random.default_rng(1)
    scenes = []
    for i in range(count):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        rgb[0, 0] = i
        if thermal_dtype == np.uint16:
            thermal = rng.integers(0, 65536, size, dtype=np.uint16)
            thermal[0, 0] = 40000 + i  # beyond 8 bits: must survive unscaled
        else:
            thermal = rng.integers(0, 256, size, dtype=np.uint8)
            thermal[0, 0] = i
        label = np.full(size, i % 9, np.uint8)
        label[:2] = 255
        scenes.append({"rgb": rgb, "thermal": thermal, "label": label,
                       "boxes": np.array([[1.0, 2.0, 10.0 + i, 12.0]], np.float32),
                       "box_labels": np.array([1 + i % 3], np.int64), "name": f"s{i}"})
    return scenes


def read_all(path) -> list:
    with BagReader(path) as reader:
        return list(reader.frames())


@pytest.mark.parametrize("storage,version", [("mcap", 9), ("mcap", 8), ("sqlite3", 9), ("sqlite3", 8)])
def test_round_trip_keeps_values_stamps_and_encodings(tmp_path, storage, version):
    scenes = make_scenes(5)
    timeline = TimelineConfig(rgb_rate=30.0, thermal_rate=8.7, thermal_delay=0.15, jitter_ms=3.0)
    bag = tmp_path / "bag"
    counts = write_scenes_bag(scenes, str(bag), CLASS_NAMES, timeline, storage=storage, version=version, seed=3)

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == version
    assert meta["storage_identifier"] == storage
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert any(name.endswith(suffix) for name in os.listdir(bag))

    frames = read_all(bag)
    by_topic: dict[str, list] = {}
    for frame in frames:
        by_topic.setdefault(frame.topic, []).append(frame)
    assert {t: len(v) for t, v in by_topic.items()} == counts
    # One thermal frame per scene (the slower camera), 30/8.7 RGB frames per scene.
    assert len(by_topic[THERMAL_TOPIC]) == 5
    assert len(by_topic[RGB_TOPIC]) == pytest.approx(5 * 30 / 8.7, abs=1)
    assert len(by_topic[LABEL_TOPIC]) == len(by_topic[RGB_TOPIC]) == len(by_topic[LABEL_BOXES_TOPIC])

    log_times = [f.log_time_ns for f in frames]
    assert log_times == sorted(log_times), "messages must be recorded in arrival order"

    for frame in by_topic[THERMAL_TOPIC]:
        scene = int(frame.image[0, 0]) - 40000
        assert frame.encoding == "mono16" and frame.image.dtype == np.uint16
        assert frame.frame_id == THERMAL_FRAME_ID
        np.testing.assert_array_equal(frame.image, scenes[scene]["thermal"])
        delay_ms = (frame.log_time_ns - frame.stamp_ns) / 1e6
        assert 150.0 <= delay_ms <= 153.0 + 1e-6
    for frame in by_topic[RGB_TOPIC]:
        scene = int(frame.image[0, 0, 0])
        assert frame.encoding == "rgb8" and frame.frame_id == RGB_FRAME_ID
        np.testing.assert_array_equal(frame.image, scenes[scene]["rgb"])
        assert 0 <= frame.log_time_ns - frame.stamp_ns <= 3_000_000
    rgb_stamps = [f.stamp_ns for f in by_topic[RGB_TOPIC]]
    # RGB stamps: 30 Hz with at most +-3 ms jitter.
    gaps_ms = np.diff(rgb_stamps) / 1e6
    assert np.all(np.abs(gaps_ms - 1000 / 30) <= 6.0 + 1e-6)
    assert rgb_stamps[0] >= DEFAULT_START_NS
    # Labels and boxes carry their RGB frame's stamp and show the same scene.
    rgb_scene = {f.stamp_ns: int(f.image[0, 0, 0]) for f in by_topic[RGB_TOPIC]}
    for frame in by_topic[LABEL_TOPIC]:
        assert frame.encoding == "mono8"
        np.testing.assert_array_equal(frame.image, scenes[rgb_scene[frame.stamp_ns]]["label"])
    for frame in by_topic[LABEL_BOXES_TOPIC]:
        assert isinstance(frame, BoxesFrame)
        scene = scenes[rgb_scene[frame.stamp_ns]]
        np.testing.assert_allclose(frame.boxes, scene["boxes"])
        np.testing.assert_array_equal(frame.labels, scene["box_labels"])
        assert frame.names == [CLASS_NAMES[int(scene["box_labels"][0])]]


def test_eight_bit_thermal_is_written_as_mono8(tmp_path):
    scenes = make_scenes(2, thermal_dtype=np.uint8)
    write_scenes_bag(scenes, str(tmp_path / "bag"), CLASS_NAMES, seed=0)
    thermal = [f for f in read_all(tmp_path / "bag") if f.topic == THERMAL_TOPIC]
    assert [f.encoding for f in thermal] == ["mono8", "mono8"]
    for frame in thermal:
        np.testing.assert_array_equal(frame.image, scenes[int(frame.image[0, 0])]["thermal"])


def test_synchroniser_pairs_each_thermal_frame_with_rgb_of_its_scene(tmp_path):
    from rgbt_perception.core.sync import ApproximateTimeSynchronizer, SimpleFilter

    write_scenes_bag(make_scenes(8), str(tmp_path / "bag"), CLASS_NAMES, seed=5)
    rgb_in, thermal_in = SimpleFilter(), SimpleFilter()
    sync = ApproximateTimeSynchronizer([rgb_in, thermal_in], 10, 0.05)
    pairs = []
    sync.registerCallback(lambda rgb, thermal: pairs.append((rgb, thermal)))
    for frame in read_all(tmp_path / "bag"):
        if frame.topic == RGB_TOPIC:
            rgb_in.signalMessage(frame)
        elif frame.topic == THERMAL_TOPIC:
            thermal_in.signalMessage(frame)
    assert len(pairs) == 8
    for rgb, thermal in pairs:
        assert int(rgb.image[0, 0, 0]) == int(thermal.image[0, 0]) - 40000
        assert abs(rgb.stamp_ns - thermal.stamp_ns) < 1e9 / 60 + 6e6


def test_timeline_with_equal_rates_gives_one_frame_each_per_scene(tmp_path):
    counts = write_scenes_bag(make_scenes(4), str(tmp_path / "bag"), CLASS_NAMES,
                              TimelineConfig(rgb_rate=10.0, thermal_rate=10.0, thermal_delay=0.0, jitter_ms=0.0))
    assert counts[RGB_TOPIC] == counts[THERMAL_TOPIC] == 4


@pytest.mark.parametrize("field,value", [("rgb_rate", 0.0), ("thermal_delay", -0.1), ("jitter_ms", 20.0)])
def test_bad_timeline_is_refused_with_its_name(tmp_path, field, value):
    cfg = TimelineConfig(**{field: value})
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        write_scenes_bag(make_scenes(1), str(tmp_path / "bag"), CLASS_NAMES, cfg)


def test_unknown_encoding_is_a_clear_error(tmp_path):
    store = typestore()
    msg = array_to_image_msg(np.zeros((4, 6), np.uint8), "mono8", 5, RGB_FRAME_ID)
    msg.encoding = "yuv422_weird"
    with BagWriter(tmp_path / "bag") as bag:
        bag.write_image(THERMAL_TOPIC, np.zeros((4, 6), np.uint8), "mono8", 1, THERMAL_FRAME_ID)
        bag.write_raw(RGB_TOPIC, msg.__msgtype__, store.serialize_cdr(msg, msg.__msgtype__), 5)
    with BagReader(tmp_path / "bag") as reader:
        frames = reader.frames()
        assert next(frames).topic == THERMAL_TOPIC  # what precedes the fault is delivered
        with pytest.raises(BagError, match="yuv422_weird"):
            next(frames)


def test_missing_topic_and_missing_bag_are_clear_errors(tmp_path):
    with BagWriter(tmp_path / "bag", storage="sqlite3", version=8) as bag:
        bag.write_image(RGB_TOPIC, np.zeros((4, 6, 3), np.uint8), "rgb8", 1, RGB_FRAME_ID)
    with BagReader(tmp_path / "bag") as reader:
        with pytest.raises(BagError, match="lacks topic.*thermal/image.*holds: rgb/image"):
            reader.require_topics([RGB_TOPIC, THERMAL_TOPIC])
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nothing")
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "bag")


def test_writer_refuses_mismatched_arrays(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        with pytest.raises(BagError, match="mono16 needs uint16"):
            bag.write_image(THERMAL_TOPIC, np.zeros((4, 6), np.uint8), "mono16", 1, THERMAL_FRAME_ID)
        with pytest.raises(BagError, match="3 channel"):
            bag.write_image(RGB_TOPIC, np.zeros((4, 6), np.uint8), "rgb8", 1, RGB_FRAME_ID)
