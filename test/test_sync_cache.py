"""Cache, TimeSynchronizer and Subscriber with message_filters' semantics; the Subscriber over real DDS."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import pytest
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.clock import ClockType
from rclpy.time import Time

from rgbt_perception.core.sync import (
    InProjectApproximateTimeSynchronizer,
    InProjectCache,
    InProjectSimpleFilter,
    InProjectSubscriber,
    InProjectTimeSynchronizer,
    Stamp,
)

NS = 1_000_000_000


@dataclass
class Header:
    stamp: Any


@dataclass
class Msg:
    header: Header
    name: str = ""


def at(seconds: float, name: str = "", as_message: bool = False) -> Msg:
    ns = int(round(seconds * NS))
    stamp = TimeMsg(sec=ns // NS, nanosec=ns % NS) if as_message else Time(nanoseconds=ns)
    return Msg(Header(stamp), name)


# --- Cache ---------------------------------------------------------------------------------

def filled_cache(size: int = 5, stamps=(0, 1, 2, 3, 4), as_message: bool = False):
    source = InProjectSimpleFilter()
    cache = InProjectCache(source, size)
    for t in stamps:
        source.signalMessage(at(t, f"m{t}", as_message))
    return source, cache


def test_cache_keeps_the_last_messages_in_arrival_order():
    source, cache = filled_cache(3, stamps=(0, 1, 2, 3, 4))
    assert [m.name for m in cache.cache_msgs] == ["m2", "m3", "m4"]
    assert cache.getOldestTime() == Time(seconds=2) and cache.getLastestTime() == Time(seconds=4)
    assert cache.getLatestTime() == Time(seconds=4)
    assert cache.getLast().name == "m4"


def test_cache_queries_are_inclusive_and_in_arrival_order():
    _, cache = filled_cache(10, stamps=(3, 1, 4, 2, 0))  # scrambled: the cache does not sort
    assert [m.name for m in cache.getInterval(Time(seconds=1), Time(seconds=3))] == ["m3", "m1", "m2"]
    assert [m.name for m in cache.getInterval(Time(seconds=2.5), Time(seconds=3.5))] == ["m3"]
    assert cache.getElemAfterTime(Time(seconds=2)).name == "m3"  # first in arrival order at or after 2 s
    assert cache.getElemBeforeTime(Time(seconds=2)).name == "m0"  # last in arrival order at or before 2 s
    assert cache.getElemAfterTime(Time(seconds=5)) is None and cache.getElemBeforeTime(Time(seconds=-0.0)).name == "m0"
    assert cache.getOldestTime() == Time(seconds=3)  # the first to arrive, as message_filters answers


def test_cache_signals_what_it_stores_downstream():
    source = InProjectSimpleFilter()
    cache = InProjectCache(source, 2)
    seen = []
    cache.registerCallback(lambda msg, tag: seen.append((msg.name, tag)), "next")
    source.signalMessage(at(1, "a"))
    assert seen == [("a", "next")]


def test_cache_with_message_stamps_returns_comparable_stamps():
    _, cache = filled_cache(5, stamps=(1, 2), as_message=True)
    latest = cache.getLastestTime()
    assert isinstance(latest, Stamp) and latest.nanoseconds == 2 * NS
    assert latest == Time(seconds=2) and Time(seconds=2) == latest and latest == TimeMsg(sec=2)
    assert Time(seconds=1) < latest and latest > Time(seconds=1) and latest <= TimeMsg(sec=2)
    assert latest.to_msg() == TimeMsg(sec=2) and latest.seconds_nanoseconds() == (2, 0)
    assert [m.name for m in cache.getInterval(TimeMsg(sec=0), Time(seconds=1.5))] == ["m1"]


def test_cache_interval_bounds_must_be_ordered():
    _, cache = filled_cache()
    with pytest.raises(ValueError, match="after to_stamp"):
        cache.getInterval(Time(seconds=3), Time(seconds=1))
    with pytest.raises(AssertionError):  # what message_filters' assert raises
        cache.getInterval(Time(seconds=3), Time(seconds=1))


def test_cache_headerless_messages_take_the_arrival_time_only_when_allowed():
    source = InProjectSimpleFilter()
    strict = InProjectCache(source, 5)
    lenient = InProjectCache(source, 5, allow_headerless=True)
    before = Time(nanoseconds=time.time_ns(), clock_type=ClockType.ROS_TIME)
    source.signalMessage("no header")
    assert strict.cache_msgs == [] and strict.getLastestTime() is None and strict.getLast() is None
    assert lenient.getElemAfterTime(before) == "no header"
    assert lenient.getInterval(Time(clock_type=ClockType.ROS_TIME), before) == []


# --- TimeSynchronizer -----------------------------------------------------------------------

def test_time_synchronizer_pairs_equal_stamps_in_any_order():
    rng = random.Random(3)
    for n in range(1, 10):
        filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
        synchronizer = InProjectTimeSynchronizer(filters, n)
        got = []
        synchronizer.registerCallback(lambda a, b: got.append((a.name, b.name)))
        first = [at(t, f"a{t}", as_message=True) for t in range(n)]
        second = [at(t, f"b{t}", as_message=True) for t in range(n)]
        for msg in rng.sample(first, n):
            filters[0].signalMessage(msg)
        assert got == []
        for msg in rng.sample(second, n):
            filters[1].signalMessage(msg)
        assert sorted(got) == sorted((f"a{t}", f"b{t}") for t in range(n))


def test_time_synchronizer_needs_exact_stamps_and_evicts_the_oldest():
    filters = [InProjectSimpleFilter() for _ in range(3)]
    synchronizer = InProjectTimeSynchronizer(filters, 2)
    got = []
    synchronizer.registerCallback(lambda *msgs: got.append(tuple(m.name for m in msgs)))
    filters[0].signalMessage(at(1.0, "a1"))
    filters[1].signalMessage(at(1.0, "b1"))
    filters[2].signalMessage(at(1.000000001, "c-off-by-1ns"))
    assert got == []
    for t in (2.0, 3.0):  # input 0 holds 2 stamps: 1.0 is evicted
        filters[0].signalMessage(at(t, f"a{t:g}"))
    filters[2].signalMessage(at(1.0, "c1"))
    assert got == [] and sorted(synchronizer.queues[0]) == [2 * NS, 3 * NS]
    filters[1].signalMessage(at(3.0, "b3"))
    filters[2].signalMessage(at(3.0, "c3"))
    assert got == [("a3", "b3", "c3")]


def test_time_synchronizer_reset_and_headerless():
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectTimeSynchronizer(filters, 3)
    filters[0].signalMessage(at(1.0))
    filters[1].signalMessage("no header")  # dropped, as it cannot be matched
    assert [len(q) for q in synchronizer.queues] == [1, 0]
    assert synchronizer.reset() == 1 and synchronizer.queues == [{}, {}]
    with pytest.raises(ValueError, match="queue_size"):
        InProjectTimeSynchronizer(filters, 0)


# --- Subscriber over DDS --------------------------------------------------------------------

@pytest.mark.ros
def test_subscribers_feed_a_cache_and_a_synchronizer_over_dds():
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("sync_subscriber_test", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        left = InProjectSubscriber(node, PointStamped, "left", qos_profile=qos)
        right = InProjectSubscriber(node, PointStamped, "right", qos_profile=qos)
        assert left.getTopic() == "left" and left.topic_name == "/left"  # the subscription's attributes
        cache = InProjectCache(left, 10)
        synchronizer = InProjectApproximateTimeSynchronizer([left, right], 10, 0.01)
        pairs = []
        synchronizer.registerCallback(lambda a, b: pairs.append((a.point.x, b.point.x)))
        publishers = [node.create_publisher(PointStamped, topic, qos) for topic in ("left", "right")]
        deadline = time.monotonic() + 10
        while min(p.get_subscription_count() for p in publishers) < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for k in range(5):
            for publisher, offset in zip(publishers, (0, 3_000_000)):  # right stamped 3 ms later
                msg = PointStamped()
                msg.header.stamp = TimeMsg(sec=20 + k, nanosec=offset)
                msg.point.x = float(k)
                publisher.publish(msg)
        while len(pairs) < 5 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert pairs == [(float(k), float(k)) for k in range(5)]
        assert cache.getLastestTime() == Stamp(24 * NS)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
