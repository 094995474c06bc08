"""sensor_msgs Image / CompressedImage <-> numpy, with the API of ROS 2 ``cv_bridge``.

The real ``cv_bridge`` is used when it imports and converts a 16-bit image correctly
(``BRIDGE_IMPLEMENTATION == "cv_bridge"``); PyPI's ``cv-bridge`` is a ROS 1 port that fails
on NumPy 2, so it falls back to the in-project ``CvBridge`` below.

The in-project bridge reads ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``, ``mono16`` and the
OpenCV type names ``8UC1..4``, ``16UC1``, ``32FC1``: row padding (``step``) and
``is_bigendian`` are honoured, and 16-bit images keep their raw counts. Conversions that would
lose information (16 bit to 8 bit) are refused instead of scaled.

Decoding works on any object with the Image fields (``height``, ``width``, ``encoding``,
``is_bigendian``, ``step``, ``data``), so it needs no ROS import; ``sensor_msgs`` is imported
only when a message is built.
"""
from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np


class CvBridgeError(TypeError):
    """A message that cannot be converted; the text names the problem."""


#: encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "8UC4": (np.dtype(np.uint8), 4),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

_COLOR_CONVERSIONS: dict[tuple[str, str], int] = {
    ("rgb8", "bgr8"): cv2.COLOR_RGB2BGR,
    ("bgr8", "rgb8"): cv2.COLOR_BGR2RGB,
    ("rgb8", "mono8"): cv2.COLOR_RGB2GRAY,
    ("bgr8", "mono8"): cv2.COLOR_BGR2GRAY,
    ("mono8", "rgb8"): cv2.COLOR_GRAY2RGB,
    ("mono8", "bgr8"): cv2.COLOR_GRAY2BGR,
    ("rgba8", "rgb8"): cv2.COLOR_RGBA2RGB,
    ("bgra8", "rgb8"): cv2.COLOR_BGRA2RGB,
    ("rgba8", "bgr8"): cv2.COLOR_RGBA2BGR,
    ("bgra8", "bgr8"): cv2.COLOR_BGRA2BGR,
}


def opencv_type_name(dtype: np.dtype, channels: int) -> str:
    """OpenCV type name of an array layout, e.g. ``16UC1`` (what cv_bridge writes for passthrough)."""
    names = {np.uint8: "8U", np.int8: "8S", np.uint16: "16U", np.int16: "16S", np.int32: "32S",
             np.float32: "32F", np.float64: "64F"}
    try:
        depth = names[np.dtype(dtype).type]
    except KeyError:
        raise CvBridgeError(f"arrays of dtype {np.dtype(dtype)} have no image encoding") from None
    return f"{depth}C{channels}"


def _canonical(encoding: str) -> str:
    """OpenCV type names read as their ROS encoding (3 and 4 channels are OpenCV's BGR order)."""
    return {"8UC1": "mono8", "16UC1": "mono16", "8UC3": "bgr8", "8UC4": "bgra8"}.get(encoding, encoding)


def convert_encoding(image: np.ndarray, source: str, target: str) -> np.ndarray:
    """Convert a decoded image between encodings; refuses what would lose information."""
    key = (_canonical(source), _canonical(target))
    if target == "passthrough" or key[0] == key[1]:
        return image
    code = _COLOR_CONVERSIONS.get(key)
    if code is None:
        raise CvBridgeError(f"conversion from {source} to {target} is not supported")
    return cv2.cvtColor(image, code)


