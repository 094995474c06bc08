"""sensor_msgs Image / CompressedImage <-> numpy, with the API and conversion rules of ROS 2 ``cv_bridge``.

The real ``cv_bridge`` is used when it imports and round-trips a 16-bit image (``BRIDGE_IMPLEMENTATION``);
otherwise ``CvBridge`` is the in-project bridge below, which follows cv_bridge (rolling): it reads every
encoding ``getCvType`` knows (``rgb8``/``bgr8``/``rgba8``/``bgra8`` and their 16-bit forms, ``mono8``/
``mono16``, ``bayer_{rggb,bggr,gbrg,grbg}{8,16}``, ``yuv422`` (UYVY), ``yuv422_yuy2`` (YUYV), every
``(8U|8S|16U|16S|32S|32F|64F)C<n>``), refuses ``uyvy``/``yuyv``/``nv21``/``nv24`` as it does, converts
with its table, depth rule (8 <-> 16 bit rescales by 65535/255) and error texts, honours ``is_bigendian``
and row padding. It is stricter where the Python cv_bridge mishandles input (short ``step`` or data), and
``compressed_imgmsg_to_cv2`` reads the decoded image as mono/BGR/BGRA of its depth like the C++ bridge.

For the node, :func:`image_to_rgb8` / :func:`image_to_thermal` take an Image or a CompressedImage
(as ``compressed_image_transport`` sends it) and return ``H, W, 3`` uint8 RGB (Bayer demosaiced, YUV
converted) or ``H, W`` thermal at its own depth (16-bit counts are never squeezed to 8 bit).
No ROS import is needed to decode; ``sensor_msgs`` is imported only to build a message.
"""
from __future__ import annotations

import re
import sys
from typing import Any

import cv2
import numpy as np


class CvBridgeError(TypeError):
    """A message or array that cannot be converted; the text names the problem."""


class CvBridgeRuntimeError(CvBridgeError, RuntimeError):
    """A conversion refused with cv_bridge's text: a CvBridgeError (what its CvBridge methods raise) and a
    RuntimeError (what its ``getCvType``/``cvtColor2``/``cvtColorForDisplay`` raise)."""


class _PlainRuntimeError(CvBridgeRuntimeError):
    """Errors cv_bridge does not raise itself (unknown encoding in image_encodings, OpenCV's own)."""


class UnsupportedEncodingError(CvBridgeError):
    """An encoding the node's helpers cannot turn into RGB or thermal; ``.encoding`` names it."""

    def __init__(self, message: str, encoding: str) -> None:
        super().__init__(message)
        self.encoding = encoding


# --- sensor_msgs/image_encodings and getCvType -----------------------------------------------------------

_DEPTH_DTYPES = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32,
                 "32F": np.float32, "64F": np.float64}
_DTYPE_DEPTHS = {np.dtype(v).name: k for k, v in _DEPTH_DTYPES.items()}
_BAYER = {f"bayer_{p}{b}": p.upper() for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)}
#: named encoding -> (OpenCV depth, channels), exactly the names getCvType knows
_NAMED: dict[str, tuple[str, int]] = {
    "rgb8": ("8U", 3), "bgr8": ("8U", 3), "rgba8": ("8U", 4), "bgra8": ("8U", 4),
    "rgb16": ("16U", 3), "bgr16": ("16U", 3), "rgba16": ("16U", 4), "bgra16": ("16U", 4),
    "mono8": ("8U", 1), "mono16": ("16U", 1), "yuv422": ("8U", 2), "yuv422_yuy2": ("8U", 2),
    **{name: ("16U" if name.endswith("16") else "8U", 1) for name in _BAYER},
}
_GENERIC = re.compile(r"(8U|8S|16U|16S|32S|32F|64F)(?:C([0-9]+))?")
_CV_TYPE = re.compile(r"(8|16|32|64)(U|S|F)C([0-9]*)")  # image_encodings' pattern (numChannels, bitDepth)
_MAX_CHANNELS = 512  # CV_CN_MAX of the OpenCV 4 cv_bridge is built with
_COLOR = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16",
          "yuv422", "yuv422_yuy2", "uyvy", "yuyv", "nv21", "nv24"}
