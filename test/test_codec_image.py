"""Image <-> ndarray with the cv_bridge API (in-project bridge, real sensor_msgs): layouts, byte order, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from rgbt_perception.core import image_codec
from rgbt_perception.core.image_codec import ENCODINGS, CvBridgeError, InProjectCvBridge, getCvType

bridge = InProjectCvBridge()
rng = np.random.default_rng(0)
DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64]
DEPTHS = ["8U", "8S", "16U", "16S", "32S", "32F", "64F"]


def raw_image(array: np.ndarray, encoding: str, *, big_endian: bool = False, pad: int = 0) -> Image:
    """An Image message built by hand, as a driver would fill it (optional row padding)."""
    height, width = array.shape[:2]
    stored = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = stored.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Image(height=height, width=width, encoding=encoding, is_bigendian=big_endian,
                 step=padded.shape[1], data=padded.tobytes())


def sample(dtype, shape) -> np.ndarray:
    """Values spanning the type's range (extremes included)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, endpoint=True, dtype=np.int64)
        values.flat[:2] = (info.min, info.max)
        return values.astype(dtype)
    return rng.normal(300, 50, shape).astype(dtype)


@pytest.mark.parametrize("dtype,depth", list(zip(DTYPES, DEPTHS)), ids=DEPTHS)
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4, 5])
def test_every_layout_the_writer_produces_reads_back(dtype, depth, channels):
    """Passthrough names the OpenCV type (7 depths x 1..5 channels) and reading it returns the same array."""
    shape = (5, 7) if channels is None else (5, 7, channels)
    array = sample(dtype, shape)
    msg = bridge.cv2_to_imgmsg(array, header=Header(frame_id="cam"))
    assert msg.encoding == f"{depth}C{channels or 1}" and msg.header.frame_id == "cam"
    assert msg.step == 7 * (channels or 1) * np.dtype(dtype).itemsize and not msg.is_bigendian
    back = bridge.imgmsg_to_cv2(msg)
    assert back.dtype == dtype
    assert back.shape == (shape[:2] if channels == 1 else shape)  # one channel reads back as H x W, like cv_bridge
    np.testing.assert_array_equal(back.reshape(shape), array)
    assert getCvType(msg.encoding) == cv2.CV_MAKETYPE(getattr(cv2, f"CV_{depth}"), channels or 1)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_named_encoding_round_trips(encoding):
    dtype, channels = ENCODINGS[encoding]
    shape = (4, 6) if channels == 1 else (4, 6, channels)
    array = sample(dtype.type, shape)
    msg = bridge.cv2_to_imgmsg(array, encoding)
    assert msg.encoding == encoding
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg).reshape(shape), array)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, encoding).reshape(shape), array)  # same: a copy


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_the_bag_writer_output_reads_back(encoding):
    """rgbt_perception.io.bag writes every layout through rosbags; the codec reads each one back."""
    from rgbt_perception.io.bag import array_to_image_msg

    dtype, channels = ENCODINGS[encoding]
    array = sample(dtype.type, (3, 5) if channels == 1 else (3, 5, channels))
    msg = array_to_image_msg(array, encoding, 123, "cam")
    np.testing.assert_array_equal(image_codec.image_to_array(msg), array)


