"""cv_bridge's conversion rules: colour table, 8 <-> 16 bit rescaling, Bayer, YUV, refusals, cvtColorForDisplay."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rgbt_perception.core.image_codec import (
    CvBridgeError,
    InProjectCvBridge,
    cvtColor2,
    cvtColorForDisplay,
)

bridge = InProjectCvBridge()
rng = np.random.default_rng(1)
RGB = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)


def convert(array: np.ndarray, source: str, target: str) -> np.ndarray:
    """Through a message, as a node receives it."""
    return bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(array, source), target)


def test_colour_to_colour_by_hand():
    bgr = RGB[..., ::-1]
    np.testing.assert_array_equal(convert(RGB, "rgb8", "bgr8"), bgr)
    np.testing.assert_array_equal(convert(bgr.copy(), "bgr8", "rgb8"), RGB)
    rgba = convert(RGB, "rgb8", "rgba8")
    assert rgba.shape == (6, 8, 4) and (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(rgba[..., :3], RGB)
    np.testing.assert_array_equal(convert(rgba, "rgba8", "bgr8"), bgr)  # alpha dropped
    np.testing.assert_array_equal(convert(RGB[..., 0].copy(), "mono8", "bgra8"),
                                  np.dstack([RGB[..., 0]] * 3 + [np.full((6, 8), 255, np.uint8)]))


def test_colour_to_mono_is_opencvs_grey():
    np.testing.assert_array_equal(convert(RGB, "rgb8", "mono8"), cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY))
    grey = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(convert(RGB[..., ::-1].copy(), "bgr8", "mono8"), grey)


def test_eight_and_sixteen_bit_rescale_like_cv_bridge():
    """8 -> 16 bit multiplies by 65535/255 = 257; 16 -> 8 bit divides by 257, rounding half to even."""
    mono8 = np.array([[0, 1, 128, 255]], np.uint8)
    np.testing.assert_array_equal(convert(mono8, "mono8", "mono16"), [[0, 257, 32896, 65535]])
    mono16 = np.array([[0, 128, 129, 385, 32896, 65535, 5000]], np.uint16)
    np.testing.assert_array_equal(convert(mono16, "mono16", "mono8"), [[0, 0, 1, 1, 128, 255, 19]])
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(cvtColor2(every, "mono16", "mono8"), np.rint(every / 257.0))
    # colour -> mono16: grey first, then rescaled (conversions.py's test_mono16_cv2 asks for this one)
    np.testing.assert_array_equal(convert(RGB, "rgb8", "mono16"),
                                  cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    np.testing.assert_array_equal(convert(RGB, "rgb8", "bgr16"), RGB[..., ::-1].astype(np.uint16) * 257)
    rgb16 = RGB.astype(np.uint16) * 257 + 100
    np.testing.assert_array_equal(convert(rgb16, "rgb16", "rgb8"), np.rint(rgb16 / 257.0))
    # The rule goes by bit depth, so OpenCV type names rescale too.
    np.testing.assert_array_equal(convert(mono8, "8UC1", "16UC1"), [[0, 257, 32896, 65535]])


def test_other_depth_changes_saturate_and_round_like_opencv():
    values = np.array([[-1.5, 0.5, 1.5, 2.5, 300.7, np.nan, np.inf, -np.inf]], np.float32)
    expected = cv2.addWeighted(values, 1.0, values, 0.0, 0.0, dtype=cv2.CV_8U)  # OpenCV's saturate_cast
    np.testing.assert_array_equal(expected, [[0, 0, 2, 2, 255, 0, 0, 0]])
    np.testing.assert_array_equal(convert(values, "32FC1", "8UC1"), expected)
    np.testing.assert_array_equal(convert(values, "32FC1", "16SC1"),
                                  cv2.addWeighted(values, 1.0, values, 0.0, 0.0, dtype=cv2.CV_16S))
    np.testing.assert_array_equal(convert(np.array([[3, 250]], np.uint8), "8UC1", "32FC1"), [[3.0, 250.0]])


@pytest.mark.parametrize("source,target,message", [
    ("8UC3", "mono16", "[8UC3] is not a color format. but [mono16] is. The conversion does not make sense"),
    ("32FC1", "8UC3", "[32FC1] and [8UC3] do not have the same number of channel"),
    ("rgb8", "32FC1", "[rgb8] is a color format but [32FC1] is not so they must have the same OpenCV type, "
                      "CV_8UC3, CV16UC1 ...."),
    ("bgr8", "bayer_rggb8", "Unsupported conversion from [bgr8] to [bayer_rggb8]"),
    ("yuv422", "yuv422_yuy2", "Unsupported conversion from [yuv422] to [yuv422_yuy2]"),
    ("mono8", "yuv422", "Unsupported conversion from [mono8] to [yuv422]"),
    ("bayer_rggb8", "rgba8", "Unsupported conversion from [bayer_rggb8] to [rgba8]"),
    ("rgb8", "nv21", "Unsupported conversion from [rgb8] to [nv21]"),
    ("rgb8", "foo", "Unknown encoding foo"),
])
def test_refused_conversions_say_what_cv_bridge_says(source, target, message):
    array = np.zeros((2, 4) if source in ("32FC1", "mono8", "bayer_rggb8") else (2, 4, 2 if "yuv" in source else 3),
                     np.float32 if source == "32FC1" else np.uint8)
    with pytest.raises(CvBridgeError) as info:
        convert(array, source, target)
    assert str(info.value) == message


def mosaic(colour: tuple[int, int, int], pattern: str, dtype=np.uint8, size=(8, 10)) -> np.ndarray:
    """A Bayer image of one colour: the 2 x 2 ``pattern`` (``rggb``...) repeated, row by row."""
    value = dict(zip("rgb", colour))
    tile = np.array([[value[pattern[0]], value[pattern[1]]], [value[pattern[2]], value[pattern[3]]]], dtype)
    return np.tile(tile, (size[0] // 2, size[1] // 2))


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_demosaic_to_their_colour(pattern, bits):
    colour = (200, 100, 50) if bits == 8 else (51400, 25700, 12850)  # 16 bit: the 8-bit colour x 257
    raw = mosaic(colour, pattern, np.uint8 if bits == 8 else np.uint16)
    encoding = f"bayer_{pattern}{bits}"
    rgb = convert(raw, encoding, "rgb8")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 10, 3)
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to((200, 100, 50), (4, 6, 3)))
    bgr = convert(raw, encoding, "bgr8")
    np.testing.assert_array_equal(bgr[2:-2, 2:-2], np.broadcast_to((50, 100, 200), (4, 6, 3)))
    grey = convert(raw, encoding, "mono8")
    assert grey.shape == (8, 10) and abs(int(grey[4, 4]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 2
    same_depth = convert(raw, encoding, f"rgb{bits}")
    np.testing.assert_array_equal(same_depth[2:-2, 2:-2], np.broadcast_to(colour, (4, 6, 3)))


# Y, U, V of BT.601 (video range) colours and the RGB OpenCV's YUV 4:2:2 conversion gives for them
YUV_COLOURS = [((16, 128, 128), (0, 0, 0)), ((235, 128, 128), (255, 255, 255)), ((128, 128, 128), (130, 130, 130)),
               ((81, 90, 240), (254, 0, 0)), ((145, 54, 34), (0, 255, 1)), ((41, 240, 110), (0, 0, 255))]


@pytest.mark.parametrize("yuv,rgb", YUV_COLOURS)
def test_yuv422_uyvy_and_yuy2_by_hand(yuv, rgb):
    y, u, v = yuv
    uyvy = np.tile(np.array([[[u, y], [v, y]]], np.uint8), (2, 3, 1))  # bytes U Y V Y: 6 pixels x 2 rows
    yuyv = np.tile(np.array([[[y, u], [y, v]]], np.uint8), (2, 3, 1))  # bytes Y U Y V
    for encoding, pixels in (("yuv422", uyvy), ("yuv422_yuy2", yuyv)):
        out = convert(pixels, encoding, "rgb8")
        assert out.shape == (2, 6, 3)
        np.testing.assert_array_equal(out, np.broadcast_to(rgb, (2, 6, 3)))
        np.testing.assert_array_equal(convert(pixels, encoding, "bgr8"), np.broadcast_to(rgb[::-1], (2, 6, 3)))
        assert convert(pixels, encoding, "mono8")[0, 0] == y  # grey is the luma
        assert convert(pixels, encoding, "rgba8").shape == (2, 6, 4)


def test_yuv422_luma_order_within_a_pixel_pair():
    uyvy = np.array([[[128, 16], [128, 235]]], np.uint8)  # U Y0=16 V Y1=235: black then white
    np.testing.assert_array_equal(convert(uyvy, "yuv422", "mono8"), [[16, 235]])
    np.testing.assert_array_equal(convert(uyvy, "yuv422", "rgb8"), cv2.cvtColor(uyvy, cv2.COLOR_YUV2RGB_UYVY))
    np.testing.assert_array_equal(convert(uyvy, "yuv422", "rgb8")[0, :, 0], [0, 255])
    yuyv = np.array([[[16, 128], [235, 128]]], np.uint8)
    np.testing.assert_array_equal(convert(yuyv, "yuv422_yuy2", "rgb16")[0, :, 0], [0, 65535])  # then x 257


def test_cvtcolor2_reads_the_pixels_as_they_are():
    """The array's dtype is its depth: 16-bit pixels called rgb8 stay 16 bit (no depth step, same bitDepth)."""
    pixels = (RGB.astype(np.uint16) * 257)
    out = cvtColor2(pixels, "rgb8", "bgr8")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, pixels[..., ::-1])
    assert cvtColor2(RGB, "rgb8", "") is not RGB and np.array_equal(cvtColor2(RGB, "rgb8", ""), RGB)
    with pytest.raises(RuntimeError):  # OpenCV's own error on the wrong number of channels
        cvtColor2(RGB[..., 0], "rgb8", "mono8")


