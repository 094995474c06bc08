"""Approximate-time pairing of camera streams with the Python API of ``message_filters``.

``message_filters`` is used when it imports (``SYNC_IMPLEMENTATION == "message_filters"``).
Otherwise this module provides ``Subscriber``, ``SimpleFilter`` and
``ApproximateTimeSynchronizer`` with the same constructor arguments, callbacks and matching
rule, plus one deliberate difference: the in-project synchroniser recovers from a backward
time jump (a rosbag played in a loop) instead of stalling.

Matching rule (the one of ``message_filters``): on every arrival, the new message is matched
against the other inputs' queues; only sets that contain the newest message are considered,
candidates are tried nearest-first, and the first set whose stamps span less than ``slop``
is signalled and removed from the queues. Each queue keeps at most ``queue_size`` messages,
evicting the oldest stamp. The user callback runs inside the synchroniser's lock.

The module has no ROS import: stamps are read duck-typed from ``rclpy.time.Time``
(``.nanoseconds``) or ``builtin_interfaces/Time`` (``.sec``/``.nanosec``), and the
``Subscriber`` only calls ``node.create_subscription``.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable, Sequence

from rgbt_perception.core.stamps import message_stamp_ns, stamp_to_nanoseconds  # noqa: F401  (message_filters-style API)

_log = logging.getLogger(__name__)

#: Default size of a backward stamp jump (seconds) that makes the in-project synchroniser
#: clear its queues and start over. Out-of-order delivery on one topic stays far below it.
DEFAULT_JUMP_BACK_THRESHOLD = 1.0


class BackwardJumpDetector:
    """Remembers the newest stamp per input and reports stamps that went back in time.

    A stamp older than the newest one seen on the same input by more than ``threshold_ns``
    is a jump (a looped bag, a restarted driver); smaller reorderings are not.
    """

    def __init__(self, num_inputs: int, threshold_s: float = DEFAULT_JUMP_BACK_THRESHOLD) -> None:
        if threshold_s <= 0:
            raise ValueError(f"jump-back threshold must be positive, got {threshold_s}")
        self.threshold_ns = int(threshold_s * 1e9)
        self.newest: list[int | None] = [None] * num_inputs

    def is_jump(self, index: int, stamp_ns: int) -> bool:
        newest = self.newest[index]
        return newest is not None and newest - stamp_ns > self.threshold_ns

    def observe(self, index: int, stamp_ns: int) -> None:
        newest = self.newest[index]
        if newest is None or stamp_ns > newest:
            self.newest[index] = stamp_ns

    def reset(self) -> None:
        self.newest = [None] * len(self.newest)


class _SimpleFilter:
    """Base of every filter: callbacks registered with arguments, called on ``signalMessage``."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}

    def registerCallback(self, cb: Callable[..., Any], *args: Any) -> int:  # noqa: N802 (message_filters API)
        conn = len(self.callbacks)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 (message_filters API)
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class _Subscriber(_SimpleFilter):
    """A ROS subscription as a filter: ``Subscriber(node, msg_type, topic, qos_profile=...)``.

    QoS is passed by keyword only, like ``message_filters``; other keywords (for example
    ``event_callbacks``) go to ``node.create_subscription``.
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, *, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos_profile, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 (message_filters API)
        return self.topic

    def __getattr__(self, key: str) -> Any:
        # Called only for attributes the filter lacks: expose the subscription's.
        if key == "sub":
            raise AttributeError(key)
        return getattr(self.sub, key)


class _ApproximateTimeSynchronizer(_SimpleFilter):
    """Approximate-time pairing of ``len(fs)`` inputs (``message_filters`` semantics).

    Args:
        fs: input filters (``Subscriber`` or any ``SimpleFilter``).
        queue_size: messages kept per input; it must exceed (arrival delay difference x the
            faster rate), e.g. more than 5 for 30 Hz RGB with thermal arriving 150 ms later.
        slop: largest stamp difference (seconds) within a matched set.
        allow_headerless: stamp messages without ``header.stamp`` with the arrival time
            instead of dropping them.
        jump_back_threshold: a stamp older than its input's newest by more than this many
            seconds clears the queues (keeping only entries that fit the new timeline), so
            pairing goes on after a bag loops. ``None`` disables recovery.
    """

    def __init__(
        self,
        fs: Sequence[Any],
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        *,
        jump_back_threshold: float | None = DEFAULT_JUMP_BACK_THRESHOLD,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if slop < 0:
            raise ValueError(f"slop must not be negative, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop * 1e9))
        self.allow_headerless = allow_headerless
        self.jump_back_threshold = jump_back_threshold
        self.lock = threading.Lock()
        self.jumps_recovered = 0
        self._warned_headerless = False
        self.connectInput(fs)

    @property
    def slop(self) -> float:
        return self.slop_ns / 1e9

    @slop.setter
    def slop(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"slop must not be negative, got {seconds}")
        self.slop_ns = int(round(seconds * 1e9))

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 (message_filters API)
        self.queues: list[dict[int, Any]] = [{} for _ in fs]
        self._jumps = BackwardJumpDetector(len(fs), self.jump_back_threshold or DEFAULT_JUMP_BACK_THRESHOLD)
        self.input_connections = [f.registerCallback(self.add, q, i) for i, (f, q) in enumerate(zip(fs, self.queues))]

    def add(self, msg: Any, my_queue: dict[int, Any], my_queue_index: int | None = None) -> None:
        stamp = message_stamp_ns(msg)
        if stamp is None:
            if not self.allow_headerless:
                if not self._warned_headerless:
                    _log.warning(
                        "message without header.stamp dropped: pass allow_headerless=True to stamp "
                        "such messages with their arrival time"
                    )
                    self._warned_headerless = True
                return
            stamp = time.time_ns()
        with self.lock:
            if my_queue_index is not None and self.jump_back_threshold is not None:
                if self._jumps.is_jump(my_queue_index, stamp):
                    self._restart_timeline(stamp)
                self._jumps.observe(my_queue_index, stamp)
            my_queue[stamp] = msg
            while len(my_queue) > self.queue_size:
                del my_queue[min(my_queue)]
            self._match(stamp, my_queue_index)

    def _restart_timeline(self, stamp: int) -> None:
        """Forget everything newer than the jumped-to stamp: it belongs to the old timeline."""
        horizon = stamp + self._jumps.threshold_ns
        for queue in self.queues:
            for s in [s for s in queue if s > horizon]:
                del queue[s]
        self._jumps.reset()
        for i, queue in enumerate(self.queues):
            if queue:
                self._jumps.observe(i, max(queue))
        self.jumps_recovered += 1

    def _match(self, stamp: int, my_queue_index: int | None) -> None:
        if my_queue_index is None:
            search = list(enumerate(self.queues))
        else:
            search = [(i, q) for i, q in enumerate(self.queues) if i != my_queue_index]
        candidates: list[list[int]] = []
        for _, queue in search:
            near = sorted((abs(s - stamp), s) for s in queue if abs(s - stamp) <= self.slop_ns)
            if not near:
                return
            candidates.append([s for _, s in near])
        for combination in itertools.product(*candidates):
            stamps = list(combination)
            if my_queue_index is not None:
                stamps.insert(my_queue_index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns and all(s in q for q, s in zip(self.queues, stamps)):
                msgs = [q[s] for q, s in zip(self.queues, stamps)]
                self.signalMessage(*msgs)
                for q, s in zip(self.queues, stamps):
                    del q[s]
                break


try:  # The real library wherever ROS 2 provides it.
    from message_filters import ApproximateTimeSynchronizer, SimpleFilter, Subscriber  # type: ignore[import-not-found]

    SYNC_IMPLEMENTATION = "message_filters"
except ImportError:
    SimpleFilter = _SimpleFilter
    Subscriber = _Subscriber
    ApproximateTimeSynchronizer = _ApproximateTimeSynchronizer
    SYNC_IMPLEMENTATION = "rgbt_perception.core.sync"

#: The in-project classes, always available (tests and jump recovery).
InProjectSimpleFilter = _SimpleFilter
InProjectSubscriber = _Subscriber
InProjectApproximateTimeSynchronizer = _ApproximateTimeSynchronizer

__all__ = [
    "ApproximateTimeSynchronizer",
    "BackwardJumpDetector",
    "DEFAULT_JUMP_BACK_THRESHOLD",
    "InProjectApproximateTimeSynchronizer",
    "InProjectSimpleFilter",
    "InProjectSubscriber",
    "SYNC_IMPLEMENTATION",
    "SimpleFilter",
    "Subscriber",
    "message_stamp_ns",
    "stamp_to_nanoseconds",
]
