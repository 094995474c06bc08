"""Publish a synthetic RGB + thermal camera pair from its own process, in phases.

Used by the node tests and by ``measure_latency.py``. RGB and thermal run at their own rates
with stamp jitter; thermal is published ``--thermal-delay`` seconds after its stamp, as a
slower camera pipeline would deliver it. RGB is rgb8 and thermal mono16 (big-endian when asked)
unless a phase names other encodings, as camera drivers publish them.

Phases (``--phases live:4,jump:3,thermal_off:3,live:3``; ``name:seconds:RGB/THERMAL`` sets the
encodings of a phase, e.g. ``live:2:bayer_rggb8/16UC1``):
  live         both cameras
  jump         stamps restart 1000 s earlier (a looped bag), then both cameras
  thermal_off  RGB only
  rgb_off      thermal only
  bad          both cameras, plus one of each bad message (see BAD_CASES)

RGB encodings: rgb8, bgr8, 8UC3 (BGR, as cv2_to_imgmsg(bgr) writes it), rgba8, mono8, bayer_*8/16,
yuv422 (UYVY), yuv422_yuy2 (YUYV), nv21 (refused by the node). Thermal: mono16, 16UC1, mono8, 8UC1,
32FC1 (kelvin). ``--thermal-compressed`` sends thermal as 16-bit PNG on thermal/image/compressed;
``--drop rgb:5,thermal:4`` skips every 5th RGB and 4th thermal frame (lost in transport).

Prints one JSON line per phase (name, encodings, wall start/end, stamp range) and a final
``{"published": {...}}`` line with message counts.
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

RGB_ENCODINGS = ("rgb8", "bgr8", "8UC3", "rgba8", "mono8", "yuv422", "yuv422_yuy2", "nv21",
                 *(f"bayer_{p}{b}" for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)))
THERMAL_ENCODINGS = ("mono16", "16UC1", "mono8", "8UC1", "32FC1")
BAD_CASES = ("rgb_unsupported_encoding", "thermal_data_length", "rgb_zero_size", "thermal_nan_32fc1",
             "thermal_frame_id_change")


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


@functools.lru_cache(maxsize=16)
def _rgb_pixels(height: int, width: int, variant: int) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 4 + variant * 16) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=-1)
    return rgb.astype(np.uint8).tobytes()


@functools.lru_cache(maxsize=16)
def _thermal_counts(height: int, width: int, variant: int, big_endian: bool) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    counts = (20000 + 40 * xx + 30 * yy + 100 * variant).astype(np.uint16)
    return counts.astype(">u2" if big_endian else "<u2").tobytes()


def _bayer(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The mosaic a Bayer sensor with ``pattern`` (e.g. "rggb": top-left 2x2 block row by row) records."""
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.empty(rgb.shape[:2], rgb.dtype)
    for i, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[i]]]
    return mosaic


@functools.lru_cache(maxsize=64)
def _encoded_rgb(height: int, width: int, variant: int, encoding: str) -> tuple[bytes, int]:
    """(data, step) of the RGB test frame in ``encoding``."""
    rgb = np.frombuffer(_rgb_pixels(height, width, variant), np.uint8).reshape(height, width, 3)
    if encoding == "rgb8":
        image = rgb
    elif encoding in ("bgr8", "8UC3"):
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == "mono8":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "yuv422":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY)
    elif encoding == "yuv422_yuy2":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2)
    elif encoding == "nv21":
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YV12)  # the node refuses nv21 before reading a byte
    elif encoding.startswith("bayer_"):
        image = _bayer(rgb, encoding[6:10])
        image = image.astype(np.uint16) * 257 if encoding.endswith("16") else image
    else:
        raise ValueError(f"no test frames for RGB encoding {encoding!r} (choose from {', '.join(RGB_ENCODINGS)})")
    image = np.ascontiguousarray(image)
    return image.tobytes(), int(image.strides[0])


