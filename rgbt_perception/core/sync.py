"""Time pairing of message streams with the Python API and semantics of ROS 2 ``message_filters``.

``message_filters`` is used when it imports (``SYNC_IMPLEMENTATION == "message_filters"``).
Otherwise this module provides ``SimpleFilter``, ``Subscriber``, ``Cache``, ``TimeSynchronizer``
and ``ApproximateTimeSynchronizer`` with the same constructor arguments, callbacks and rules as
``message_filters/__init__.py``:

- ``TimeSynchronizer(fs, queue_size)``: each input keeps its ``queue_size`` newest stamps (the
  oldest stamp is evicted first); a stamp present on every input is signalled, oldest first.
- ``ApproximateTimeSynchronizer(fs, queue_size, slop, allow_headerless=False)``: on every
  arrival the new message is matched against the other inputs' queues; only sets containing it
  are considered, candidates within ``slop`` (inclusive) are tried nearest first, and the first
  set whose stamps span strictly less than ``slop`` is signalled and removed from the queues.
  Messages are never dropped for arriving out of order: only queue overflow evicts.
- ``Cache(f, cache_size=1, allow_headerless=False)``: the last ``cache_size`` messages in arrival
  order, with ``getInterval``, ``getElemAfterTime``, ``getElemBeforeTime``, ``getLastestTime``,
  ``getOldestTime``, ``getLast``.

Callbacks run inside the synchroniser's lock, as in message_filters.

Additions for a looping bag (message_filters stalls there: the old timeline's newer stamps are
never evicted, so every new message is): ``reset()``/``clear()`` empties the queues (call it from
the clock's jump callback under ``use_sim_time``), and with ``jump_back_threshold`` set the
synchroniser recovers by itself when ALL inputs jumped back together while message_filters would
be stuck; see :func:`_recover_from_loop` for the exact condition (the threshold must exceed the largest
reordering of the inputs). ``registerResetCallback`` reports each recovery
(:class:`SyncReset`), ``jumps_recovered`` and ``resets`` count them. By default
(``jump_back_threshold=None``) nothing but queue overflow ever discards a message.

The module has no ROS import: stamps are read duck-typed from ``rclpy.time.Time``
(``.nanoseconds``) or ``builtin_interfaces/Time`` (``.sec``/``.nanosec``).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rgbt_perception.core.defaults import JUMP_BACK_THRESHOLD_S
from rgbt_perception.core.stamps import NS_PER_S, message_stamp_ns, stamp_to_nanoseconds

_log = logging.getLogger(__name__)

#: Backward jump (seconds) the node uses for :class:`BackwardJumpDetector` and ``jump_back_threshold``.
DEFAULT_JUMP_BACK_THRESHOLD = JUMP_BACK_THRESHOLD_S


class Stamp:
    """A time stamp in integer nanoseconds that compares with ``rclpy`` Time and Time messages.

    What :class:`Cache` returns for stamps that did not come as ``rclpy.time.Time`` (message_filters
    returns ``rclpy.time.Time`` there, which this package cannot import outside a ROS node).
    """

    __slots__ = ("nanoseconds",)

    def __init__(self, nanoseconds: int) -> None:
        self.nanoseconds = int(nanoseconds)

    def seconds_nanoseconds(self) -> tuple[int, int]:
        return self.nanoseconds // NS_PER_S, self.nanoseconds % NS_PER_S

    def to_msg(self) -> Any:
        from builtin_interfaces.msg import Time

        sec, nanosec = self.seconds_nanoseconds()
        return Time(sec=sec, nanosec=nanosec)

    def _other(self, other: Any) -> int | None:
        try:
            return stamp_to_nanoseconds(other)
        except TypeError:
            return None

    def __eq__(self, other: object) -> bool:
        ns = self._other(other)
        return NotImplemented if ns is None else self.nanoseconds == ns  # type: ignore[return-value]

    def __lt__(self, other: Any) -> bool:
        ns = self._other(other)
        return NotImplemented if ns is None else self.nanoseconds < ns  # type: ignore[return-value]

    def __le__(self, other: Any) -> bool:
        ns = self._other(other)
        return NotImplemented if ns is None else self.nanoseconds <= ns  # type: ignore[return-value]

    def __gt__(self, other: Any) -> bool:
        ns = self._other(other)
        return NotImplemented if ns is None else self.nanoseconds > ns  # type: ignore[return-value]

    def __ge__(self, other: Any) -> bool:
        ns = self._other(other)
        return NotImplemented if ns is None else self.nanoseconds >= ns  # type: ignore[return-value]

    def __hash__(self) -> int:
        return hash(self.nanoseconds)

    def __repr__(self) -> str:
        return f"Stamp(nanoseconds={self.nanoseconds})"


def _headerless_warning(owner: Any) -> None:
    if not getattr(owner, "_warned_headerless", False):
        _log.warning("message without header.stamp dropped: pass allow_headerless=True to stamp such "
                     "messages with their arrival time")
        owner._warned_headerless = True


class BackwardJumpDetector:
    """The one tracker of stamps that jump back in time, per input (node pairing and the synchronisers).

    It remembers each input's newest stamp and its latest arrival. A stamp older than the newest one
    seen on the same input by more than ``threshold_s`` is a jump (:meth:`is_jump`). All inputs have
    jumped together (:meth:`all_behind`) when every input's latest arrival lies more than the
    threshold behind the newest stamp it delivered and those latest arrivals lie within the threshold
    of each other (one new timeline). ``threshold_s`` must exceed the largest reordering of one input.
    """

    def __init__(self, num_inputs: int, threshold_s: float = DEFAULT_JUMP_BACK_THRESHOLD) -> None:
        if threshold_s <= 0:
            raise ValueError(f"jump-back threshold must be positive, got {threshold_s}")
        self.threshold_ns = int(threshold_s * NS_PER_S)
        self.newest: list[int | None] = [None] * num_inputs
        self.latest: list[int | None] = [None] * num_inputs

    def is_jump(self, index: int, stamp_ns: int) -> bool:
        newest = self.newest[index]
        return newest is not None and newest - stamp_ns > self.threshold_ns

    def arrive(self, index: int, stamp_ns: int) -> None:
        """Record an arrival as the input's latest, before deciding on it (see :meth:`all_behind`)."""
        self.latest[index] = stamp_ns

    def observe(self, index: int, stamp_ns: int) -> None:
        """The arrival is part of the input's timeline: it may raise the newest stamp."""
        self.latest[index] = stamp_ns
        newest = self.newest[index]
        if newest is None or stamp_ns > newest:
            self.newest[index] = stamp_ns

    def all_behind(self) -> bool:
        """Every input went back by more than the threshold, onto one new timeline."""
        behind = all(newest is not None and latest is not None and newest - latest > self.threshold_ns
                     for newest, latest in zip(self.newest, self.latest))
        if not behind:
            return False
        latest = [int(v) for v in self.latest if v is not None]
        return max(latest) - min(latest) <= self.threshold_ns

    def rebase(self, newest: Sequence[int | None]) -> None:
        """After a recovery: the new timeline's newest stamps."""
        self.newest = list(newest)

    def reset(self) -> None:
        self.newest = [None] * len(self.newest)
        self.latest = [None] * len(self.latest)


