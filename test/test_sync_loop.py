"""A rosbag played in a loop: message_filters stalls, the in-project synchroniser recovers and says so."""
from __future__ import annotations

import threading
from collections import Counter

from test_sync_reference import Reference, message

from rgbt_perception.core.sync import (
    InProjectApproximateTimeSynchronizer,
    InProjectSimpleFilter,
    InProjectTimeSynchronizer,
    SyncReset,
    reset_synchronizer,
)

NS = 1_000_000_000
SLOP = 0.05


def bag_pass(start_s: float = 100.0, duration_s: float = 3.0, thermal_delay_s: float = 0.1) -> list[tuple]:
    """One pass over a recording: 30 Hz RGB, 9 Hz thermal arriving ``thermal_delay_s`` late; the same
    stamps on every pass, as ``ros2 bag play --loop`` replays them."""
    events = []
    for k in range(int(duration_s * 30)):
        stamp = int((start_s + k / 30) * NS)
        events.append((stamp, 0, stamp))
    for k in range(int(duration_s * 9)):
        stamp = int((start_s + 0.002 + k / 9) * NS)
        events.append((stamp + int(thermal_delay_s * NS), 1, stamp))
    events.sort()
    return [(k, stamp) for _, k, stamp in events]


def play(passes: int, between=None, **kwargs):
    """Feed ``passes`` loops to the synchroniser and the reference; pairs counted per pass."""
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 10, SLOP, **kwargs)
    resets: list[SyncReset] = []
    synchronizer.registerResetCallback(resets.append)
    got: Counter = Counter()
    reference = Reference(2, 10, int(SLOP * NS))
    current = [0]
    synchronizer.registerCallback(lambda rgb, thermal: got.update([current[0]]))
    for loop in range(passes):
        current[0] = loop
        if loop and between is not None:
            between(synchronizer)
        for k, stamp in bag_pass():
            msg = message(stamp, f"{loop}:{k}:{stamp}")
            filters[k].signalMessage(msg)
            reference.offer(k, stamp, msg)
    expected = Counter(int(rgb.name.split(":")[0]) for rgb, _ in reference.emitted)
    return got, expected, synchronizer, resets


def test_message_filters_semantics_stall_on_a_loop():
    """Default: exactly message_filters, which keeps the newer stale stamps and drops the new pass."""
    got, expected, synchronizer, resets = play(3)
    assert got == expected
    assert got[0] == 27 and got[1] < 10  # the pass after the loop is mostly lost
    assert synchronizer.jumps_recovered == 0 and resets == []


def test_both_inputs_jumping_back_recover_and_are_reported_once_per_loop():
    got, _, synchronizer, resets = play(4, jump_back_threshold=1.0)
    assert got[0] == 27
    for loop in (1, 2, 3):
        assert got[loop] >= 26  # at most the first thermal frame of a pass is lost while the jump shows
    assert synchronizer.jumps_recovered == 3
    assert [r.reason for r in resets] == ["jump"] * 3
    for event in resets:
        assert event.discarded > 0
        assert event.stamp_ns < 101 * NS  # the new pass's early stamp revealed it
        assert all(newest is not None and newest > 102 * NS for newest in event.newest_ns)


def test_reset_from_the_clock_jump_callback_gives_every_pass_whole():
    """What the node does under use_sim_time: the clock jumped back, so everything queued is stale."""
    queued = []
    got, _, synchronizer, resets = play(3, between=lambda s: (queued.append([len(q) for q in s.queues]), s.reset()))
    assert got == Counter({0: 27, 1: 27, 2: 27})
    assert synchronizer.resets == 2 and synchronizer.jumps_recovered == 0
    assert [r.reason for r in resets] == ["reset", "reset"]
    assert queued == [[9, 0], [9, 0]]  # the unpaired RGB frames of the pass before
    assert [r.discarded for r in resets] == [9, 9]
    assert all(r.stamp_ns is None for r in resets)