def test_getcvtype_matches_opencv():
    assert getCvType("bgr8") == getCvType("rgb8") == cv2.CV_8UC3
    assert getCvType("mono16") == getCvType("bayer_gbrg16") == cv2.CV_16UC1
    assert getCvType("yuv422") == getCvType("yuv422_yuy2") == cv2.CV_8UC2
    assert getCvType("rgba16") == cv2.CV_16UC4 and getCvType("8U") == cv2.CV_8UC1 and getCvType("64F") == cv2.CV_64FC1
    assert getCvType("32FC4") != cv2.CV_8UC4
    for unknown in ("nv21", "nv24", "uyvy", "yuyv", "8UC", "8UC0", "16FC1", "rgb"):
        with pytest.raises(RuntimeError, match=rf"Unrecognized image encoding \[{unknown}\]"):
            getCvType(unknown)
    cv = InProjectCvBridge()
    assert cv.encoding_to_dtype_with_channels("bgra16") == ("uint16", 4)
    assert cv.cvtype2_to_dtype_with_channels(cv2.CV_32FC3) == ("float32", 3)
    assert cv.dtype_with_channels_to_cvtype2(np.dtype(np.int16), 2) == "16SC2"


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("pad", [0, 6])
def test_big_endian_data_reads_in_native_order(dtype, channels, pad):
    shape = (3, 5) if channels == 1 else (3, 5, channels)
    array = sample(dtype, shape)
    depth = DEPTHS[DTYPES.index(dtype)]
    msg = raw_image(array, f"{depth}C{channels}", big_endian=True, pad=pad)
    out = bridge.imgmsg_to_cv2(msg)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_sixteen_bit_big_endian_bytes_by_hand():
    counts = np.array([[0, 1, 256, 4095], [30000, 40000, 65534, 65535]], dtype=np.uint16)
    msg = raw_image(counts, "mono16", big_endian=True)
    assert bytes(msg.data[:6]) == bytes([0, 0, 0, 1, 1, 0])  # most significant byte first
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), counts)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(raw_image(counts, "16UC1")), counts)


def test_big_endian_array_is_sent_flagged():
    counts = np.array([[1, 2], [3, 65535]], dtype=">u2")
    msg = bridge.cv2_to_imgmsg(counts, encoding="mono16")
    assert msg.is_bigendian and bytes(msg.data[:2]) == b"\x00\x01"
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), counts.astype(np.uint16))
    signed = np.array([[-5, 7]], dtype=">i4")
    assert bridge.cv2_to_imgmsg(signed).is_bigendian
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(signed)), [[-5, 7]])


@pytest.mark.parametrize("encoding,array", [
    ("rgb8", rng.integers(0, 255, (4, 5, 3)).astype(np.uint8)),
    ("mono16", rng.integers(0, 65535, (4, 5)).astype(np.uint16)),
    ("yuv422", rng.integers(0, 255, (3, 4, 2)).astype(np.uint8)),
    ("bayer_grbg16", rng.integers(0, 65535, (4, 4)).astype(np.uint16)),
    ("32FC2", rng.normal(0, 1, (3, 5, 2)).astype(np.float32)),
])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [1, 6])
def test_padded_rows_are_skipped(encoding, array, big_endian, pad):
    msg = raw_image(array, encoding, big_endian=big_endian, pad=pad)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg), array)


def test_passthrough_shares_unpadded_native_data_like_cv_bridge():
    msg = bridge.cv2_to_imgmsg(np.arange(12, dtype=np.uint16).reshape(3, 4))
    view = bridge.imgmsg_to_cv2(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    converted = bridge.imgmsg_to_cv2(msg, "16UC1")
    assert not np.shares_memory(converted, np.frombuffer(msg.data, np.uint8))


def test_zero_size_message_reads_as_an_empty_array_like_cv_bridge():
    assert bridge.imgmsg_to_cv2(Image(height=0, width=0, encoding="rgb8", step=0, data=b"")).shape == (0, 0, 3)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m, "encoding", "yuv422_weird"), "Unrecognized image encoding [yuv422_weird]"),
    (lambda m: setattr(m, "encoding", "nv21"), "Unrecognized image encoding [nv21]"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]),
     "data length 23 != step x height = 24 (Image is wrongly formed: height * step != size  or  4 * 6 != 23)"),
    (lambda m: setattr(m, "step", 5), "step 5 is smaller than width x channels x bytes = 6, mono16 (Image is wrongly "
                                      "formed: step < width * byte_depth * num_channels  or  5 != 3 * 2 * 1)"),
])
def test_bad_messages_raise_cv_bridge_errors_naming_the_problem(mutate, message):
    msg = bridge.cv2_to_imgmsg(np.zeros((4, 3), np.uint16), "mono16")
    mutate(msg)
    with pytest.raises(CvBridgeError) as info:
        bridge.imgmsg_to_cv2(msg)
    assert str(info.value) == message