def test_display_labels_are_colour_coded_like_cv_bridge():
    labels = np.array([[0, 1, -1, 146, 7, 2, -5]], np.int32)
    shown = cvtColorForDisplay(labels, "32SC1", "bgr8")
    # aliceblue (0.941, 0.973, 1) -> int(x * 255) in BGR; label 1 antiquewhite; -1 background; 146 wraps to 0;
    # 7 is black; 2 aqua (0, 1, 1); negative labels have no colour.
    assert shown.tolist() == [[[255, 248, 239], [214, 235, 249], [0, 0, 0], [255, 248, 239], [0, 0, 0],
                               [255, 255, 0], [0, 0, 0]]]
    grid = np.repeat(np.arange(12, dtype=np.int32), 40).reshape(12, 40)  # the upstream python_bindings case
    view = cvtColorForDisplay(grid, "32SC1", "bgr8")
    assert view.dtype == np.uint8 and view.min() == 0 and view.max() == 255


def test_display_scaling_and_colormap():
    counts = np.array([[1000, 2000, 3000]], np.uint16)
    scaled = cvtColorForDisplay(counts, "mono16", "", do_dynamic_scaling=True)  # guesses bgr8
    assert scaled.tolist() == [[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]  # 127.5 rounds to even
    ranged = cvtColorForDisplay(counts, "mono16", "mono8", min_image_value=1500, max_image_value=2500)
    assert ranged.tolist() == [[0, 128, 255]]  # below the range saturates to 0
    jet = cvtColorForDisplay(counts, "mono16", "bgr8", do_dynamic_scaling=True, colormap=cv2.COLORMAP_JET)
    np.testing.assert_array_equal(jet, cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_JET))
    temps = np.array([[20.0, np.nan, 40.0, np.inf]], np.float32)
    hot = cvtColorForDisplay(temps, "32FC1", "bgr8", do_dynamic_scaling=True, colormap=cv2.COLORMAP_HOT)
    assert hot[0, 1].tolist() == [0, 0, 0]  # NaN is black; inf is left out of the range
    flat = cvtColorForDisplay(np.full((2, 2), 7.0, np.float32), "32FC1", "bgr8", do_dynamic_scaling=True)
    assert flat.shape == (2, 2, 3) and (flat == 128).all()