def make_rgb(height: int, width: int, k: int, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    # A few cached frames keep the publisher on schedule at camera sizes.
    data, step = _encoded_rgb(height, width, k % 8, encoding)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def compress(msg: Image) -> CompressedImage:
    """The same RGB frame as a JPEG CompressedImage (what image_transport's compressed plugin sends)."""
    rgb = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
    out.header = msg.header
    return out


def make_thermal(height: int, width: int, k: int, stamp_ns: int, frame_id: str, big_endian: bool,
                 encoding: str = "mono16") -> Image:
    if encoding in ("mono16", "16UC1"):
        data, step = _thermal_counts(height, width, k % 8, big_endian), width * 2
    elif encoding in ("mono8", "8UC1"):
        counts = np.frombuffer(_thermal_counts(height, width, k % 8, False), "<u2")
        data, step = (counts >> 8).astype(np.uint8).tobytes(), width
    elif encoding == "32FC1":
        counts = np.frombuffer(_thermal_counts(height, width, k % 8, False), "<u2")
        kelvin = (counts.astype(np.float32) / 100.0).astype(">f4" if big_endian else "<f4")
        data, step = kelvin.tobytes(), width * 4
    else:
        raise ValueError(f"no test frames for thermal encoding {encoding!r} "
                         f"(choose from {', '.join(THERMAL_ENCODINGS)})")
    big = big_endian and encoding not in ("mono8", "8UC1")
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(big), step=step, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def compress_thermal(msg: Image) -> CompressedImage:
    """A mono16 frame as compressed_image_transport sends it: 16-bit PNG, format "mono16; png compressed "."""
    counts = np.frombuffer(msg.data, ">u2" if msg.is_bigendian else "<u2").reshape(msg.height, msg.width)
    ok, png = cv2.imencode(".png", counts.astype(np.uint16))
    out = CompressedImage(format="mono16; png compressed ", data=png.tobytes())
    out.header = msg.header
    return out


def make_bad(case: str, rgb_size: tuple[int, int], thermal_size: tuple[int, int], stamp_ns: int) -> tuple[str, Image]:
    """(input, message) for one bad case."""
    if case == "rgb_unsupported_encoding":
        return "rgb", make_rgb(*rgb_size, 0, stamp_ns, "rgb_camera", "nv21")
    if case == "thermal_data_length":
        msg = make_thermal(*thermal_size, 0, stamp_ns, "thermal_camera", False)
        msg.data = bytes(msg.data)[:-7]
        return "thermal", msg
    if case == "rgb_zero_size":
        msg = make_rgb(*rgb_size, 0, stamp_ns, "rgb_camera")
        msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b""
        return "rgb", msg
    if case == "thermal_nan_32fc1":
        height, width = thermal_size
        temps = np.full((height, width), 300.0, np.float32)
        temps[1, 1] = np.nan
        msg = Image(height=height, width=width, encoding="32FC1", is_bigendian=0, step=width * 4, data=temps.tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = "thermal_camera"
        return "thermal", msg
    if case == "thermal_frame_id_change":
        return "thermal", make_thermal(*thermal_size, 0, stamp_ns, "another_camera", False)
    raise ValueError(f"unknown bad case {case!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="/")
    parser.add_argument("--rgb-size", type=_size, default=(48, 64), help="HxW")
    parser.add_argument("--thermal-size", type=_size, default=(24, 32), help="HxW")
    parser.add_argument("--rgb-hz", type=float, default=30.0)
    parser.add_argument("--thermal-hz", type=float, default=9.0)
    parser.add_argument("--thermal-delay", type=float, default=0.15, help="seconds from stamp to publication")
    parser.add_argument("--jitter", type=float, default=0.005, help="uniform stamp jitter, seconds")
    parser.add_argument("--phases", default="live:5", help="name:seconds,...")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--big-endian", action="store_true", help="publish thermal with is_bigendian=1")
    parser.add_argument("--rgb-compressed", action="store_true", help="publish RGB as JPEG on rgb/image/compressed")
    parser.add_argument("--thermal-compressed", action="store_true",
                        help="publish thermal as 16-bit PNG on thermal/image/compressed")
    parser.add_argument("--drop", default="", help="rgb:N,thermal:M: skip every Nth RGB / Mth thermal frame")
    parser.add_argument("--discovery-wait", type=float, default=1.5, help="seconds to wait for subscribers first")
    args = parser.parse_args(argv)

    rclpy.init()
    node = rclpy.create_node("camera_publisher", namespace=args.namespace)
    qos = QoSProfile(depth=10, durability=DurabilityPolicy.VOLATILE,
                     reliability=ReliabilityPolicy.RELIABLE if args.reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT)
    publishers = {"rgb": node.create_publisher(CompressedImage, "rgb/image/compressed", qos) if args.rgb_compressed
                  else node.create_publisher(Image, "rgb/image", qos),
                  "thermal": node.create_publisher(CompressedImage, "thermal/image/compressed", qos)
                  if args.thermal_compressed else node.create_publisher(Image, "thermal/image", qos)}
    drop_every = {name: int(n) for name, n in (item.split(":") for item in args.drop.split(",") if item)}
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in publishers.values()):
        time.sleep(0.05)
    time.sleep(args.discovery_wait)

    rng = random.Random(0)
    counts = {"rgb": 0, "thermal": 0, "bad": 0, "dropped": 0}
    scheduled = {"rgb": 0, "thermal": 0}
    stamp_offset_ns = 0  # stamps = wall clock + offset; a jump makes it negative
    try:
        for spec in args.phases.split(","):
            name, seconds, *encodings = spec.split(":")
            seconds = float(seconds)
            rgb_encoding, thermal_encoding = encodings[0].split("/") if encodings else ("rgb8", "mono16")
            if name == "jump":
                stamp_offset_ns -= 1000 * 1_000_000_000
            start_wall = time.time()
            # Schedule of (publication time, input, stamp minus publication time) for this phase.
            # Stamps are taken when a frame goes out, like a driver stamping at capture, so a
            # publisher that falls behind schedule does not add its lag to measured latency.
            events: list[tuple[float, str, float]] = []
            if name != "rgb_off":
                events += [(k / args.rgb_hz, "rgb", rng.uniform(-args.jitter, args.jitter))
                           for k in range(int(seconds * args.rgb_hz))]
            if name != "thermal_off":
                for k in range(int(seconds * args.thermal_hz)):
                    t = k / args.thermal_hz + rng.uniform(-args.jitter, args.jitter)
                    events.append((t + args.thermal_delay, "thermal", -args.thermal_delay))
            if name == "bad":
                step = seconds / (len(BAD_CASES) + 1)
                events += [((i + 1) * step, f"bad:{case}", 0.0) for i, case in enumerate(BAD_CASES)]
            events.sort()
            stamps = []
            for when, what, stamp_s in events:
                delay = start_wall + when - time.time()
                if delay > 0:
                    time.sleep(delay)
                stamp_ns = time.time_ns() + stamp_offset_ns + int(stamp_s * 1e9)
                if what.startswith("bad:"):
                    which, msg = make_bad(what[4:], args.rgb_size, args.thermal_size, stamp_ns)
                    publishers[which].publish(msg)
                    counts["bad"] += 1
                    continue
                scheduled[what] += 1
                if what in drop_every and scheduled[what] % drop_every[what] == 0:
                    counts["dropped"] += 1  # lost in transport: never reaches the node
                    continue
                if what == "rgb":
                    msg = make_rgb(*args.rgb_size, counts["rgb"], stamp_ns, "rgb_camera", rgb_encoding)
                    if args.rgb_compressed:
                        msg = compress(msg)
                else:
                    msg = make_thermal(*args.thermal_size, counts["thermal"], stamp_ns, "thermal_camera",
                                       args.big_endian, "mono16" if args.thermal_compressed else thermal_encoding)
                    if args.thermal_compressed:
                        msg = compress_thermal(msg)
                publishers[what].publish(msg)
                counts[what] += 1
                stamps.append(stamp_ns)
            # Let the phase last its full length even when its last event came early.
            rest = start_wall + seconds - time.time()
            if rest > 0:
                time.sleep(rest)
            print(json.dumps({"phase": name, "rgb_encoding": rgb_encoding, "thermal_encoding": thermal_encoding,
                              "start": start_wall, "end": time.time(),
                              "stamp_min": min(stamps) if stamps else None,
                              "stamp_max": max(stamps) if stamps else None}), flush=True)
        print(json.dumps({"published": counts}), flush=True)
        time.sleep(0.5)  # let reliable deliveries finish before the writers go
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