class _SimpleFilter:
    """Base of every filter: callbacks registered with extra arguments, called on ``signalMessage``."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}

    def registerCallback(self, cb: Callable[..., Any], *args: Any) -> int:  # noqa: N802 (message_filters API)
        """Call ``cb(*messages, *args)`` for each output; returns the connection number."""
        conn = len(self.callbacks)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 (message_filters API)
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class _Subscriber(_SimpleFilter):
    """A ROS subscription as a filter: ``Subscriber(node, msg_type, topic, qos_profile=...)``.

    QoS is passed by keyword, like ``message_filters``; other keywords (for example
    ``event_callbacks``) go to ``node.create_subscription``.
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, *, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos_profile=qos_profile, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 (message_filters API)
        return self.topic

    def __getattr__(self, key: str) -> Any:
        # Called only for attributes the filter lacks: expose the subscription's.
        if key == "sub":
            raise AttributeError(key)
        return getattr(self.sub, key)


class _IntervalError(ValueError, AssertionError):
    """``getInterval`` with ``from_stamp > to_stamp`` (message_filters asserts it)."""


class _Cache(_SimpleFilter):
    """The last ``cache_size`` messages of a filter, in arrival order, queried by stamp.

    Stamps are compared as nanoseconds, so ``rclpy`` Times, Time messages and :class:`Stamp`
    mix freely; the stamps returned are the messages' own (``rclpy`` Time) or a :class:`Stamp`.
    """

    def __init__(self, f: Any, cache_size: int = 1, allow_headerless: bool = False) -> None:
        super().__init__()
        self.connectInput(f)
        self.cache_size = cache_size
        self.cache_msgs: list[Any] = []
        self.cache_times: list[Any] = []
        self.allow_headerless = allow_headerless

    def connectInput(self, f: Any) -> None:  # noqa: N802 (message_filters API)
        self.incoming_connection = f.registerCallback(self.add)

    def add(self, msg: Any) -> None:
        stamp = _message_stamp(msg)
        if stamp is None:
            if not self.allow_headerless:
                _headerless_warning(self)
                return
            stamp = Stamp(time.time_ns())
        self.cache_times.append(stamp)
        self.cache_msgs.append(msg)
        if len(self.cache_msgs) > self.cache_size:
            del self.cache_msgs[0]
            del self.cache_times[0]
        self.signalMessage(msg)

    def _ns(self) -> list[int]:
        return [stamp_to_nanoseconds(t) for t in self.cache_times]

    def getInterval(self, from_stamp: Any, to_stamp: Any) -> list[Any]:  # noqa: N802 (message_filters API)
        """Messages with ``from_stamp <= stamp <= to_stamp``, in arrival order."""
        low, high = stamp_to_nanoseconds(from_stamp), stamp_to_nanoseconds(to_stamp)
        if low > high:
            raise _IntervalError(f"getInterval: from_stamp {low} ns is after to_stamp {high} ns")
        return [m for m, ns in zip(self.cache_msgs, self._ns()) if low <= ns <= high]

    def getElemAfterTime(self, stamp: Any) -> Any:  # noqa: N802 (message_filters API)
        """The first cached message (arrival order) stamped at or after ``stamp``, or None."""
        ns = stamp_to_nanoseconds(stamp)
        return next((m for m, t in zip(self.cache_msgs, self._ns()) if t >= ns), None)

    def getElemBeforeTime(self, stamp: Any) -> Any:  # noqa: N802 (message_filters API)
        """The last cached message (arrival order) stamped at or before ``stamp``, or None."""
        ns = stamp_to_nanoseconds(stamp)
        older = [m for m, t in zip(self.cache_msgs, self._ns()) if t <= ns]
        return older[-1] if older else None

    def getLastestTime(self) -> Any:  # noqa: N802 (message_filters API, spelling included)
        """Stamp of the last message added (message_filters' name)."""
        return self.cache_times[-1] if self.cache_times else None

    getLatestTime = getLastestTime  # noqa: N815

    def getOldestTime(self) -> Any:  # noqa: N802 (message_filters API)
        return self.cache_times[0] if self.cache_times else None

    def getLast(self) -> Any:  # noqa: N802 (message_filters API)
        latest = self.getLastestTime()
        return None if latest is None else self.getElemAfterTime(latest)