_MONO = {"mono8", "mono16"}

#: encoding -> (numpy dtype, channels) for every named encoding and numeric type with 1..4 channels
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    **{name: (np.dtype(_DEPTH_DTYPES[d]), c) for name, (d, c) in _NAMED.items()},
    **{f"{d}C{c}": (np.dtype(t), c) for d, t in _DEPTH_DTYPES.items() for c in (1, 2, 3, 4)},
}


def _layout(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of an encoding, as ``getCvType`` resolves it."""
    if encoding in _NAMED:
        depth, channels = _NAMED[encoding]
        return np.dtype(_DEPTH_DTYPES[depth]), channels
    match = _GENERIC.fullmatch(encoding)
    channels = int(match.group(2)) if match and match.group(2) is not None else 1
    if match is None or not 1 <= channels <= _MAX_CHANNELS:
        raise CvBridgeRuntimeError(f"Unrecognized image encoding [{encoding}]")
    return np.dtype(_DEPTH_DTYPES[match.group(1)]), channels


def getCvType(encoding: str) -> int:  # noqa: N802 (cv_bridge API)
    """OpenCV type number of an encoding (``CV_8UC3`` for ``bgr8``); RuntimeError if unrecognised."""
    dtype, channels = _layout(encoding)
    return int(cv2.CV_MAKETYPE(getattr(cv2, "CV_" + _DTYPE_DEPTHS[dtype.name]), channels))


def _channels_bits(encoding: str) -> tuple[int, int]:
    """image_encodings' ``numChannels`` and ``bitDepth`` (which know ``nv21``/``nv24`` too)."""
    if encoding in _NAMED:
        depth, channels = _NAMED[encoding]
        return channels, 16 if depth == "16U" else 8
    match = _CV_TYPE.fullmatch(encoding)
    if match:
        return (int(match.group(3)) if match.group(3) else 1), int(match.group(1))
    if encoding in ("uyvy", "yuyv", "nv21", "nv24"):
        return 2, 8
    raise _PlainRuntimeError(f"Unknown encoding {encoding}")


def _num_channels(encoding: str) -> int:
    return _channels_bits(encoding)[0]


def _bit_depth(encoding: str) -> int:
    return _channels_bits(encoding)[1]


#: cv_bridge's colour families (getEncoding); encodings without one convert to nothing else
_FAMILY = {"mono8": "GRAY", "mono16": "GRAY", "yuv422": "YUV422", "yuv422_yuy2": "YUV422_YUY2",
           **{b: "BAYER_" + p for b, p in _BAYER.items()},
           **{e: re.sub(r"\d+$", "", e).upper() for e, (_, c) in _NAMED.items() if c >= 3}}


_COLOURS = ("GRAY", "RGB", "BGR", "RGBA", "BGRA")
#: (family, family) -> OpenCV codes; None is a depth conversion (cv_bridge's SAME_FORMAT). cv_bridge names
#: OpenCV's Bayer codes by the second row's pattern (bayer_rggb8 -> COLOR_BayerBG2*).
_CONVERSIONS: dict[tuple[str, str], list[int | None]] = {
    **{(f, f): [None] for f in _COLOURS + ("YUV422",)},
    **{(a, b): [getattr(cv2, f"COLOR_{a}2{b}")] for a in _COLOURS for b in _COLOURS if a != b},
    **{(f, b): [getattr(cv2, f"COLOR_YUV2{b}_{x}")] for f, x in (("YUV422", "UYVY"), ("YUV422_YUY2", "YUY2"))
       for b in _COLOURS},
    **{("BAYER_" + p, b): [getattr(cv2, f"COLOR_Bayer{x}2{b}")]
       for p, x in (("RGGB", "BG"), ("BGGR", "RG"), ("GBRG", "GR"), ("GRBG", "GB")) for b in ("GRAY", "RGB", "BGR")},
}


def _conversion_codes(src: str, dst: str) -> list[int | None]:
    """cv_bridge's getConversionCode: the steps from one encoding to another, or its exception."""
    src_colour = src in _COLOR or src in _MONO or src in _BAYER
    dst_colour = dst in _COLOR or dst in _MONO or dst in _BAYER
    same_channels = _num_channels(src) == _num_channels(dst)
    if not src_colour:
        if dst_colour:
            raise CvBridgeRuntimeError(
                f"[{src}] is not a color format. but [{dst}] is. The conversion does not make sense")
        if not same_channels:
            raise CvBridgeRuntimeError(f"[{src}] and [{dst}] do not have the same number of channel")
        return [None]
    if not dst_colour:
        if not same_channels:
            raise CvBridgeRuntimeError(f"[{src}] is a color format but [{dst}] is not so they must have the "
                                       "same OpenCV type, CV_8UC3, CV16UC1 ....")
        return [None]
    codes = _CONVERSIONS.get((_FAMILY.get(src, ""), _FAMILY.get(dst, "")))
    if codes is None:
        raise CvBridgeRuntimeError(f"Unsupported conversion from [{src}] to [{dst}]")
    if _bit_depth(src) != _bit_depth(dst) and _FAMILY.get(src) != _FAMILY.get(dst):
        codes = codes + [None]
    return codes


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """OpenCV's saturate_cast of float64 values: round half to even, clip; NaN/overflow -> INT_MIN first."""
    if dtype.kind == "f":
        return values.astype(dtype)
    rounded = np.rint(values)
    invalid = ~np.isfinite(rounded) | (rounded < -(2**31)) | (rounded > 2**31 - 1)
    if invalid.any():
        rounded[invalid] = -(2**31)  # what the x86 conversion instruction yields
    info = np.iinfo(dtype)
    return np.clip(rounded, info.min, info.max).astype(dtype)


def _convert_depth(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    """cv_bridge's depth step: the image takes dst's depth, 8 <-> 16 bit (by bitDepth) rescaled by 65535/255."""
    target, _ = _layout(dst)
    scale = {(8, 16): 65535.0 / 255.0, (16, 8): 255.0 / 65535.0}.get((_bit_depth(src), _bit_depth(dst)))
    if scale is None:
        return image.copy() if image.dtype == target else _saturate(image.astype(np.float64), target)
    if image.dtype == np.uint8 and target == np.uint16:
        return image.astype(np.uint16) * np.uint16(257)  # exact: 255 x 257 = 65535
    if image.dtype == np.uint16 and target == np.uint8 and (image.ndim == 2 or image.shape[2] <= 4):
        return cv2.convertScaleAbs(image, alpha=scale)  # OpenCV's own rounding; |x| is x for unsigned
    return _saturate(image.astype(np.float64) * scale, target)


def cvtColor2(image: np.ndarray, encoding_in: str, encoding_out: str) -> np.ndarray:  # noqa: N802
    """Convert an image between encodings with cv_bridge's rules; always returns a new array.

    Args:
        image: ``H, W`` or ``H, W, C`` pixels, read as they are (their dtype, not ``encoding_in``,
            is the depth), like cv_bridge's ``cvtColor2``.
        encoding_in: what the pixels are; encoding_out: what to return (empty: unchanged).
    Raises:
        CvBridgeRuntimeError (a RuntimeError and a CvBridgeError) with cv_bridge's text.
    """
    image = np.ascontiguousarray(image)
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if not encoding_out or encoding_out == encoding_in:
        return image.copy()
    for code in _conversion_codes(encoding_in, encoding_out):
        if code is None:
            image = _convert_depth(image, encoding_in, encoding_out)
            continue
        try:
            image = cv2.cvtColor(image, code)
        except cv2.error as exc:
            raise _PlainRuntimeError(str(exc).strip()) from None
    return image


def opencv_type_name(dtype: np.dtype, channels: int) -> str:
    """OpenCV type name of an array layout, e.g. ``16UC1`` (what cv_bridge writes for passthrough)."""
    depth = _DTYPE_DEPTHS.get(np.dtype(dtype).name)
    if depth is None:
        raise CvBridgeError(f"arrays of dtype {np.dtype(dtype)} have no image encoding "
                            f"(supported: {', '.join(_DTYPE_DEPTHS)})")
    return f"{depth}C{channels}"


# --- cvtColorForDisplay ----------------------------------------------------------------------------------

# The 146 colours of cv_bridge's rgb_colors (CSS names in alphabetical order, without paleturquoise
# and rebeccapurple), 6 hex digits each. As in cv_bridge, palevioletred holds paleturquoise's value
# and sandybrown's red is 0.98; each channel is used as value/255 rounded to 3 significant digits.
_LABEL_COLOURS = (
    "f0f8fffaebd700ffff7fffd4f0fffff5f5dcffe4c4000000ffebcd0000ff8a2be2a52a2adeb8875f9ea07fff00d2691eff7f506495ed"
    "fff8dcdc143c00ffff00008b008b8bb8860ba9a9a9006400a9a9a9bdb76b8b008b556b2fff8c009932cc8b0000e9967a8fbc8f483d8b"
    "2f4f4f2f4f4f00ced19400d3ff149300bfff6969696969691e90ffb22222fffaf0228b22ff00ffdcdcdcf8f8ffffd700daa520808080"
    "008000adff2f808080f0fff0ff69b4cd5c5c4b0082fffff0f0e68ce6e6fafff0f57cfc00fffacdadd8e6f08080e0fffffafad2d3d3d3"
    "90ee90d3d3d3ffb6c1ffa07a20b2aa87cefa778899778899b0c4deffffe000ff0032cd32faf0e6ff00ff80000066cdaa0000cdba55d3"
    "9370db3cb3717b68ee00fa9a48d1ccc71585191970f5fffaffe4e1ffe4b5ffdead000080fdf5e68080006b8e23ffa500ff4500da70d6"
    "eee8aa98fb98afeeeeffefd5ffdab9cd853fffc0cbdda0ddb0e0e6800080ff0000bc8f8f4169e18b4513fa8072faa4602e8b57fff5ee"
    "a0522dc0c0c087ceeb6a5acd708090708090fffafa00ff7f4682b4d2b48c008080d8bfd8ff634740e0d0ee82eef5deb3fffffff5f5f5"
    "ffff009acd32"
)

#: ``146, 3`` uint8 BGR: the pixel cv_bridge draws for label ``i % 146`` (``int(channel * 255)``)
_PALETTE = np.array([[int(float(f"{int(_LABEL_COLOURS[i + k:i + k + 2], 16) / 255:.3g}") * 255) for k in (4, 2, 0)]
                     for i in range(0, len(_LABEL_COLOURS), 6)], np.uint8)


def cvtColorForDisplay(source: np.ndarray, encoding_in: str, encoding_out: str,  # noqa: N802 (cv_bridge API)
                       do_dynamic_scaling: bool = False, min_image_value: float = 0.0, max_image_value: float = 0.0,
                       colormap: int = -1) -> np.ndarray:
    """cv_bridge's ``cvtColorForDisplay``: an 8-bit mono or colour image to look at.

    ``32SC1`` -> ``bgr8`` colours labels (label -1 black); with a value range (given, or the
    finite min/max when ``do_dynamic_scaling``) one channel is scaled to 0..255, optionally
    through an OpenCV ``colormap``; otherwise the image is converted with :func:`cvtColor2`.
    Returns ``H, W`` or ``H, W, C`` uint8 (the input itself when no conversion is needed).
    """
    image = np.asarray(source)
    encoding = encoding_out
    if not encoding:
        try:
            guessable = encoding_in == "32SC1" or _bit_depth(encoding_in) in (8, 16, 32)
        except CvBridgeRuntimeError:
            guessable = False
        if not guessable:
            raise CvBridgeRuntimeError("cv_bridge.cvtColorForDisplay() output encoding is empty and cannot be guessed.")
        encoding = "bgr8"
    elif (encoding not in _COLOR and encoding not in _MONO) or _bit_depth(encoding) != 8:
        raise CvBridgeRuntimeError("cv_bridge.cvtColorForDisplay() does not have an output encoding "
                                   + " " * 15 + "that is color or mono, and has is bit in depth")
    if encoding == "bgr8" and encoding_in == "32SC1":
        labels = image.reshape(image.shape[:2]).astype(np.int64)
        out = _PALETTE[np.mod(labels, len(_PALETTE))]
        out[labels < 0] = 0  # C++'s % is negative there: no colour, and -1 is the background
        return out
    low, high = float(min_image_value), float(max_image_value)
    if do_dynamic_scaling:
        values = image.astype(np.float64)
        finite = values[~np.isinf(values) & ~np.isnan(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if low == high:
            return np.full(image.shape[:2] + (3,), 128, np.uint8)  # saturate_cast(255 / 2.)
    if low != high:
        if _num_channels(encoding_in) != 1:
            raise CvBridgeRuntimeError("cv_bridge.cvtColorForDisplay() scaling for images "
                                       + " " * 15 + "with more than one channel is unsupported")
        if image.dtype.kind in "iu":  # OpenCV subtracts in the image's own type, saturating
            shifted = _saturate(image.astype(np.float64) - low, image.dtype).astype(np.float64)
        else:
            shifted = (image - image.dtype.type(low)).astype(np.float64)
        scaled = _saturate(shifted * (255.0 / (high - low)), np.dtype(np.uint8))
        if colormap == -1:
            return cvtColor2(scaled, "mono8", encoding)
        coloured = cv2.applyColorMap(scaled, colormap)
        if encoding_in == "32FC1":
            coloured[np.isnan(image.reshape(image.shape[:2]))] = 0
        return cvtColor2(coloured, "bgr8", encoding)
    guessed = {"CV_8UC1": "mono8", "16UC1": "mono16", "CV_8UC3": "bgr8", "CV_8UC4": "bgra8",
               "CV_16UC3": "bgr16", "CV_16UC4": "bgra16"}.get(encoding_in, encoding_in)  # cv_bridge's own table
    if guessed == encoding:
        return source
    try:
        return cvtColor2(image, guessed, encoding)
    except _PlainRuntimeError:
        raise  # not a cv_bridge exception: cv_bridge lets it through unwrapped
    except CvBridgeRuntimeError as exc:
        raise CvBridgeRuntimeError(
            f"cv_bridge.cvtColorForDisplay() while trying to convert image from '{encoding_in}' to "
            f"'{encoding}' an exception was thrown ({exc})") from None


# --- Image messages --------------------------------------------------------------------------------------

def _read_pixels(msg: Any, encoding: str) -> np.ndarray:
    """``H, W`` or ``H, W, C`` pixels of an Image-like message read as ``encoding``, in native byte order
    (sharing ``msg.data`` when there is no padding or byte swap, as cv_bridge's do)."""
    dtype, channels = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise CvBridgeError(f"step {step} is smaller than width x channels x bytes = {row_bytes}, {encoding} (Image "
                            f"is wrongly formed: step < width * byte_depth * num_channels  or  {step} != {width} * "
                            f"{dtype.itemsize} * {channels})")
    data = msg.data
    raw = np.frombuffer(bytes(data) if isinstance(data, list) else data, dtype=np.uint8)
    if raw.size < step * height:
        raise CvBridgeError(f"data length {raw.size} != step x height = {step * height} (Image is wrongly formed: "
                            f"height * step != size  or  {height} * {step} != {raw.size})")
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    rows = raw[: step * height].reshape(height, step)[:, :row_bytes]
    image = rows.view(stored) if row_bytes else np.empty((height, 0), stored)
    image = image.reshape((height, width) if channels == 1 else (height, width, channels))
    return image if stored.isnative else image.astype(dtype)  # byte-swapped copy in native order


def image_to_array(img_msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """``CvBridge.imgmsg_to_cv2``: an Image-like message to ``H, W`` or ``H, W, C`` (native order).

    ``passthrough`` returns the pixels as stored (possibly sharing ``msg.data``; copy before
    writing); any other encoding converts with :func:`cvtColor2`.
    """
    image = _read_pixels(img_msg, img_msg.encoding)
    if desired_encoding == "passthrough":
        return image
    return cvtColor2(image, img_msg.encoding, desired_encoding)


def array_to_image(cvim: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
    """``CvBridge.cv2_to_imgmsg``: ``H, W`` or ``H, W, C`` to a ``sensor_msgs/Image``.

    ``passthrough`` writes the OpenCV type name (``16UC1``); a named encoding must have the
    array's OpenCV type. Big-endian arrays are sent as they are, with ``is_bigendian`` set.
    """
    if not isinstance(cvim, (np.ndarray, np.generic)):
        raise TypeError("Your input type is not a numpy array")
    image = np.asarray(cvim)
    if image.ndim not in (2, 3) or image.shape[0] == 0:
        raise CvBridgeError(f"expected a non-empty H x W or H x W x C array, got shape {image.shape}")
    cv_type = opencv_type_name(image.dtype, 1 if image.ndim == 2 else image.shape[2])
    if encoding != "passthrough":
        dtype, channels = _layout(encoding)
        if opencv_type_name(dtype, channels) != cv_type:
            raise CvBridgeError(f"encoding specified as {encoding}, but image has incompatible type {cv_type}")
    from sensor_msgs.msg import Image

    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = cv_type if encoding == "passthrough" else encoding
    big = image.dtype.byteorder == ">" or (image.dtype.byteorder == "=" and sys.byteorder == "big")
    msg.is_bigendian = bool(big and image.dtype.itemsize > 1)
    data = np.ascontiguousarray(image).tobytes()
    msg.step = len(data) // msg.height
    msg.data = data
    return msg


# --- CompressedImage messages ----------------------------------------------------------------------------

def _decode(msg: Any) -> np.ndarray:
    data = msg.data
    if len(data) == 0:
        raise CvBridgeError(f"empty compressed image (format {msg.format!r})")
    if "compressedDepth" in msg.format:
        raise CvBridgeError(f"compressedDepth images are not decoded (format {msg.format!r}); publish 16-bit "
                            "images through the compressed transport with format png")
    buffer = np.frombuffer(bytes(data) if isinstance(data, list) else data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise CvBridgeError(f"could not decode compressed image (format {msg.format!r}, {len(data)} bytes)")
    return image


def _decoded_encoding(image: np.ndarray) -> str:
    """mono/BGR/BGRA of the decoded depth (OpenCV decodes colour as BGR)."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    name = {1: "mono", 3: "bgr", 4: "bgra"}.get(channels)
    if name is None or image.dtype not in (np.uint8, np.uint16):
        return opencv_type_name(image.dtype, channels)
    return f"{name}{8 * image.dtype.itemsize}"


def compressed_to_array(cmprs_img_msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """``CvBridge.compressed_imgmsg_to_cv2``: decode (JPEG, PNG incl. 16 bit, ...) and convert.

    ``passthrough`` returns what OpenCV decodes (colour in BGR order, 16-bit PNG as uint16).
    """
    image = _decode(cmprs_img_msg)
    if desired_encoding == "passthrough":
        return image
    return cvtColor2(image, _decoded_encoding(image), desired_encoding)


def array_to_compressed(cvim: np.ndarray, dst_format: str = "jpg") -> Any:
    """``CvBridge.cv2_to_compressed_imgmsg``: encode the array as it is (BGR order; uint16 -> 16-bit PNG)."""
    if not isinstance(cvim, (np.ndarray, np.generic)):
        raise TypeError("Your input type is not a numpy array")
    from sensor_msgs.msg import CompressedImage

    try:
        ok, buffer = cv2.imencode("." + dst_format, np.asarray(cvim))
    except cv2.error as exc:
        raise CvBridgeError(f"could not encode image to {dst_format!r}: {str(exc).strip()}") from None
    if not ok:
        raise CvBridgeError(f"could not encode image to {dst_format!r}")
    msg = CompressedImage()
    msg.format = dst_format
    msg.data = buffer.tobytes()
    return msg


def decode_compressed(msg: Any) -> tuple[np.ndarray, str]:
    """``(pixels, encoding)`` of a CompressedImage, decoded as ``compressed_image_transport``'s subscriber does.

    A format ``"<encoding>; <png|jpeg> compressed [bgr8|bgr16|mono8]"`` names the original encoding:
    colour is turned back from BGR and 16 bit sent as JPEG is scaled by 256. A plain format
    (``"jpeg"``, ``"png"``: cv_bridge's) is mono/BGR/BGRA of the decoded depth.
    """
    image = _decode(msg)
    fmt = str(msg.format)
    if ";" not in fmt:
        return image, _decoded_encoding(image)
    encoding, tail = (part.strip() for part in fmt.split(";", 1))
    sent_as = tail.split("compressed", 1)[1].strip() if "compressed" in tail else ""
    base = re.sub(r"\d+$", "", encoding)
    if sent_as and (encoding in _BAYER or encoding in _COLOR and _num_channels(encoding) == 2):
        encoding = sent_as  # Bayer or YUV sent as bgr8/mono8 (the subscriber mislabels these): say what was sent
    elif image.ndim == 3 and encoding in _COLOR:
        code = {("rgb", True): cv2.COLOR_BGR2RGB, ("rgba", True): cv2.COLOR_BGR2RGBA, ("bgra", True):
                cv2.COLOR_BGR2BGRA, ("bgr", False): cv2.COLOR_RGB2BGR, ("bgra", False): cv2.COLOR_RGB2BGRA,
                ("rgba", False): cv2.COLOR_RGB2RGBA}.get((base, sent_as.startswith("bgr")))
        image = image if code is None else cv2.cvtColor(image, code)
    known = encoding in _NAMED or _CV_TYPE.fullmatch(encoding) is not None
    if "jpeg" in tail and known and _bit_depth(encoding) == 16 and image.dtype == np.uint8:
        image = image.astype(np.uint16) * np.uint16(256)
    try:
        layout = _layout(encoding)
    except CvBridgeRuntimeError:
        return image, _decoded_encoding(image)
    if layout != (image.dtype, 1 if image.ndim == 2 else image.shape[2]):
        raise CvBridgeError(f"compressed image (format {fmt!r}) decodes to {image.dtype} with "
                            f"{1 if image.ndim == 2 else image.shape[2]} channel(s), not {encoding}")
    return image, encoding


# --- What the node needs: RGB and thermal from whatever a camera publishes -------------------------------

#: Encodings :func:`image_to_rgb8` accepts besides the named colour/mono/Bayer/YUV ones: OpenCV type
#: names read in OpenCV's order (``cv2_to_imgmsg(bgr)`` writes ``8UC3``) and the newer YUV names.
_RGB_ALIASES = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "16UC1": "mono16", "16UC3": "bgr16",
                "16UC4": "bgra16", "8U": "mono8", "16U": "mono16", "uyvy": "yuv422", "yuyv": "yuv422_yuy2"}
RGB_INPUT_ENCODINGS: tuple[str, ...] = tuple(e for e in _NAMED) + tuple(_RGB_ALIASES)
#: Single-channel encodings :func:`image_to_thermal` accepts (counts, or temperatures as float).
THERMAL_INPUT_ENCODINGS: tuple[str, ...] = ("mono8", "mono16", "8UC1", "16UC1", "32FC1", "64FC1", "8U", "16U", "32F",
                                            "64F")


def _rgb_source(encoding: str) -> str:
    """The cv_bridge encoding an RGB input is converted from; UnsupportedEncodingError if none."""
    source = _RGB_ALIASES.get(encoding, encoding)
    if source not in _NAMED:
        raise UnsupportedEncodingError(
            f"unsupported encoding {encoding!r}: it does not convert to RGB (accepted: rgb8, bgr8, rgba8, bgra8 "
            "and their 16-bit forms, mono8, mono16, bayer_rggb/bggr/gbrg/grbg 8 and 16 bit, yuv422 (uyvy), "
            "yuv422_yuy2 (yuyv), 8UC1/3/4, 16UC1/3/4)", encoding)
    return source


def _check_thermal(encoding: str) -> str:
    if encoding not in THERMAL_INPUT_ENCODINGS:
        raise UnsupportedEncodingError(
            f"unsupported encoding {encoding!r}: thermal needs one channel of 8/16-bit counts or float "
            f"temperatures ({', '.join(THERMAL_INPUT_ENCODINGS)})", encoding)
    return encoding


def _check_size(image: np.ndarray, encoding: str) -> None:
    if image.size == 0:
        raise CvBridgeError(f"zero-size image (shape {image.shape}, {encoding})")


def array_to_rgb8(image: np.ndarray, encoding: str) -> np.ndarray:
    """``H, W, 3`` uint8 RGB from pixels in any of :data:`RGB_INPUT_ENCODINGS` (cv_bridge's conversion).

    Raises UnsupportedEncodingError naming an encoding that does not convert to colour, and
    CvBridgeError for an empty image or pixels that do not fit the encoding.
    """
    source = _rgb_source(encoding)
    _check_size(image, encoding)
    return cvtColor2(image, source, "rgb8")


def array_to_thermal(image: np.ndarray, encoding: str) -> np.ndarray:
    """``H, W`` thermal at its own depth: uint8/uint16 counts as they are, float temperatures as float32."""
    _check_thermal(encoding)
    _check_size(image, encoding)
    if image.ndim == 3 and image.shape[2] != 1:
        raise CvBridgeError(f"thermal {encoding} image has {image.shape[2]} channels, expected 1")
    image = image.reshape(image.shape[:2])
    return image.astype(np.float32) if image.dtype == np.float64 else image


def _message_pixels(msg: Any, check: Any) -> tuple[np.ndarray, str]:
    """(pixels, encoding) of an Image (``check`` refuses its encoding first) or a CompressedImage."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return decode_compressed(msg)
    check(msg.encoding)
    return _read_pixels(msg, {"uyvy": "yuv422", "yuyv": "yuv422_yuy2"}.get(msg.encoding, msg.encoding)), msg.encoding


def image_to_rgb8(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> ``H, W, 3`` uint8 RGB (Bayer demosaiced, YUV converted, 16 bit scaled)."""
    return array_to_rgb8(*_message_pixels(msg, _rgb_source))


def image_to_thermal(msg: Any) -> np.ndarray:
    """Image or CompressedImage (e.g. a 16-bit PNG) -> ``H, W`` uint8 / uint16 counts or float32."""
    return array_to_thermal(*_message_pixels(msg, _check_thermal))


# --- The CvBridge class and the choice between the real one and this one ---------------------------------

class _CvBridge:
    """The ``cv_bridge.CvBridge`` API over the functions above."""

    imgmsg_to_cv2 = staticmethod(image_to_array)
    cv2_to_imgmsg = staticmethod(array_to_image)
    compressed_imgmsg_to_cv2 = staticmethod(compressed_to_array)
    cv2_to_compressed_imgmsg = staticmethod(array_to_compressed)
    dtype_with_channels_to_cvtype2 = staticmethod(opencv_type_name)

    def __init__(self) -> None:
        self.cvtype_to_name = {getCvType(f"{d}C{c}"): f"{d}C{c}" for d in _DEPTH_DTYPES for c in (1, 2, 3, 4)}
        self.cvdepth_to_numpy_depth = {getattr(cv2, "CV_" + d): np.dtype(t).name for d, t in _DEPTH_DTYPES.items()}
        self.numpy_type_to_cvtype = {**_DTYPE_DEPTHS, **{v: k for k, v in _DTYPE_DEPTHS.items()}}

    def cvtype2_to_dtype_with_channels(self, cvtype: int) -> tuple[str, int]:
        shift = int(cv2.CV_8UC2).bit_length() - 1  # CV_CN_SHIFT of the installed OpenCV
        return self.cvdepth_to_numpy_depth[cvtype & ((1 << shift) - 1)], (cvtype >> shift) + 1

    def encoding_to_cvtype2(self, encoding: str) -> int:
        return getCvType(encoding)

    def encoding_to_dtype_with_channels(self, encoding: str) -> tuple[str, int]:
        return self.cvtype2_to_dtype_with_channels(self.encoding_to_cvtype2(encoding))


def _real_bridge_works(bridge_cls: Any) -> bool:
    """ROS 2's cv_bridge round-trips raw 16-bit counts; broken ports raise or alter them."""
    try:
        probe, bridge = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16), bridge_cls()
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
    "BRIDGE_ERRORS", "BRIDGE_IMPLEMENTATION", "CvBridge", "CvBridgeError", "CvBridgeRuntimeError", "ENCODINGS",
    "InProjectCvBridge", "RGB_INPUT_ENCODINGS", "THERMAL_INPUT_ENCODINGS", "UnsupportedEncodingError",
    "array_to_compressed", "array_to_image", "array_to_rgb8", "array_to_thermal", "compressed_to_array", "cvtColor2",
    "cvtColorForDisplay", "decode_compressed", "getCvType", "image_to_array", "image_to_rgb8", "image_to_thermal",
    "opencv_type_name",
]
