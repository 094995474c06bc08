"""The node's graph-free logic: parameters, input checks, hand-over, counters, degraded mode."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rgbt_perception.core.image_codec import InProjectCvBridge
from rgbt_perception.node.health import ERROR, OK, WARN, NodeHealth
from rgbt_perception.node.logic import (
    FrameDecoder,
    InputRejected,
    ModalityMonitor,
    NewestOnlyQueue,
    OutputGeometry,
    RejectionLog,
    RollingWindow,
    UnsupportedEncoding,
    WorkItem,
)
from rgbt_perception.node.parameters import (
    DEFAULT_WEIGHTS,
    PARAMETER_SPECS,
    PARAMETERS,
    check_parameter,
    resolve_weights,
)

bridge = InProjectCvBridge()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def image(array: np.ndarray, encoding: str, frame_id: str = "cam", sec: int = 5) -> Image:
    msg = bridge.cv2_to_imgmsg(array, encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = sec
    return msg


# -- parameters ---------------------------------------------------------------------------


def test_defaults_pass_their_own_checks():
    for spec in PARAMETERS:
        assert check_parameter(spec.name, spec.default) is None, spec.name
    assert set(PARAMETER_SPECS) >= {
        "weights", "device", "precision", "sync.slop", "sync.queue_size", "score_threshold", "nms_iou",
        "thermal_to_rgb", "modality_timeout", "qos.reliability", "publish_color", "autostart", "rgb_transport",
    }


@pytest.mark.parametrize("name,value,words", [
    ("sync.slop", -1.0, "sync.slop must lie in"),
    ("sync.slop", float("nan"), "sync.slop must be a number"),
    ("precision", "fp8", "precision must be one of fp32, fp16, bf16"),
    ("device", "gpu", "device must be auto, cpu, cuda or cuda:N"),
    ("device", "cuda:x", "device must be"),
    ("qos.reliability", "sometimes", "qos.reliability must be one of"),
    ("rgb_transport", "theora", "rgb_transport must be one of"),
    ("thermal_to_rgb", [0.0] * 9, "thermal_to_rgb: homography is singular"),
    ("thermal_to_rgb", [1.0, 2.0], "thermal_to_rgb: homography must be 9 numbers"),
    ("weights", "model.pt", "weights must name a .safetensors file"),
    ("sync.queue_size", 0, "sync.queue_size must lie in"),
    ("score_threshold", 1.5, "score_threshold must lie in"),
])
def test_bad_values_are_refused_naming_the_parameter(name, value, words):
    reason = check_parameter(name, value)
    assert reason is not None and words in reason


def test_good_values_pass():
    assert check_parameter("device", "cuda:1") is None
    assert check_parameter("thermal_to_rgb", [1.1, 0, 3, 0, 1.1, -2, 0, 0, 1]) is None
    assert check_parameter("unknown.parameter", 3) is None


def test_weights_resolution():
    assert resolve_weights("") == DEFAULT_WEIGHTS
    assert str(resolve_weights("/x/y.safetensors")) == "/x/y.safetensors"


# -- input frames -------------------------------------------------------------------------


def test_rgb_frames_come_out_as_rgb():
    decoder = FrameDecoder("rgb")
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR order
    frame = decoder.decode(image(bgr, "bgr8"), arrival_ns=7)
    assert frame.image.shape == (4, 6, 3) and frame.image[0, 0, 2] == 200 and frame.image[0, 0, 0] == 0
    assert frame.stamp_ns == 5_000_000_000 and frame.arrival_ns == 7 and frame.header.frame_id == "cam"
    mono = decoder.decode(image(np.full((4, 6), 9, np.uint8), "mono8"))
    assert mono.image.shape == (4, 6, 3) and (mono.image == 9).all()


def test_compressed_rgb_is_decoded():
    decoder = FrameDecoder("rgb")
    msg = bridge.cv2_to_compressed_imgmsg(np.full((8, 8, 3), (0, 0, 255), np.uint8), "png")  # red in BGR
    msg.header = Header(frame_id="cam")
    frame = decoder.decode(msg)
    assert tuple(frame.image[0, 0]) == (255, 0, 0)
    bad = CompressedImage(format="jpeg", data=b"\x00\x01")
    bad.header.frame_id = "cam"
    with pytest.raises(InputRejected, match="rgb: could not decode"):
        decoder.decode(bad)


def test_thermal_keeps_raw_counts_big_endian():
    counts = np.array([[100, 40000], [65535, 3]], np.uint16)
    msg = image(counts.astype(">u2"), "mono16")
    assert msg.is_bigendian
    frame = FrameDecoder("thermal").decode(msg)
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, counts)


@pytest.mark.parametrize("modality,make,words", [
    ("rgb", lambda: image(np.zeros((2, 2), np.float32), "32FC1"), "rgb: unsupported encoding '32FC1'"),
    ("thermal", lambda: image(np.zeros((2, 2, 3), np.uint8), "rgb8"), "thermal: unsupported encoding 'rgb8'"),
    ("thermal", lambda: Image(height=2, width=2, encoding="mono16", step=4, data=b"\x00" * 7),
     "thermal: data length 7 != step x height"),
    ("rgb", lambda: Image(height=0, width=0, encoding="rgb8", step=0, data=b""), "rgb: zero-size image"),
    ("thermal", lambda: image(np.array([[1.0, np.nan]], np.float32), "32FC1"), "thermal: thermal has non-finite"),
    ("thermal", lambda: Image(height=2, width=4, encoding="mono16", step=6, data=b"\x00" * 12),
     "thermal: step 6 is smaller than"),
])
def test_bad_inputs_are_rejected_naming_the_problem(modality, make, words):
    with pytest.raises(InputRejected) as info:
        FrameDecoder(modality).decode(make())
    assert words in str(info.value)


def _bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    """The RGGB mosaic a Bayer sensor records of ``rgb`` (H, W even)."""
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def _raw(array: np.ndarray, encoding: str) -> Image:
    """An Image of ``array``'s bytes under ``encoding`` (as a driver writes it)."""
    data = np.ascontiguousarray(array)
    msg = Image(height=data.shape[0], width=data.shape[1], encoding=encoding, is_bigendian=0,
                step=data.strides[0], data=data.tobytes())
    msg.header.frame_id = "cam"
    msg.header.stamp.sec = 5
    return msg