def _message_stamp(msg: Any) -> Any:
    """``msg.header.stamp`` as ``rclpy`` Time (kept) or :class:`Stamp`; None without one."""
    ns = message_stamp_ns(msg)
    if ns is None:
        return None
    stamp = msg.header.stamp
    return stamp if hasattr(stamp, "nanoseconds") else Stamp(ns)


@dataclass(frozen=True)
class SyncReset:
    """One recovery of a synchroniser: what the node logs (once per event).

    Attributes:
        reason: ``"reset"`` (``reset()``/``clear()`` called) or ``"jump"`` (all inputs jumped back).
        discarded: queued messages dropped.
        stamp_ns: stamp of the arrival that completed the jump (None for ``reset``).
        newest_ns: per input, the newest stamp before the recovery (None: nothing seen).
    """

    reason: str
    discarded: int
    stamp_ns: int | None
    newest_ns: tuple[int | None, ...]


def _recover_from_loop(jumps: BackwardJumpDetector, index: int, stamp: int, queues: Sequence[dict[int, Any]],
                       queue_size: int) -> SyncReset | None:
    """The in-project synchroniser's recovery from a backward jump of ALL inputs (a looped bag).

    Called on an arrival before it is queued. A recovery fires only when, at once:

    1. all inputs jumped back together (:meth:`BackwardJumpDetector.all_behind`);
    2. message_filters would now evict a message of the new timeline: the arrival's queue is full
       and holds stamps more than the threshold newer than the arrival (the old timeline's stamps
       are never the oldest, so they keep their places and the new messages are pushed out).

    It then drops the queued stamps more than the threshold newer than every input's latest
    arrival (the old timeline). A reordering beyond the threshold looks like a loop. A stream
    whose queues never fill up (on which message_filters drops nothing) never meets (2): its
    output is message_filters' whatever the threshold.
    """
    jumps.arrive(index, stamp)
    queue = queues[index]
    event = None
    if len(queue) >= queue_size and max(queue) - stamp > jumps.threshold_ns and jumps.all_behind():
        horizon = max(int(v) for v in jumps.latest if v is not None) + jumps.threshold_ns
        discarded = 0
        for q in queues:
            old = [s for s in q if s > horizon]
            for s in old:
                del q[s]
            discarded += len(old)
        event = SyncReset("jump", discarded, stamp, tuple(jumps.newest))
        jumps.rebase([max([v for v in (last, *q) if v is not None], default=None)
                      for last, q in zip(jumps.latest, queues)])
    jumps.observe(index, stamp)
    return event


