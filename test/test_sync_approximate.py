"""Approximate-time pairing without a graph: inputs are SimpleFilters fed via signalMessage."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import pytest
from rclpy.time import Time

from rgbt_perception.core import sync
from rgbt_perception.core.sync import (
    BackwardJumpDetector,
    InProjectApproximateTimeSynchronizer,
    InProjectSimpleFilter,
    message_stamp_ns,
)

NS = 1_000_000_000


@dataclass
class _Header:
    stamp: Time


@dataclass
class StampedMsg:
    header: _Header
    name: str = ""


@dataclass
class HeaderlessMsg:
    data: int = 0
    tags: list = field(default_factory=list)


def stamped(seconds: float, name: str = "") -> StampedMsg:
    return StampedMsg(_Header(Time(nanoseconds=int(round(seconds * NS)))), name)


class Recorder:
    def __init__(self) -> None:
        self.pairs: list[tuple] = []

    def __call__(self, *msgs) -> None:
        self.pairs.append(msgs)


def make_sync(queue_size=10, slop=0.05, **kwargs):
    rgb, thermal = InProjectSimpleFilter(), InProjectSimpleFilter()
    synchronizer = InProjectApproximateTimeSynchronizer([rgb, thermal], queue_size, slop, **kwargs)
    recorder = Recorder()
    synchronizer.registerCallback(recorder)
    return rgb, thermal, synchronizer, recorder


def feed_streams(rgb, thermal, duration_s, rgb_hz=30.0, thermal_hz=9.0, thermal_delay_s=0.15,
                 start_s=100.0, jitter_s=0.004, seed=0):
    """Deliver both streams in arrival order: thermal arrives ``thermal_delay_s`` after its stamp."""
    rng = random.Random(seed)
    events = []
    # RGB runs on a little longer, as a live camera would, so no thermal frame is last to arrive.
    for k in range(int((duration_s + 0.3) * rgb_hz)):
        t = start_s + k / rgb_hz
        events.append((t + 0.002, 0, stamped(t, f"rgb{k}")))
    for k in range(int(duration_s * thermal_hz)):
        t = start_s + k / thermal_hz + rng.uniform(-jitter_s, jitter_s)
        events.append((t + thermal_delay_s, 1, stamped(t, f"th{k}")))
    events.sort(key=lambda e: e[0])
    for _, which, msg in events:
        (rgb if which == 0 else thermal).signalMessage(msg)
    return events


def test_pairs_30hz_rgb_with_late_9hz_thermal():
    rgb, thermal, _, rec = make_sync(queue_size=10, slop=0.05)
    feed_streams(rgb, thermal, duration_s=3.0)
    thermal_count = int(3.0 * 9.0)
    # Every thermal frame pairs once, with the RGB frame nearest in time.
    assert len(rec.pairs) == thermal_count
    for rgb_msg, thermal_msg in rec.pairs:
        skew = abs(message_stamp_ns(rgb_msg) - message_stamp_ns(thermal_msg))
        assert skew <= 1 / 60 * NS + 0.004 * NS
    assert len({m.name for m, _ in rec.pairs}) == len(rec.pairs)


def test_queue_too_short_for_the_arrival_delay_pairs_nothing():
    # 150 ms at 30 Hz is 4.5 RGB frames: a queue of 3 has evicted the partner by then.
    rgb, thermal, _, rec = make_sync(queue_size=3, slop=0.05)
    feed_streams(rgb, thermal, duration_s=2.0)
    assert rec.pairs == []
    rgb, thermal, _, rec = make_sync(queue_size=6, slop=0.05)
    feed_streams(rgb, thermal, duration_s=2.0)
    assert len(rec.pairs) == 18


def test_queue_size_bounds_each_input():
    rgb, thermal, synchronizer, rec = make_sync(queue_size=4, slop=0.01)
    for k in range(20):
        rgb.signalMessage(stamped(10 + k * 0.1))
    assert len(synchronizer.queues[0]) == 4
    # The oldest stamps were evicted: only the last four remain.
    assert sorted(synchronizer.queues[0]) == [int(round((10 + k * 0.1) * NS)) for k in range(16, 20)]
    assert rec.pairs == []


def test_slop_limits_the_stamp_difference():
    rgb, thermal, _, rec = make_sync(queue_size=5, slop=0.02)
    rgb.signalMessage(stamped(1.000, "a"))
    thermal.signalMessage(stamped(1.030, "far"))
    assert rec.pairs == []
    thermal.signalMessage(stamped(1.010, "near"))
    assert [(a.name, b.name) for a, b in rec.pairs] == [("a", "near")]


def test_only_sets_with_the_newest_message_are_considered():
    rgb, thermal, synchronizer, rec = make_sync(queue_size=10, slop=0.05)
    rgb.signalMessage(stamped(1.00, "r0"))
    rgb.signalMessage(stamped(1.10, "r1"))
    thermal.signalMessage(stamped(1.09, "t1"))
    # r1 is nearest to t1; r0 stays queued, unmatched.
    assert [(a.name, b.name) for a, b in rec.pairs] == [("r1", "t1")]
    assert int(1.00 * NS) in synchronizer.queues[0]


def test_out_of_order_by_seconds_is_never_dropped_by_default():
    """message_filters drops only by queue overflow: a stamp 3 s older than its input's newest still pairs."""
    rgb, thermal, synchronizer, rec = make_sync(queue_size=10, slop=0.05)
    rgb.signalMessage(stamped(10.0, "r-new"))
    rgb.signalMessage(stamped(7.0, "r-old"))
    thermal.signalMessage(stamped(7.01, "t-old"))
    thermal.signalMessage(stamped(10.02, "t-new"))
    assert [(a.name, b.name) for a, b in rec.pairs] == [("r-old", "t-old"), ("r-new", "t-new")]
    assert synchronizer.jumps_recovered == 0