def test_every_colour_encoding_of_common_drivers_comes_out_as_rgb():
    """What Blackfly (Bayer), usb_cam (YUV), RealSense (rgb8) and cv2_to_imgmsg(bgr) (8UC3) publish."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[...] = (200, 120, 40)  # flat colour: demosaicing and chroma subsampling reproduce it closely
    bgr = rgb[..., ::-1]
    # 4:2:2 YUV bytes: per pixel pair Y0 U Y1 V (YUYV) / U Y0 V Y1 (UYVY); decoded by OpenCV's rule below.
    rng = np.random.default_rng(0)
    yuy2 = rng.integers(16, 236, (4, 6, 2), dtype=np.uint8)
    uyvy = yuy2[..., ::-1].copy()
    cases = {
        "rgb8": _raw(rgb, "rgb8"), "bgr8": _raw(bgr, "bgr8"), "8UC3": bridge.cv2_to_imgmsg(np.ascontiguousarray(bgr)),
        "rgba16": _raw(np.dstack([rgb, np.full((4, 6), 255, np.uint8)]).astype(np.uint16) * 257, "rgba16"),
        "bayer_rggb8": _raw(_bayer_rggb(rgb), "bayer_rggb8"),
    }
    decoder = FrameDecoder("rgb")
    for encoding, msg in cases.items():
        msg.header.frame_id = "cam"
        frame = decoder.decode(msg)
        assert frame.image.shape == (4, 6, 3) and frame.image.dtype == np.uint8, encoding
        assert np.abs(frame.image.astype(int) - rgb).max() <= 3, (encoding, frame.image[1, 1])
    for encoding, pixels, code in (("yuv422_yuy2", yuy2, cv2.COLOR_YUV2RGB_YUY2),
                                   ("yuv422", uyvy, cv2.COLOR_YUV2RGB_UYVY)):
        frame = decoder.decode(_raw(pixels, encoding))
        np.testing.assert_array_equal(frame.image, cv2.cvtColor(pixels, code), err_msg=encoding)


def test_every_thermal_type_keeps_its_depth_also_as_png():
    counts = np.array([[100, 40000], [65535, 3]], np.uint16)
    decoder = FrameDecoder("thermal")
    for msg, dtype in ((_raw(counts, "16UC1"), np.uint16), (_raw(counts.astype(np.uint8), "mono8"), np.uint8),
                       (_raw(counts.astype(np.uint8), "8UC1"), np.uint8),
                       (_raw(counts.astype(np.float32) / 100, "32FC1"), np.float32)):
        frame = decoder.decode(msg)
        assert frame.image.dtype == dtype and frame.image.shape == (2, 2), msg.encoding
    # compressed_image_transport sends 16-bit images as PNG: the counts come back exactly.
    ok, png = cv2.imencode(".png", counts)
    msg = CompressedImage(format="mono16; png compressed ", data=png.tobytes())
    msg.header.frame_id = "cam"
    frame = decoder.decode(msg)
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, counts)


def test_refused_encoding_names_itself_and_the_camera_geometry():
    msg = _raw(np.zeros((6, 8), np.uint8), "nv21")
    msg.header.frame_id = "rgb_camera"
    with pytest.raises(UnsupportedEncoding) as info:
        FrameDecoder("rgb").decode(msg)
    assert info.value.encoding == "nv21" and info.value.size == (6, 8) and info.value.frame_id == "rgb_camera"
    assert str(info.value).startswith("rgb: unsupported encoding 'nv21'")
    with pytest.raises(UnsupportedEncoding, match="thermal: unsupported encoding 'bgr8'"):
        FrameDecoder("thermal").decode(_raw(np.zeros((2, 2, 3), np.uint8), "bgr8"))


def test_frame_id_change_is_rejected():
    decoder = FrameDecoder("thermal")
    decoder.decode(image(np.zeros((2, 2), np.uint16), "mono16", frame_id="thermal_camera"))
    with pytest.raises(InputRejected, match="frame_id changed from 'thermal_camera' to 'other'"):
        decoder.decode(image(np.zeros((2, 2), np.uint16), "mono16", frame_id="other"))
    # The accepted frame_id stays; a reset (re-activation) forgets it.
    decoder.decode(image(np.zeros((2, 2), np.uint16), "mono16", frame_id="thermal_camera"))
    decoder.reset()
    decoder.decode(image(np.zeros((2, 2), np.uint16), "mono16", frame_id="other"))


def test_float_thermal_passes_when_finite():
    frame = FrameDecoder("thermal").decode(image(np.full((3, 3), 300.5, np.float32), "32FC1"))
    assert frame.image.dtype == np.float32


# -- hand-over and counters ---------------------------------------------------------------


def test_newest_only_queue_keeps_the_newest_and_counts_drops():
    queue: NewestOnlyQueue[int] = NewestOnlyQueue()
    assert queue.put(1) is False
    assert queue.put(2) is True
    assert queue.put(3) is True
    assert queue.take(timeout=0.1) == 3
    queue.done()
    assert queue.take(timeout=0.01) is None
    assert (queue.formed, queue.processed, queue.dropped) == (3, 1, 2)


def test_counters_add_up_with_a_slow_worker():
    queue: NewestOnlyQueue[int] = NewestOnlyQueue()
    stop = threading.Event()
    seen: list[int] = []

    def worker() -> None:
        while not stop.is_set():
            item = queue.take(timeout=0.05)
            if item is None:
                continue
            time.sleep(0.01)
            seen.append(item)
            queue.done(processed=item % 7 != 0)  # some items fail

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(1, 201):
        queue.put(i)
        time.sleep(0.001)
    assert queue.wait_idle(timeout=5.0)
    stop.set()
    queue.close()
    thread.join()
    assert queue.formed == 200
    assert queue.processed + queue.dropped == queue.formed
    assert queue.processed == sum(1 for i in seen if i % 7)
    assert seen[-1] == 200  # the newest item is never lost
    assert seen == sorted(seen)


def test_discard_pending_counts_as_dropped():
    queue: NewestOnlyQueue[int] = NewestOnlyQueue()
    queue.put(1)
    assert queue.discard_pending() == 1
    assert queue.discard_pending() == 0
    assert queue.processed + queue.dropped == queue.formed == 1


def test_work_item_reference_and_skew():
    rgb = FrameDecoder("rgb").decode(image(np.zeros((2, 2, 3), np.uint8), "rgb8", sec=10), arrival_ns=5)
    th_msg = image(np.zeros((2, 2), np.uint16), "mono16", sec=10)
    th_msg.header.stamp.nanosec = 20_000_000
    thermal = FrameDecoder("thermal").decode(th_msg, arrival_ns=9)
    pair = WorkItem(rgb, thermal)
    assert pair.reference is rgb and pair.skew_ms == pytest.approx(20.0) and pair.last_arrival_ns == 9
    alone = WorkItem(None, thermal)
    assert alone.reference is thermal and alone.skew_ms is None


# -- rejection reports, statistics, degraded mode ------------------------------------------


def test_rejection_log_is_rate_limited_per_kind():
    clock = FakeClock()
    log = RejectionLog(interval_s=5.0, clock=clock)
    assert log.record("thermal: data length 7 != step x height = 8") is not None
    assert log.record("thermal: data length 9 != step x height = 8") is None
    assert log.record("rgb: unsupported encoding 'yuv422'") is not None  # another kind logs at once
    clock.now += 6
    line = log.record("thermal: data length 5 != step x height = 8")
    assert line is not None and "1 more like it" in line and "data length 5" in line
    assert log.total == 4 and log.last_reason.startswith("thermal: data length 5")


def test_rolling_window_percentiles_and_rate():
    window = RollingWindow(window_s=10.0)
    for i in range(101):
        window.add(float(i), now=100.0 + i * 0.05)
    assert window.percentile(50, now=105.0) == pytest.approx(50.0)
    assert window.percentile(95, now=105.0) == pytest.approx(95.0)
    assert window.rate(now=105.0) == pytest.approx(20.0)
    assert window.rate(now=200.0) == 0.0 and window.percentile(50, now=200.0) == 0.0


def test_modality_monitor_reports_each_change_once():
    clock = FakeClock()
    monitor = ModalityMonitor(timeout_s=0.5, clock=clock)
    assert monitor.ok("rgb") and monitor.ok("thermal") and monitor.transitions() == []
    clock.now += 0.3
    monitor.seen("rgb")
    clock.now += 0.3
    assert monitor.ok("rgb") and not monitor.ok("thermal")
    assert monitor.transitions() == ["thermal camera silent for more than 0.5 s: publishing from rgb alone"]
    assert monitor.transitions() == []
    monitor.seen("thermal")
    assert monitor.transitions() == ["thermal camera is back: fusing rgb and thermal again"]
    clock.now += 1.0
    assert sorted(monitor.transitions()) == [
        "rgb camera silent for more than 0.5 s: no camera input",
        "thermal camera silent for more than 0.5 s: no camera input",
    ]


def test_slow_camera_needs_more_than_one_lost_frame_to_count_as_silent():
    clock = FakeClock()
    monitor = ModalityMonitor(timeout_s=0.5, clock=clock)
    for _ in range(6):  # thermal at 3 Hz: slower than the timeout allows for one lost frame; rgb at 30 Hz
        for _ in range(10):
            clock.now += 1 / 30
            monitor.seen("rgb")
        monitor.seen("thermal")
    assert monitor.silence_limit("thermal") == pytest.approx(2.5 / 3)
    clock.now += 2 / 3  # one frame lost
    monitor.seen("rgb")
    assert monitor.ok("thermal") and monitor.transitions() == []
    clock.now += 0.2  # silent for 2.6 frame intervals
    monitor.seen("rgb")
    assert not monitor.ok("thermal")
    assert monitor.transitions() == ["thermal camera silent for more than 0.833 s: publishing from rgb alone"]
    # A fast camera keeps the configured timeout.
    assert monitor.silence_limit("rgb") == 0.5 and monitor.ok("rgb")


def _frame(modality: str, shape: tuple, frame_id: str, sec: int = 5):
    dtype, encoding = (np.uint8, "rgb8") if modality == "rgb" else (np.uint16, "mono16")
    return FrameDecoder(modality).decode(image(np.zeros(shape, dtype), encoding, frame_id, sec))


def test_thermal_alone_goes_onto_the_rgb_grid_once_it_is_known():
    geometry = OutputGeometry()
    thermal = _frame("thermal", (24, 32), "thermal_camera")
    before = geometry.work_item(None, thermal)
    assert before.output_size is None and before.output_frame_id is None  # thermal pixels: nothing else known
    rgb = _frame("rgb", (48, 64, 3), "rgb_camera")
    geometry.observe_rgb(rgb.image.shape[:2], rgb.header.frame_id)
    after = geometry.work_item(None, thermal)
    assert after.output_size == (48, 64) and after.output_frame_id == "rgb_camera"
    assert after.reference is thermal
    fused = geometry.work_item(rgb, None)
    assert fused.output_size is None and fused.reference is rgb


def test_refused_camera_is_an_error_with_its_reason():
    health = NodeHealth(NewestOnlyQueue())
    health.rejections.record("rgb: unsupported encoding 'nv21': it does not convert to RGB")
    states = {"rgb": health.camera_state("rgb", False, 0.5), "thermal": health.camera_state("thermal", True, 0.5)}
    assert states == {"rgb": "frames refused: rgb: unsupported encoding 'nv21': it does not convert to RGB",
                      "thermal": "ok"}
    level, message = health.pipeline_state(True, False, True, states)
    assert level == ERROR and message.startswith("degraded: thermal only (rgb frames refused: rgb: unsupported")
    values = health.diagnostic_values(health.status_fields(False, True, "cpu"), states)
    assert values["rgb_ok"] == "false" and values["rgb_state"] == states["rgb"]
    assert health.status_fields(False, True, "cpu")["last_rejection"].startswith("rgb: unsupported encoding")
    # A camera that is merely silent is a warning, with the time it has been silent for.
    silent = {"rgb": "ok", "thermal": health.camera_state("thermal", False, 0.5)}
    assert silent["thermal"] == "no frames for more than 0.5 s"
    assert health.pipeline_state(True, True, False, silent) == (WARN, "degraded: rgb only")
    assert health.pipeline_state(True, True, True, None) == (OK, "fusing rgb and thermal")