class _TimeSynchronizer(_SimpleFilter):
    """Exact-time pairing of ``len(fs)`` inputs (``message_filters.TimeSynchronizer``).

    Args:
        fs: input filters (``Subscriber`` or any ``SimpleFilter``).
        queue_size: stamps kept per input while waiting for the other inputs.
        jump_back_threshold: seconds; None (default) never recovers by itself, else see
            :func:`_recover_from_loop`.
    """

    def __init__(self, fs: Sequence[Any], queue_size: int, *, jump_back_threshold: float | None = None) -> None:
        super().__init__()
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.jump_back_threshold = jump_back_threshold
        self._guard = None if jump_back_threshold is None else BackwardJumpDetector(len(fs), jump_back_threshold)
        self.connectInput(fs)
        self.queue_size = int(queue_size)
        self.lock = threading.Lock()
        self.jumps_recovered = 0
        self.resets = 0
        self._reset_callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 (message_filters API)
        self.queues: list[dict[int, Any]] = [{} for _ in fs]
        self.input_connections = [f.registerCallback(self.add, q, i) for i, (f, q) in enumerate(zip(fs, self.queues))]
        if self._guard is not None:
            self._guard = BackwardJumpDetector(len(fs), self._guard.threshold_ns / NS_PER_S)

    def registerResetCallback(self, cb: Callable[..., Any], *args: Any) -> None:  # noqa: N802 (API style)
        """Call ``cb(event: SyncReset, *args)`` after each recovery, outside the lock."""
        self._reset_callbacks.append((cb, args))

    def reset(self) -> int:
        """Empty every queue (a clock jump, a restarted bag); returns the messages dropped."""
        with self.lock:
            discarded = sum(len(q) for q in self.queues)
            newest = tuple(self._guard.newest) if self._guard is not None else tuple(
                max(q) if q else None for q in self.queues)
            for q in self.queues:
                q.clear()  # in place: the input connections hold these dicts
            if self._guard is not None:
                self._guard.reset()
            self.resets += 1
        self._report(SyncReset("reset", discarded, None, newest))
        return discarded

    clear = reset

    def _report(self, event: SyncReset | None) -> None:
        if event is None:
            return
        for cb, args in list(self._reset_callbacks):
            cb(event, *args)

    def _stamp_ns(self, msg: Any) -> int | None:
        ns = message_stamp_ns(msg)
        if ns is None:
            _headerless_warning(self)
        return ns

    def _queue(self, my_queue: dict[int, Any], my_queue_index: int | None, stamp: int, msg: Any) -> SyncReset | None:
        """Guard check, then queue the message and evict the oldest stamps over ``queue_size``."""
        event = None
        if self._guard is not None and my_queue_index is not None:
            event = _recover_from_loop(self._guard, my_queue_index, stamp, self.queues, self.queue_size)
            if event is not None:
                self.jumps_recovered += 1
        my_queue[stamp] = msg
        while len(my_queue) > self.queue_size:
            del my_queue[min(my_queue)]
        return event

    def add(self, msg: Any, my_queue: dict[int, Any], my_queue_index: int | None = None) -> None:
        stamp = self._stamp_ns(msg)
        if stamp is None:
            return
        with self.lock:
            event = self._queue(my_queue, my_queue_index, stamp, msg)
            common = set(self.queues[0]).intersection(*self.queues[1:])
            for t in sorted(common):
                self.signalMessage(*[q[t] for q in self.queues])
                for q in self.queues:
                    del q[t]
        self._report(event)