def image_to_array(msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """Decode an Image-like message into ``H, W`` or ``H, W, C`` (native byte order).

    The result may share memory with ``msg.data``; copy it before writing into it.
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise CvBridgeError(f"unsupported encoding {encoding!r} (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise CvBridgeError(f"zero-size image ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise CvBridgeError(f"step {step} is smaller than width x channels x bytes = {row_bytes} ({encoding})")
    data = msg.data
    size = len(data) * getattr(data, "itemsize", 1)
    if size != step * height:
        raise CvBridgeError(f"data length {size} != step x height = {step} x {height} = {step * height}")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    image = raw.view(stored)
    image = image.reshape(height, width, channels) if channels > 1 else image.reshape(height, width)
    if stored != dtype:
        image = image.astype(dtype)  # byte-swapped copy in native order
    return convert_encoding(image, encoding, desired_encoding)


def array_to_image(image: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
    """Build a ``sensor_msgs/Image`` from ``H, W`` or ``H, W, C``; passthrough writes the OpenCV type."""
    from sensor_msgs.msg import Image

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise CvBridgeError(f"expected a non-empty H x W or H x W x C array, got shape {image.shape}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if encoding == "passthrough":
        encoding = opencv_type_name(image.dtype, channels)
    elif encoding in ENCODINGS:
        dtype, want_channels = ENCODINGS[encoding]
        if image.dtype.newbyteorder("=") != dtype or channels != want_channels:
            raise CvBridgeError(
                f"encoding {encoding} needs {want_channels} channel(s) of {dtype}, got {channels} of {image.dtype}"
            )
    else:
        raise CvBridgeError(f"unsupported encoding {encoding!r}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    big = image.dtype.byteorder == ">" or (image.dtype.byteorder == "=" and sys.byteorder == "big")
    msg.is_bigendian = bool(big and image.dtype.itemsize > 1)
    contiguous = np.ascontiguousarray(image)
    msg.step = int(contiguous.strides[0])
    msg.data = contiguous.tobytes()
    return msg


def compressed_to_array(msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """Decode a CompressedImage-like message (JPEG, PNG, ...); colour comes out as bgr8 like cv_bridge."""
    data = msg.data
    if len(data) == 0:
        raise CvBridgeError(f"empty compressed image (format {msg.format!r})")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise CvBridgeError(f"could not decode compressed image (format {msg.format!r}, {len(data)} bytes)")
    if image.ndim == 2:
        source = "mono8" if image.dtype == np.uint8 else "mono16"
    else:
        source = "bgr8" if image.shape[2] == 3 else "bgra8"
    return convert_encoding(image, source, desired_encoding)


def array_to_compressed(image: np.ndarray, dst_format: str = "jpg") -> Any:
    """Encode ``H, W`` or ``H, W, 3`` (bgr8, like OpenCV) into a ``sensor_msgs/CompressedImage``."""
    from sensor_msgs.msg import CompressedImage

    ok, buffer = cv2.imencode("." + dst_format, np.asarray(image))
    if not ok:
        raise CvBridgeError(f"could not encode image to {dst_format!r}")
    msg = CompressedImage()
    msg.format = dst_format
    msg.data = buffer.tobytes()
    return msg


class _CvBridge:
    """The ``cv_bridge.CvBridge`` API over the functions above."""

    def imgmsg_to_cv2(self, img_msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
        return image_to_array(img_msg, desired_encoding)

    def cv2_to_imgmsg(self, cvim: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
        return array_to_image(cvim, encoding, header)

    def compressed_imgmsg_to_cv2(self, cmprs_img_msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
        return compressed_to_array(cmprs_img_msg, desired_encoding)

    def cv2_to_compressed_imgmsg(self, cvim: np.ndarray, dst_format: str = "jpg") -> Any:
        return array_to_compressed(cvim, dst_format)


def _real_bridge_works(bridge_cls: Any) -> bool:
    """ROS 2's cv_bridge round-trips raw 16-bit counts; broken ports raise or alter them."""
    try:
        probe = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
        bridge = bridge_cls()
        back = bridge.imgmsg_to_cv2(bridge.cv2_to_imgmsg(probe, encoding="mono16"), "passthrough")
        return back.dtype == np.uint16 and np.array_equal(back, probe)
    except Exception:  # any failure means: do not use it
        return False


InProjectCvBridge = _CvBridge
InProjectCvBridgeError = CvBridgeError

try:
    from cv_bridge import CvBridge as _RealCvBridge  # type: ignore[import-not-found]
    from cv_bridge import CvBridgeError as _RealCvBridgeError  # type: ignore[import-not-found]

    _USE_REAL = _real_bridge_works(_RealCvBridge)
except Exception:  # ImportError, or a ROS 1 port failing at import time
    _USE_REAL = False

if _USE_REAL:
    CvBridge = _RealCvBridge
    BRIDGE_IMPLEMENTATION = "cv_bridge"
    #: Errors of either bridge, for ``except`` clauses.
    BRIDGE_ERRORS: tuple[type[Exception], ...] = (_RealCvBridgeError, CvBridgeError)
else:
    CvBridge = _CvBridge
    BRIDGE_IMPLEMENTATION = "rgbt_perception.core.image_codec"
    BRIDGE_ERRORS = (CvBridgeError,)

__all__ = [
    "BRIDGE_ERRORS",
    "BRIDGE_IMPLEMENTATION",
    "CvBridge",
    "CvBridgeError",
    "ENCODINGS",
    "InProjectCvBridge",
    "array_to_compressed",
    "array_to_image",
    "compressed_to_array",
    "convert_encoding",
    "image_to_array",
    "opencv_type_name",
]