def test_array_must_match_the_named_encoding():
    with pytest.raises(CvBridgeError, match="^encoding specified as rgb8, but image has incompatible type 8UC1$"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(CvBridgeError, match="incompatible type 8UC3"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2, 3), np.uint8), "rgba8")
    with pytest.raises(CvBridgeError, match=r"Unrecognized image encoding \[nv24\]"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.uint8), "nv24")
    with pytest.raises(CvBridgeError, match="dtype int64 have no image encoding"):
        bridge.cv2_to_imgmsg(np.zeros((2, 2), np.int64))
    with pytest.raises(CvBridgeError, match="non-empty"):
        bridge.cv2_to_imgmsg(np.zeros((0, 2), np.uint8))
    with pytest.raises(TypeError, match="Your input type is not a numpy array"):
        bridge.cv2_to_imgmsg(1, "rgba8")
    # Also a 5-channel or 2-channel named layout (cv_bridge's yuv422 is 8UC2).
    assert bridge.cv2_to_imgmsg(np.zeros((2, 2, 2), np.uint8), "yuv422").step == 4


def test_compressed_round_trips_and_sixteen_bit_png():
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[:, :12] = (255, 0, 0)  # blue left half in OpenCV order
    png = bridge.cv2_to_compressed_imgmsg(bgr, dst_format="png")
    assert isinstance(png, CompressedImage) and png.format == "png"
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(png), bgr)
    assert tuple(bridge.compressed_imgmsg_to_cv2(png, "rgb8")[0, 0]) == (0, 0, 255)
    jpeg = bridge.cv2_to_compressed_imgmsg(bgr)
    assert jpeg.format == "jpg"
    decoded = bridge.compressed_imgmsg_to_cv2(jpeg, "rgb8")
    assert decoded.shape == (16, 24, 3) and abs(int(decoded[8, 2, 2]) - 255) < 20
    counts = rng.integers(0, 65535, (9, 11)).astype(np.uint16)
    png16 = bridge.cv2_to_compressed_imgmsg(counts, "png")
    out = bridge.compressed_imgmsg_to_cv2(png16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, counts)
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(png16, "mono16"), counts)
    np.testing.assert_array_equal(bridge.compressed_imgmsg_to_cv2(png16, "mono8"), np.rint(counts / 257))


def test_compressed_garbage_is_an_error():
    with pytest.raises(CvBridgeError, match="could not decode"):
        bridge.compressed_imgmsg_to_cv2(CompressedImage(format="jpeg", data=b"not an image"))
    with pytest.raises(CvBridgeError, match="empty compressed image"):
        bridge.compressed_imgmsg_to_cv2(CompressedImage(format="jpeg"))
    with pytest.raises(CvBridgeError, match="could not encode image to 'nosuchformat'"):
        bridge.cv2_to_compressed_imgmsg(np.zeros((2, 2), np.uint8), "nosuchformat")


def test_selected_bridge_is_named_and_works():
    assert image_codec.BRIDGE_IMPLEMENTATION in ("cv_bridge", "rgbt_perception.core.image_codec")
    counts = np.array([[7, 65000]], np.uint16)
    b = image_codec.CvBridge()
    np.testing.assert_array_equal(b.imgmsg_to_cv2(b.cv2_to_imgmsg(counts, "mono16")), counts)
    assert issubclass(image_codec.CvBridgeRuntimeError, CvBridgeError)
    assert issubclass(image_codec.CvBridgeRuntimeError, RuntimeError)