class _ApproximateTimeSynchronizer(_TimeSynchronizer):
    """Approximate-time pairing of ``len(fs)`` inputs (``message_filters`` semantics, module docstring).

    Args:
        fs: input filters (``Subscriber`` or any ``SimpleFilter``).
        queue_size: messages kept per input; it must exceed (arrival delay difference x the
            faster rate), e.g. more than 5 for 30 Hz RGB with thermal arriving 150 ms later.
        slop: largest stamp difference (seconds) within a matched set.
        allow_headerless: stamp messages without ``header.stamp`` with the arrival time
            (system clock) instead of dropping them.
        jump_back_threshold: seconds; None (default) never recovers by itself, else see
            :func:`_recover_from_loop`.
    """

    def __init__(
        self,
        fs: Sequence[Any],
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        *,
        jump_back_threshold: float | None = None,
    ) -> None:
        super().__init__(fs, queue_size, jump_back_threshold=jump_back_threshold)
        self.slop = slop
        self.allow_headerless = allow_headerless

    @property
    def slop(self) -> float:
        """Seconds (set with seconds or an ``rclpy`` Duration)."""
        return self.slop_ns / NS_PER_S

    @slop.setter
    def slop(self, value: Any) -> None:
        # rclpy's Duration(seconds=s) truncates s * 1e9, and so does this.
        ns = int(value.nanoseconds) if hasattr(value, "nanoseconds") else int(value * NS_PER_S)
        if ns < 0:
            raise ValueError(f"slop must not be negative, got {ns / NS_PER_S} s")
        self.slop_ns = ns

    def _stamp_ns(self, msg: Any) -> int | None:
        ns = message_stamp_ns(msg)
        if ns is None:
            if not self.allow_headerless:
                _headerless_warning(self)
                return None
            ns = time.time_ns()
        return ns

    def add(self, msg: Any, my_queue: dict[int, Any], my_queue_index: int | None = None) -> None:
        stamp = self._stamp_ns(msg)
        if stamp is None:
            return
        with self.lock:
            event = self._queue(my_queue, my_queue_index, stamp, msg)
            self._match(stamp, my_queue_index)
        self._report(event)

    def _match(self, stamp: int, my_queue_index: int | None) -> None:
        others = self.queues if my_queue_index is None else [
            q for i, q in enumerate(self.queues) if i != my_queue_index]
        candidates = []
        for queue in others:
            # Within slop (inclusive), nearest first; equal distances keep queue order.
            near = sorted((s for s in queue if abs(s - stamp) <= self.slop_ns), key=lambda s: abs(s - stamp))
            if not near:
                return
            candidates.append(near)
        for combination in itertools.product(*candidates):
            stamps = list(combination)
            if my_queue_index is not None:
                stamps.insert(my_queue_index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns and all(s in q for q, s in zip(self.queues, stamps)):
                self.signalMessage(*[q[s] for q, s in zip(self.queues, stamps)])
                for q, s in zip(self.queues, stamps):
                    del q[s]
                return


def reset_synchronizer(synchronizer: Any) -> int:
    """Empty a synchroniser's queues, in-project or message_filters'; returns the messages dropped."""
    if hasattr(synchronizer, "reset"):
        return int(synchronizer.reset())
    with synchronizer.lock:
        discarded = sum(len(q) for q in synchronizer.queues)
        for q in synchronizer.queues:
            q.clear()  # in place: message_filters' input connections hold these dicts
    return discarded


try:  # The real library wherever ROS 2 provides it.
    from message_filters import (  # type: ignore[import-not-found]
        ApproximateTimeSynchronizer,
        Cache,
        SimpleFilter,
        Subscriber,
        TimeSynchronizer,
    )

    SYNC_IMPLEMENTATION = "message_filters"
except ImportError:
    SimpleFilter = _SimpleFilter
    Subscriber = _Subscriber
    Cache = _Cache
    TimeSynchronizer = _TimeSynchronizer
    ApproximateTimeSynchronizer = _ApproximateTimeSynchronizer
    SYNC_IMPLEMENTATION = "rgbt_perception.core.sync"

#: The in-project classes, always available (tests, loop recovery).
InProjectSimpleFilter = _SimpleFilter
InProjectSubscriber = _Subscriber
InProjectCache = _Cache
InProjectTimeSynchronizer = _TimeSynchronizer
InProjectApproximateTimeSynchronizer = _ApproximateTimeSynchronizer

__all__ = [
    "ApproximateTimeSynchronizer", "BackwardJumpDetector", "Cache", "DEFAULT_JUMP_BACK_THRESHOLD",
    "InProjectApproximateTimeSynchronizer", "InProjectCache", "InProjectSimpleFilter", "InProjectSubscriber",
    "InProjectTimeSynchronizer", "SYNC_IMPLEMENTATION", "SimpleFilter", "Stamp", "Subscriber", "SyncReset",
    "TimeSynchronizer", "message_stamp_ns", "reset_synchronizer", "stamp_to_nanoseconds",
]