def test_clear_is_reset_and_empties_queues_in_place():
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 5, SLOP)
    queues = list(synchronizer.queues)
    filters[0].signalMessage(message(NS, "a"))
    filters[1].signalMessage(message(3 * NS, "b"))
    assert synchronizer.clear() == 2
    assert synchronizer.queues == queues and all(q == {} for q in queues)
    got = []
    synchronizer.registerCallback(lambda a, b: got.append((a.name, b.name)))
    filters[0].signalMessage(message(5 * NS, "c"))
    filters[1].signalMessage(message(5 * NS, "d"))  # the input connections still feed the same dicts
    assert got == [("c", "d")]


def test_one_input_jumping_back_is_not_a_loop():
    """A restarted thermal driver alone: message_filters' pairs, no recovery (the other input is current)."""
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 10, SLOP, jump_back_threshold=1.0)
    reference = Reference(2, 10, int(SLOP * NS))
    got = []
    synchronizer.registerCallback(lambda a, b: got.append((a.name, b.name)))
    for k, stamp in bag_pass(start_s=100.0) + [(k, s + 3 * NS) for k, s in bag_pass(start_s=100.0) if k == 0]:
        msg = message(stamp, f"{k}:{stamp}")
        filters[k].signalMessage(msg)
        reference.offer(k, stamp, msg)
    for stamp in range(int(90 * NS), int(92 * NS), NS // 9):  # thermal alone goes 10 s back
        msg = message(stamp, f"1:{stamp}")
        filters[1].signalMessage(msg)
        reference.offer(1, stamp, msg)
    assert got == [(a.name, b.name) for a, b in reference.emitted]
    assert synchronizer.jumps_recovered == 0


def test_a_late_message_on_a_full_queue_is_dropped_like_message_filters():
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 3, SLOP, jump_back_threshold=1.0)
    for t in (10.0, 10.1, 10.2):
        filters[0].signalMessage(message(int(t * NS), f"r{t}"))
    filters[0].signalMessage(message(5 * NS, "late"))  # older than the full queue: evicted at once
    assert sorted(synchronizer.queues[0]) == [int(t * NS) for t in (10.0, 10.1, 10.2)]
    assert synchronizer.jumps_recovered == 0


def test_time_synchronizer_recovers_too():
    """Exact stamps, thermal (every other RGB frame) arriving two RGB frames late."""
    for threshold, second_pass in ((None, ["1:19"]), (1.0, [f"1:{k}" for k in range(3, 21, 2)])):
        filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
        synchronizer = InProjectTimeSynchronizer(filters, 4, jump_back_threshold=threshold)
        got = []
        synchronizer.registerCallback(lambda a, b: got.append(b.name))
        for loop in range(2):
            for k in range(22):
                filters[0].signalMessage(message((1000 + k) * NS // 10, f"{loop}:{k}"))  # 10 Hz
                if k >= 2 and k % 2:
                    filters[1].signalMessage(message((998 + k) * NS // 10, f"{loop}:{k - 2}"))
        assert len([n for n in got if n.startswith("0:")]) == 10
        assert [n for n in got if n.startswith("1:")] == second_pass  # message_filters: stalled; here: all but one
        assert synchronizer.jumps_recovered == (0 if threshold is None else 1)


def test_reset_callback_runs_outside_the_lock():
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, 5, SLOP)
    seen = []
    synchronizer.registerResetCallback(lambda event, tag: seen.append((event.reason, tag,
                                                                        synchronizer.lock.locked())), "node")
    filters[0].signalMessage(message(NS, "a"))
    synchronizer.reset()
    assert seen == [("reset", "node", False)]


def test_reset_synchronizer_empties_message_filters_shaped_queues():
    """message_filters' synchronisers have ``lock`` and ``queues`` (dicts the input connections hold), no reset."""

    class MessageFiltersShaped:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.queues = [{1: "a", 2: "b"}, {3: "c"}]

    shaped = MessageFiltersShaped()
    held = list(shaped.queues)
    assert reset_synchronizer(shaped) == 3
    assert shaped.queues == held and held == [{}, {}]
    filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    ours = InProjectApproximateTimeSynchronizer(filters, 5, SLOP)
    filters[1].signalMessage(message(NS, "x"))
    assert reset_synchronizer(ours) == 1 and ours.resets == 1
