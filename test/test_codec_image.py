"""Image <-> ndarray conversion with the cv_bridge API (in-project bridge, real sensor_msgs)."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rgbt_perception.core import image_codec
from rgbt_perception.core.image_codec import CvBridgeError, InProjectCvBridge

bridge = InProjectCvBridge()
rng = np.random.default_rng(0)


def raw_image(array: np.ndarray, encoding: str, *, big_endian: bool = False, pad: int = 0) -> Image:
    """An Image message built by hand, as a driver would fill it (optional row padding)."""
    height, width = array.shape[:2]
    stored = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = stored.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Image(height=height, width=width, encoding=encoding, is_bigendian=big_endian,
                 step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("encoding,dtype,channels", [
    ("rgb8", np.uint8, 3), ("bgr8", np.uint8, 3), ("mono8", np.uint8, 1), ("8UC1", np.uint8, 1),
    ("mono16", np.uint16, 1), ("16UC1", np.uint16, 1), ("8UC3", np.uint8, 3), ("32FC1", np.float32, 1),
])
def test_round_trip_keeps_values(encoding, dtype, channels):
    shape = (5, 7) if channels == 1 else (5, 7, channels)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    array = (rng.integers(0, info.max, shape, endpoint=True) if info else rng.normal(300, 5, shape)).astype(dtype)
    header = Header(frame_id="cam")
    msg = bridge.cv2_to_imgmsg(array, encoding=encoding, header=header)
    assert isinstance(msg, Image)
    assert msg.encoding == encoding and msg.header.frame_id == "cam"
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_passthrough_writes_opencv_type_names():
    assert bridge.cv2_to_imgmsg(np.zeros((2, 3), np.uint16)).encoding == "16UC1"
    assert bridge.cv2_to_imgmsg(np.zeros((2, 3, 3), np.uint8)).encoding == "8UC3"
    assert bridge.cv2_to_imgmsg(np.zeros((2, 3), np.float32)).encoding == "32FC1"


def test_sixteen_bit_big_endian_keeps_raw_counts():
    counts = np.array([[0, 1, 256, 4095], [30000, 40000, 65534, 65535]], dtype=np.uint16)
    msg = raw_image(counts, "mono16", big_endian=True)
    assert bytes(msg.data[:4]) == bytes([0, 0, 0, 1])  # most significant byte first
    out = bridge.imgmsg_to_cv2(msg)
    assert out.dtype == np.uint16 and out.dtype.byteorder in ("=", "<")
    np.testing.assert_array_equal(out, counts)
    # And the same data little-endian reads the same counts.
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(raw_image(counts, "16UC1")), counts)


def test_big_endian_array_is_flagged_when_encoded():
    counts = np.array([[1, 2], [3, 65535]], dtype=">u2")
    msg = bridge.cv2_to_imgmsg(counts, encoding="mono16")
    assert msg.is_bigendian
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), counts.astype(np.uint16))


@pytest.mark.parametrize("encoding,array", [
    ("rgb8", rng.integers(0, 255, (4, 5, 3)).astype(np.uint8)),
    ("mono16", rng.integers(0, 65535, (4, 5)).astype(np.uint16)),
    ("mono8", rng.integers(0, 255, (3, 5)).astype(np.uint8)),
])
@pytest.mark.parametrize("big_endian", [False, True])
def test_padded_rows_are_skipped(encoding, array, big_endian):
    msg = raw_image(array, encoding, big_endian=big_endian, pad=6)
    assert msg.step > array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), array)


def test_colour_conversions():
    rgb = rng.integers(0, 255, (4, 6, 3)).astype(np.uint8)
    msg = bridge.cv2_to_imgmsg(rgb, "rgb8")
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, "bgr8"), rgb[..., ::-1])
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(rgb[..., ::-1].copy(), "bgr8"), "rgb8"), rgb)
    gray = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(rgb[..., 0].copy(), "mono8"), "rgb8")
    assert gray.shape == (4, 6, 3) and np.array_equal(gray[..., 1], rgb[..., 0])


def test_sixteen_bit_is_never_squeezed_to_eight():
    msg = bridge.cv2_to_imgmsg(np.full((2, 2), 5000, np.uint16), "mono16")
    with pytest.raises(CvBridgeError, match="mono16 to mono8"):
        bridge.imgmsg_to_cv2(msg, "mono8")


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "data length 23 != step x height"),
    (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "zero-size image"),
    (lambda m: setattr(m, "width", 0), "zero-size image"),
    (lambda m: setattr(m, "step", 5), "step 5 is smaller than width x channels x bytes = 6"),
])
def test_bad_messages_raise_errors_naming_the_problem(mutate, message):
    msg = bridge.cv2_to_imgmsg(np.zeros((4, 3), np.uint16), "mono16")
    mutate(msg)
    with pytest.raises(CvBridgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bridge.imgmsg_to_cv2(msg)


def test_encoding_must_match_array():
    with pytest.raises(CvBridgeError, match="rgb8 needs 3 channel"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(CvBridgeError, match="non-empty"):
        bridge.cv2_to_imgmsg(np.zeros((0, 2), np.uint8))


def test_compressed_round_trip():
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[:, :12] = (255, 0, 0)  # blue left half in OpenCV order
    png = bridge.cv2_to_compressed_imgmsg(bgr, dst_format="png")
    assert isinstance(png, CompressedImage) and png.format == "png"
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(png), bgr)
    rgb = bridge.compressed_imgmsg_to_cv2(png, "rgb8")
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    jpeg = bridge.cv2_to_compressed_imgmsg(bgr)
    decoded = bridge.compressed_imgmsg_to_cv2(jpeg, "rgb8")
    assert decoded.shape == (16, 24, 3) and abs(int(decoded[8, 2, 2]) - 255) < 20


def test_compressed_garbage_is_an_error():
    with pytest.raises(CvBridgeError, match="could not decode"):
        bridge.compressed_imgmsg_to_cv2(CompressedImage(format="jpeg", data=b"not an image"))
    with pytest.raises(CvBridgeError, match="empty compressed image"):
        bridge.compressed_imgmsg_to_cv2(CompressedImage(format="jpeg"))


def test_selected_bridge_is_named_and_works():
    assert image_codec.BRIDGE_IMPLEMENTATION in ("cv_bridge", "rgbt_perception.core.image_codec")
    counts = np.array([[7, 65000]], np.uint16)
    b = image_codec.CvBridge()
    np.testing.assert_array_equal(b.imgmsg_to_cv2(b.cv2_to_imgmsg(counts, "mono16")), counts)