def test_small_reordering_is_not_a_jump():
    rgb, thermal, synchronizer, rec = make_sync(queue_size=10, slop=0.05, jump_back_threshold=1.0)
    rgb.signalMessage(stamped(5.00, "r1"))
    rgb.signalMessage(stamped(4.95, "r0"))  # 50 ms out of order
    thermal.signalMessage(stamped(4.96, "t0"))
    assert synchronizer.jumps_recovered == 0
    assert [(a.name, b.name) for a, b in rec.pairs] == [("r0", "t0")]


def test_slop_bounds_are_message_filters():
    """Candidates within slop inclusive, but a set must span strictly less than slop; slop truncates to ns."""
    rgb, thermal, synchronizer, rec = make_sync(queue_size=5, slop=0.29)
    assert synchronizer.slop_ns == int(0.29 * NS)  # rclpy Duration(seconds=0.29) truncates the same way
    rgb.signalMessage(stamped(1.0, "a"))
    thermal.signalMessage(StampedMsg(_Header(Time(nanoseconds=NS + synchronizer.slop_ns)), "at-slop"))
    assert rec.pairs == []
    thermal.signalMessage(StampedMsg(_Header(Time(nanoseconds=NS + synchronizer.slop_ns - 1)), "inside"))
    assert [(a.name, b.name) for a, b in rec.pairs] == [("a", "inside")]


def test_slop_can_be_set_in_seconds_or_as_a_duration():
    from rclpy.duration import Duration

    _, _, synchronizer, _ = make_sync(slop=0.05)
    synchronizer.slop = 0.1
    assert synchronizer.slop == 0.1 and synchronizer.slop_ns == 100_000_000
    synchronizer.slop = Duration(seconds=0.02)
    assert synchronizer.slop_ns == 20_000_000
    with pytest.raises(ValueError, match="slop"):
        synchronizer.slop = -0.1


def test_three_inputs_pair_nearest_sets():
    filters = [InProjectSimpleFilter() for _ in range(3)]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 5, 0.05)
    rec = Recorder()
    synchronizer.registerCallback(rec)
    filters[0].signalMessage(stamped(1.00, "a0"))
    filters[0].signalMessage(stamped(1.04, "a1"))
    filters[1].signalMessage(stamped(1.03, "b"))
    assert rec.pairs == []
    filters[2].signalMessage(stamped(1.035, "c"))
    assert [tuple(m.name for m in s) for s in rec.pairs] == [("a1", "b", "c")]
    assert list(synchronizer.queues[0]) == [NS]


def test_headerless_messages_are_dropped_unless_allowed():
    rgb, thermal, _, rec = make_sync(queue_size=5, slop=0.5)
    rgb.signalMessage(HeaderlessMsg(1))
    thermal.signalMessage(HeaderlessMsg(2))
    assert rec.pairs == []
    rgb, thermal, synchronizer, rec = make_sync(queue_size=5, slop=0.5, allow_headerless=True)
    before = time.time_ns()
    rgb.signalMessage(HeaderlessMsg(1))
    thermal.signalMessage(HeaderlessMsg(2))
    assert [(a.data, b.data) for a, b in rec.pairs] == [(1, 2)]
    # Stamped with the arrival time (ROSClock().now() in message_filters: the system clock here).
    rgb.signalMessage(HeaderlessMsg(3))
    assert before <= next(iter(synchronizer.queues[0])) <= time.time_ns()


def test_builtin_interfaces_stamps_and_callback_arguments():
    from builtin_interfaces.msg import Time as TimeMsg
    from std_msgs.msg import Header

    class Msg:
        def __init__(self, sec, nanosec):
            self.header = Header(stamp=TimeMsg(sec=sec, nanosec=nanosec), frame_id="cam")

    rgb, thermal = InProjectSimpleFilter(), InProjectSimpleFilter()
    synchronizer = InProjectApproximateTimeSynchronizer([rgb, thermal], 5, 0.01)
    got = []
    synchronizer.registerCallback(lambda a, b, tag: got.append((a, b, tag)), "extra")
    rgb.signalMessage(Msg(7, 100))
    thermal.signalMessage(Msg(7, 5_000_100))
    assert len(got) == 1 and got[0][2] == "extra"


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="queue_size"):
        InProjectApproximateTimeSynchronizer([InProjectSimpleFilter()], 0, 0.1)
    with pytest.raises(ValueError, match="slop"):
        InProjectApproximateTimeSynchronizer([InProjectSimpleFilter()], 3, -0.1)


def test_jump_detector():
    detector = BackwardJumpDetector(2, threshold_s=0.5)
    detector.observe(0, 10 * NS)
    assert not detector.is_jump(0, int(9.6 * NS))
    assert detector.is_jump(0, int(9.4 * NS))
    assert not detector.is_jump(1, 0)


def test_implementation_is_named():
    assert sync.SYNC_IMPLEMENTATION in ("message_filters", "rgbt_perception.core.sync")
