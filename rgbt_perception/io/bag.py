"""Reading and writing rosbag2 directories without ROS, through the ``rosbags`` library.

A bag made by ``rgbt-make-bag`` holds

* ``rgb/image``      sensor_msgs/Image ``rgb8``, ``header.frame_id = "rgb_camera"``
* ``thermal/image``  sensor_msgs/Image ``mono16`` (raw counts) or ``mono8``, ``"thermal_camera"``
* ``labels/image``   sensor_msgs/Image ``mono8`` class indices (255 = ignore), stamped like its RGB frame
* ``labels/boxes``   rgbt_msgs/Detection2DArray ground-truth boxes (score 1), stamped like its RGB frame

Messages are (de)serialised with the Kilted typestore plus the ``rgbt_msgs`` definitions, so
the same reader serves the node's recorded outputs (``semantic``, ``detections``, ``status``).
Every failure (missing file or topic, unknown encoding, truncated or corrupt storage) raises
:class:`BagError` with a one-line message naming the bag and the problem; a path that cannot be
opened as a bag at all (missing, a folder without ``metadata.yaml``, another kind of file,
unreadable storage) raises its subclass :class:`BagOpenError`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rgbt_perception.core import topics
from rgbt_perception.core.image_codec import ENCODINGS, CvBridgeError, image_to_array, image_to_rgb8, image_to_thermal
from rgbt_perception.core.stamps import split_nanoseconds, stamp_to_nanoseconds
from rgbt_perception.io.bag_storage import METADATA_VERSIONS, STORAGE_FORMATS

RGB_TOPIC = topics.RGB_IMAGE
THERMAL_TOPIC = topics.THERMAL_IMAGE
LABEL_TOPIC = topics.LABEL
LABEL_BOXES_TOPIC = topics.LABEL_BOXES
RGB_FRAME_ID = "rgb_camera"
THERMAL_FRAME_ID = "thermal_camera"

IMAGE_TYPE = "sensor_msgs/msg/Image"
DETECTIONS_TYPE = "rgbt_msgs/msg/Detection2DArray"
STATUS_TYPE = "rgbt_msgs/msg/PerceptionStatus"

#: metadata.yaml custom_data key holding the thermal->RGB homography (JSON, 9 numbers row-major).
HOMOGRAPHY_KEY = "rgbt.thermal_to_rgb"


# What a bag may carry: the encodings the project's image codec decodes.
IMAGE_ENCODINGS = ENCODINGS


class BagError(RuntimeError):
    """A bag that cannot be written or read as asked; the message names the bag and the problem."""


class BagOpenError(BagError):
    """The path is no readable bag at all (missing, not a rosbag2 bag, unreadable metadata or storage):
    nothing was read from it."""


#: Storage files a bag may be given as instead of its directory.
STORAGE_SUFFIXES = (".mcap", ".db3")


def check_bag_path(path: Path) -> None:
    """Raise :class:`BagOpenError` when ``path`` cannot be a rosbag2 bag, saying what it is instead."""
    if not path.exists():
        raise BagOpenError(f"bag {path} does not exist")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return
        storage = sorted(p.name for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)
        hint = (f"; it holds {', '.join(storage[:3])}: give that file instead, or restore metadata.yaml"
                if storage else "")
        raise BagOpenError(f"{path} is not a rosbag2 bag: the folder has no metadata.yaml{hint}")
    if path.suffix not in STORAGE_SUFFIXES:
        raise BagOpenError(f"{path} is not a rosbag2 bag: expected a bag folder (with metadata.yaml) or a "
                           f"{' / '.join(STORAGE_SUFFIXES)} storage file")


def _msg_dirs() -> list[Path]:
    """Where the ``rgbt_msgs`` .msg files live: the ament index first, then the source tree."""
    dirs = [Path(prefix) / "share" / "rgbt_msgs" / "msg"
            for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if prefix]
    dirs.append(Path(__file__).resolve().parents[2] / "rgbt_msgs" / "msg")
    return dirs


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The Kilted typestore with the ``rgbt_msgs`` message types registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    for directory in _msg_dirs():
        files = sorted(directory.glob("*.msg"))
        if not files:
            continue
        types: dict[str, Any] = {}
        for path in files:
            types.update(get_types_from_msg(path.read_text(), f"rgbt_msgs/msg/{path.stem}"))
        store.register(types)
        break
    return store


def _stamp(ns: int) -> Any:
    store = typestore()
    sec, nanosec = split_nanoseconds(ns)
    return store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return typestore().types["std_msgs/msg/Header"](stamp=_stamp(stamp_ns), frame_id=frame_id)


def array_to_image_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """``H, W`` or ``H, W, C`` array to a rosbags sensor_msgs/Image (little-endian, no row padding)."""
    if encoding not in IMAGE_ENCODINGS:
        raise BagError(f"unknown image encoding {encoding!r}; known: {', '.join(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    image = np.asarray(image)
    if image.dtype != dtype:
        raise BagError(f"encoding {encoding} needs {dtype} pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise BagError(f"encoding {encoding} needs {channels} channel(s), got an array of shape {image.shape}")
    height, width = image.shape[:2]
    data = np.ascontiguousarray(image.astype(dtype.newbyteorder("<"), copy=False)).view(np.uint8).reshape(-1)
    return typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * channels * dtype.itemsize, data=data,
    )


def image_msg_to_array(msg: Any, topic: str | None = None) -> np.ndarray:
    """sensor_msgs/Image to ``H, W`` or ``H, W, C`` through the project's image codec.

    The camera topics come out as the node reads them, whatever their encoding: ``rgb/image`` as
    ``H, W, 3`` uint8 RGB (Bayer demosaiced, YUV converted, ``8UC3`` read as BGR), ``thermal/image``
    as ``H, W`` at its own depth; other topics as stored (passthrough).
    Raises ``BagError`` for an unknown encoding or a buffer that does not match the header.
    """
    decode = {RGB_TOPIC: image_to_rgb8, THERMAL_TOPIC: image_to_thermal}.get(topic or "", image_to_array)
    try:
        image = decode(msg)
    except CvBridgeError as exc:
        raise BagError(str(exc)) from None
    # The codec may return a read-only view of the message buffer; callers get their own pixels.
    return image if image.flags.writeable and image.base is None else image.copy()


@dataclass
class ImageFrame:
    """One image message read from a bag (``image``: see :func:`image_msg_to_array`; ``encoding`` as recorded)."""

    topic: str
    stamp_ns: int
    log_time_ns: int
    frame_id: str
    encoding: str
    image: np.ndarray
    # The message header, so a frame can be fed to the synchroniser like the message itself.
    header: Any = None
    # The CDR bytes as recorded (``frames(keep_raw=True)``), for replay into a graph.
    raw: bytes | None = None


@dataclass
class BoxesFrame:
    """One Detection2DArray read from a bag; boxes ``N, 4`` xyxy RGB pixels."""

    topic: str
    stamp_ns: int
    log_time_ns: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)


def boxes_frame_from_msg(topic: str, msg: Any, log_time_ns: int) -> BoxesFrame:
    """Detection2DArray (rosbags or rclpy object) to a :class:`BoxesFrame`."""
    dets = list(msg.detections)
    boxes = np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in dets], dtype=np.float32).reshape(-1, 4)
    return BoxesFrame(
        topic=topic, stamp_ns=stamp_to_nanoseconds(msg.header.stamp), log_time_ns=log_time_ns, boxes=boxes,
        scores=np.array([d.score for d in dets], dtype=np.float32),
        labels=np.array([d.class_id for d in dets], dtype=np.int64),
        names=[str(d.label) for d in dets],
    )


class BagWriter:
    """Writes a rosbag2 directory (MCAP or sqlite3, metadata version 8 or 9).

    >>> with BagWriter("out_bag", storage="mcap", version=9) as bag:
    ...     bag.write_image(RGB_TOPIC, rgb, "rgb8", stamp_ns, RGB_FRAME_ID)
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", version: int = 9) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGE_FORMATS:
            raise BagError(f"unknown storage format {storage!r}; choose one of {', '.join(STORAGE_FORMATS)}")
        if version not in METADATA_VERSIONS:
            raise BagError(f"unsupported metadata version {version}; choose 8 (Humble) or 9 (Jazzy and later)")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"bag {self.path} exists already; remove it or choose another path")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=version, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        self._open = False
        self.counts: dict[str, int] = {}

    def open(self) -> "BagWriter":
        self._writer.open()
        self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_custom_data(self, key: str, value: str) -> None:
        """Free-form ``custom_data`` entry in metadata.yaml (e.g. the source data set)."""
        self._writer.set_custom_data(key, value)

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"topic {topic} already holds {conn.msgtype}, cannot add {msgtype}")
        return conn

    def write_msg(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Serialise a rosbags message object and write it at ``log_time_ns``."""
        data = typestore().serialize_cdr(msg, msg.__msgtype__)
        self.write_raw(topic, msg.__msgtype__, data, log_time_ns)

    def write_raw(self, topic: str, msgtype: str, cdr: bytes | memoryview, log_time_ns: int) -> None:
        """Write already CDR-serialised bytes (e.g. ``rclpy.serialization.serialize_message``)."""
        self._writer.write(self._connection(topic, msgtype), int(log_time_ns), cdr)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_image(self, topic: str, image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                    log_time_ns: int | None = None) -> None:
        """Image message stamped ``stamp_ns``, recorded at ``log_time_ns`` (default: the stamp)."""
        msg = array_to_image_msg(image, encoding, stamp_ns, frame_id)
        self.write_msg(topic, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_boxes(self, topic: str, boxes: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
                    stamp_ns: int, frame_id: str, scores: Sequence[float] | None = None,
                    log_time_ns: int | None = None) -> None:
        """Boxes ``N, 4`` xyxy as rgbt_msgs/Detection2DArray (scores default to 1: ground truth)."""
        types = typestore().types
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = [int(v) for v in labels]
        scores = [1.0] * len(labels) if scores is None else [float(s) for s in scores]
        detections = [
            types["rgbt_msgs/msg/Detection2D"](
                class_id=label, label=class_names[label] if 0 <= label < len(class_names) else str(label),
                score=score, x_min=float(b[0]), y_min=float(b[1]), x_max=float(b[2]), y_max=float(b[3]))
            for b, label, score in zip(boxes, labels, scores)
        ]
        msg = types[DETECTIONS_TYPE](header=_header(stamp_ns, frame_id), detections=detections)
        self.write_msg(topic, msg, stamp_ns if log_time_ns is None else log_time_ns)


@dataclass
class TopicSummary:
    msgtype: str
    count: int


class BagReader:
    """Reads a rosbag2 directory (or a single ``.mcap``/``.db3`` file) message by message.

    ``frames(topics)`` yields :class:`ImageFrame` / :class:`BoxesFrame` objects (other types as
    ``(topic, log_time_ns, message)``) in recording order. Truncation or corruption found while
    iterating raises :class:`BagError` after the messages read so far were yielded.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        check_bag_path(self.path)
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises several types for unreadable storage
            raise BagOpenError(f"bag {self.path} cannot be opened (truncated or corrupt?): {_one_line(exc)}") from None
        try:
            self.topics = {
                topic: TopicSummary(info.msgtype or "?", int(info.msgcount))
                for topic, info in self._reader.topics.items()
            }
        except Exception as exc:
            self.close()
            raise BagOpenError(f"bag {self.path}: unreadable topic table: {_one_line(exc)}") from None

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def custom_data(self) -> dict[str, str]:
        """``custom_data`` of metadata.yaml (empty for a bare storage file)."""
        metadata = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(metadata, "custom", None) or {})

    def thermal_to_rgb(self) -> np.ndarray | None:
        """The camera rig's thermal->RGB homography recorded by ``rgbt-make-bag`` (None: same view)."""
        value = self.custom_data.get(HOMOGRAPHY_KEY)
        if not value:
            return None
        from rgbt_perception.core.registration import parse_homography

        try:
            return parse_homography(json.loads(value))
        except (ValueError, TypeError) as exc:
            raise BagError(f"bag {self.path}: custom_data {HOMOGRAPHY_KEY} is not a valid homography: {exc}") from None

    def require_topics(self, topics: Iterable[str], msgtype: str = IMAGE_TYPE) -> None:
        """Raise ``BagError`` naming every missing topic (and the ones the bag does hold)."""
        missing = [t for t in topics if _find_topic(self.topics, t) is None]
        if missing:
            held = ", ".join(f"{t} ({s.msgtype})" for t, s in sorted(self.topics.items())) or "none"
            raise BagError(f"bag {self.path} lacks topic(s) {', '.join(missing)}; it holds: {held}")
        for t in topics:
            actual = self.topics[_find_topic(self.topics, t)].msgtype
            if actual != msgtype:
                raise BagError(f"bag {self.path}: topic {t} holds {actual}, expected {msgtype}")

    def count(self, topic: str) -> int:
        name = _find_topic(self.topics, topic)
        return self.topics[name].count if name else 0

    def frames(self, topics: Iterable[str] | None = None, keep_raw: bool = False
               ) -> Iterator[ImageFrame | BoxesFrame | tuple]:
        """Decoded messages of ``topics`` (all when None; names with or without leading '/').

        ``keep_raw`` keeps each image's recorded CDR bytes in ``ImageFrame.raw``.
        """
        store = typestore()
        wanted = None if topics is None else {_find_topic(self.topics, t) for t in topics} - {None}
        connections = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not connections:
            return
        messages = self._reader.messages(connections=connections)
        expected = sum(c.msgcount for c in connections)
        delivered = 0
        while True:
            try:
                connection, log_time, raw = next(messages)
            except StopIteration:
                # A damaged chunk can end the storage's iteration early without an error.
                if delivered < expected:
                    raise BagError(f"bag {self.path} is truncated or corrupt: it ended after {delivered} of the "
                                   f"{expected} messages its metadata lists") from None
                return
            except Exception as exc:
                raise BagError(f"bag {self.path} is truncated or corrupt: {_one_line(exc)}") from None
            delivered += 1
            topic = connection.topic.lstrip("/")
            try:
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:
                raise BagError(f"bag {self.path}: message on {topic} at {log_time} ns cannot be decoded "
                               f"(corrupt?): {_one_line(exc)}") from None
            if connection.msgtype == IMAGE_TYPE:
                try:
                    image = image_msg_to_array(msg, topic)
                except BagError as exc:
                    stamp = stamp_to_nanoseconds(msg.header.stamp)
                    raise BagError(f"bag {self.path}: {topic} at stamp {stamp} ns: {exc}") from None
                yield ImageFrame(topic=topic, stamp_ns=stamp_to_nanoseconds(msg.header.stamp),
                                 log_time_ns=int(log_time), frame_id=str(msg.header.frame_id),
                                 encoding=str(msg.encoding), image=image, header=msg.header,
                                 raw=bytes(raw) if keep_raw else None)
            elif connection.msgtype == DETECTIONS_TYPE:
                yield boxes_frame_from_msg(topic, msg, int(log_time))
            else:
                yield (topic, int(log_time), msg)


def _find_topic(topics: dict[str, Any], topic: str) -> str | None:
    for name in (topic, "/" + topic.lstrip("/"), topic.lstrip("/")):
        if name in topics:
            return name
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