def test_display_conversions_and_refusals():
    mono16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_array_equal(cvtColorForDisplay(mono16, "mono16", ""), [[[0, 0, 0], [255, 255, 255]]])
    np.testing.assert_array_equal(cvtColorForDisplay(mono16, "16UC1", "mono8"), [[0, 255]])  # 16UC1 read as mono16
    same = RGB[..., ::-1].copy()
    assert cvtColorForDisplay(same, "bgr8", "bgr8") is same
    with pytest.raises(RuntimeError, match="does not have an output encoding {16}that is color or mono"):
        cvtColorForDisplay(mono16, "mono16", "mono16")
    with pytest.raises(RuntimeError, match="^cv_bridge.cvtColorForDisplay.. output encoding is empty and cannot be"):
        cvtColorForDisplay(np.zeros((2, 2)), "64FC1", "")
    with pytest.raises(RuntimeError, match="scaling for images {16}with more than one channel is unsupported"):
        cvtColorForDisplay(RGB, "rgb8", "bgr8", min_image_value=0, max_image_value=10)
    with pytest.raises(RuntimeError, match=r"while trying to convert image from '8UC3' to 'bgr8' an exception was "
                                           r"thrown \(\[8UC3\] is not a color format"):
        cvtColorForDisplay(RGB, "8UC3", "bgr8")
