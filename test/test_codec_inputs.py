"""What the node reads from cameras: RGB from every encoding that converts to colour, thermal at its own depth,
and CompressedImage as compressed_image_transport sends it (16-bit PNG thermal included)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from rgbt_perception.core.image_codec import (
    RGB_INPUT_ENCODINGS,
    THERMAL_INPUT_ENCODINGS,
    CvBridgeError,
    InProjectCvBridge,
    UnsupportedEncodingError,
    array_to_rgb8,
    decode_compressed,
    image_to_rgb8,
    image_to_thermal,
)

bridge = InProjectCvBridge()
rng = np.random.default_rng(2)
RGB = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
GREY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)


def image(array: np.ndarray, encoding: str, big_endian: bool = False) -> Image:
    """A message as a driver fills it (big-endian when asked; step padded by 2 bytes)."""
    stored = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">" if big_endian else "<")))
    rows = stored.reshape(array.shape[0], -1).view(np.uint8)
    padded = np.zeros((rows.shape[0], rows.shape[1] + 2), np.uint8)
    padded[:, :-2] = rows
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=big_endian,
                 step=padded.shape[1], data=padded.tobytes())


def rgba(rgb: np.ndarray, alpha: int = 255) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], alpha, rgb.dtype)])


# encoding -> (pixels as the camera sends them, the RGB the node must get)
RGB_CASES = {
    "rgb8": (RGB, RGB), "bgr8": (RGB[..., ::-1], RGB),
    "rgba8": (rgba(RGB, 7), RGB), "bgra8": (rgba(RGB[..., ::-1]), RGB),
    "8UC3": (RGB[..., ::-1], RGB), "8UC4": (rgba(RGB[..., ::-1]), RGB),  # cv2_to_imgmsg(bgr): OpenCV's order
    "rgb16": (RGB.astype(np.uint16) * 257, RGB), "bgr16": (RGB[..., ::-1].astype(np.uint16) * 257, RGB),
    "rgba16": (rgba(RGB.astype(np.uint16) * 257), RGB), "bgra16": (rgba(RGB[..., ::-1].astype(np.uint16) * 257), RGB),
    "16UC3": (RGB[..., ::-1].astype(np.uint16) * 257, RGB),
    "mono8": (GREY, np.dstack([GREY] * 3)), "8UC1": (GREY, np.dstack([GREY] * 3)),
    "mono16": (GREY.astype(np.uint16) * 257, np.dstack([GREY] * 3)),
}


@pytest.mark.parametrize("encoding", list(RGB_CASES))
@pytest.mark.parametrize("big_endian", [False, True])
def test_colour_and_mono_encodings_give_rgb8(encoding, big_endian):
    pixels, expected = RGB_CASES[encoding]
    out = image_to_rgb8(image(np.ascontiguousarray(pixels), encoding, big_endian))
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_gives_demosaiced_rgb8(pattern, bits):
    value = {"r": 30, "g": 160, "b": 220}
    tile = np.array([[value[pattern[0]], value[pattern[1]]], [value[pattern[2]], value[pattern[3]]]], np.uint16)
    raw = np.tile(tile, (4, 5)) * (257 if bits == 16 else 1)
    out = image_to_rgb8(image(raw.astype(np.uint8 if bits == 8 else np.uint16), f"bayer_{pattern}{bits}"))
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to((30, 160, 220), (4, 6, 3)))


@pytest.mark.parametrize("encoding,layout", [("yuv422", "uyvy"), ("uyvy", "uyvy"),
                                             ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
def test_yuv_422_gives_rgb8_under_either_name(encoding, layout):
    y, u, v = 81, 90, 240  # BT.601 red
    pair = [[u, y], [v, y]] if layout == "uyvy" else [[y, u], [y, v]]
    pixels = np.tile(np.array([pair], np.uint8), (2, 2, 1))
    out = image_to_rgb8(image(pixels, encoding))
    np.testing.assert_array_equal(out, np.broadcast_to((254, 0, 0), (2, 4, 3)))


def test_uyvy_and_yuyv_names_are_still_refused_by_the_cv_bridge_api():
    pixels = np.zeros((2, 4, 2), np.uint8)
    with pytest.raises(CvBridgeError, match=r"Unrecognized image encoding \[uyvy\]"):
        bridge.imgmsg_to_cv2(image(pixels, "uyvy"))


def test_every_listed_rgb_encoding_is_accepted():
    for encoding in RGB_INPUT_ENCODINGS:
        dtype = np.uint16 if "16" in encoding else np.uint8
        channels = {"yuv": 2, "uyvy": 2, "yuyv": 2, "rgba": 4, "bgra": 4, "C4": 4, "rgb": 3, "bgr": 3, "C3": 3}
        c = next((n for key, n in channels.items() if key in encoding), 1)
        out = image_to_rgb8(image(np.zeros((4, 6, c) if c > 1 else (4, 6), dtype), encoding))
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, encoding


@pytest.mark.parametrize("encoding", ["nv21", "nv24", "32FC3", "16SC3", "8UC2", "weird"])
def test_encodings_without_colour_are_refused_by_name(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(UnsupportedEncodingError) as info:
        image_to_rgb8(msg)
    assert info.value.encoding == encoding
    assert str(info.value).startswith(f"unsupported encoding '{encoding}': it does not convert to RGB")


@pytest.mark.parametrize("encoding,dtype", [("mono8", np.uint8), ("8UC1", np.uint8), ("8U", np.uint8),
                                            ("mono16", np.uint16), ("16UC1", np.uint16), ("16U", np.uint16),
                                            ("32FC1", np.float32), ("32F", np.float32)])
@pytest.mark.parametrize("big_endian", [False, True])
def test_thermal_keeps_its_own_depth(encoding, dtype, big_endian):
    values = (np.array([[0, 1, 255], [40000, 65535, 12345]]) if dtype == np.uint16 else
              np.array([[0, 1, 255], [17, 128, 254]]) if dtype == np.uint8 else
              np.array([[293.15, 310.5, -5.25], [1000.0, 0.0, 300.0]])).astype(dtype)
    out = image_to_thermal(image(values, encoding, big_endian))
    assert out.dtype == dtype and out.shape == (2, 3)
    np.testing.assert_array_equal(out, values)  # 16-bit counts are never squeezed to 8 bit


def test_double_temperatures_come_as_float32():
    temps = np.array([[293.15, 310.5]], np.float64)
    out = image_to_thermal(image(temps, "64FC1"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, temps, rtol=1e-7)


@pytest.mark.parametrize("encoding,array", [("rgb8", np.zeros((2, 2, 3), np.uint8)),
                                            ("16SC1", np.zeros((2, 2), np.int16)),
                                            ("bayer_rggb16", np.zeros((2, 2), np.uint16)),
                                            ("32FC3", np.zeros((2, 2, 3), np.float32))])
def test_thermal_refuses_what_is_not_one_channel_of_counts_or_temperatures(encoding, array):
    with pytest.raises(UnsupportedEncodingError, match=f"unsupported encoding '{encoding}': thermal needs one channel"):
        image_to_thermal(image(array, encoding))


def test_empty_and_malformed_images_are_errors():
    with pytest.raises(CvBridgeError, match="zero-size image"):
        image_to_rgb8(Image(height=0, width=0, encoding="rgb8", step=0, data=b""))
    with pytest.raises(CvBridgeError, match="zero-size image"):
        image_to_thermal(Image(height=0, width=4, encoding="mono16", step=8, data=b""))
    with pytest.raises(CvBridgeError, match="data length 7 != step x height"):
        image_to_thermal(Image(height=2, width=2, encoding="mono16", step=4, data=b"\x00" * 7))
    with pytest.raises(CvBridgeError, match="zero-size image"):
        array_to_rgb8(np.zeros((0, 3, 3), np.uint8), "rgb8")


# --- CompressedImage as compressed_image_transport publishes it ---------------------------------

def compressed(pixels: np.ndarray, fmt: str, ext: str) -> CompressedImage:
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return CompressedImage(format=fmt, data=data.tobytes())


def test_sixteen_bit_thermal_png_keeps_raw_counts():
    counts = rng.integers(0, 65535, (12, 16)).astype(np.uint16)
    msg = compressed(counts, "mono16; png compressed ", ".png")  # the format compressed_image_transport writes
    out = image_to_thermal(msg)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, counts)
    plain = bridge.cv2_to_compressed_imgmsg(counts, "png")  # cv_bridge's format string: "png"
    np.testing.assert_array_equal(image_to_thermal(plain), counts)
    assert decode_compressed(msg)[1] == "mono16" and decode_compressed(plain)[1] == "mono16"


def test_eight_bit_thermal_and_jpeg_sixteen_bit_are_scaled_as_the_transport_does():
    grey = GREY.copy()
    np.testing.assert_array_equal(image_to_thermal(compressed(grey, "mono8; png compressed ", ".png")), grey)
    out, encoding = decode_compressed(compressed(grey, "mono16; jpeg compressed mono8", ".jpg"))
    assert encoding == "mono16" and out.dtype == np.uint16 and (out % 256 == 0).all()


def test_colour_formats_are_turned_back_from_bgr():
    bgr = RGB[..., ::-1].copy()
    np.testing.assert_array_equal(image_to_rgb8(compressed(bgr, "rgb8; png compressed bgr8", ".png")), RGB)
    np.testing.assert_array_equal(image_to_rgb8(compressed(bgr, "bgr8; png compressed bgr8", ".png")), RGB)
    pixels, encoding = decode_compressed(compressed(bgr, "rgba8; png compressed bgr8", ".png"))
    assert encoding == "rgba8" and pixels.shape == (6, 8, 4) and (pixels[..., 3] == 255).all()
    np.testing.assert_array_equal(pixels[..., :3], RGB)
    sixteen = compressed(bgr.astype(np.uint16) * 257, "rgb16; png compressed bgr16", ".png")
    np.testing.assert_array_equal(image_to_rgb8(sixteen), RGB)
    np.testing.assert_array_equal(image_to_rgb8(compressed(bgr, "jpeg", ".png")), RGB)  # plain format: BGR decoded


def test_jpeg_colour_keeps_the_channel_order():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 2] = 255  # BGR red
    out = image_to_rgb8(compressed(red, "rgb8; jpeg compressed bgr8", ".jpg"))
    assert out[8, 8, 0] > 240 and out[8, 8, 1] < 15 and out[8, 8, 2] < 15


def test_bayer_and_yuv_sent_compressed():
    tile = np.array([[30, 160], [160, 220]], np.uint8)  # rggb
    raw = np.tile(tile, (4, 5))
    out = image_to_rgb8(compressed(raw, "bayer_rggb8; png compressed ", ".png"))
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to((30, 160, 220), (4, 6, 3)))
    # The transport converts YUV to bgr8 before encoding; the pixels are what was sent.
    pixels, encoding = decode_compressed(compressed(RGB[..., ::-1].copy(), "yuv422; png compressed bgr8", ".png"))
    assert encoding == "bgr8"
    np.testing.assert_array_equal(image_to_rgb8(compressed(RGB[..., ::-1].copy(), "yuv422; png compressed bgr8",
                                                           ".png")), RGB)


def test_compressed_errors_name_the_format():
    with pytest.raises(CvBridgeError, match="compressedDepth images are not decoded"):
        image_to_thermal(CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20))
    with pytest.raises(CvBridgeError, match=r"could not decode compressed image \(format 'png', 3 bytes\)"):
        image_to_thermal(CompressedImage(format="png", data=b"abc"))
    colour = compressed(RGB, "rgb8; png compressed bgr8", ".png")
    with pytest.raises(UnsupportedEncodingError, match="'rgb8': thermal needs one channel"):
        image_to_thermal(colour)
    with pytest.raises(CvBridgeError, match="decodes to uint8 with 3 channel"):
        decode_compressed(compressed(RGB, "mono16; png compressed ", ".png"))


def test_accepted_lists_are_what_the_node_may_name():
    assert {"rgb8", "bgr8", "bayer_rggb8", "bayer_grbg16", "yuv422", "yuv422_yuy2", "8UC3", "mono16"} <= set(
        RGB_INPUT_ENCODINGS)
    assert set(THERMAL_INPUT_ENCODINGS) >= {"mono8", "mono16", "8UC1", "16UC1", "32FC1"}
    assert not {"nv21", "nv24", "32FC1"} & set(RGB_INPUT_ENCODINGS)
