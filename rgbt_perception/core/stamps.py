"""Time stamps as integer nanoseconds: the one conversion every module uses."""
from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_nanoseconds(stamp: Any) -> int:
    """Nanoseconds of an ``rclpy.time.Time`` or a ``builtin_interfaces/Time`` message."""
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
    raise TypeError(f"cannot read a time stamp from {type(stamp).__name__}")


def message_stamp_ns(msg: Any) -> int | None:
    """Stamp of ``msg.header.stamp`` in nanoseconds, or None for a message without header."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    return stamp_to_nanoseconds(stamp)


def split_nanoseconds(ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of a ``builtin_interfaces/Time`` for integer nanoseconds (floor division,
    so stamps before the epoch keep ``0 <= nanosec < 1e9``)."""
    return int(ns // NS_PER_S), int(ns % NS_PER_S)
