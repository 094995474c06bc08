"""The synchroniser gives exactly the pairs of message_filters' approximate-time rule, whatever the arrival order.

``Reference`` restates the rule of message_filters' Python ``ApproximateTimeSynchronizer`` as its
documentation and source describe it, written independently with lists: the tests feed both the
same scrambled streams (stamps out of order by several seconds) and compare every emitted set.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import product
from typing import Any

import pytest
from builtin_interfaces.msg import Time as TimeMsg

from rgbt_perception.core.sync import InProjectApproximateTimeSynchronizer, InProjectSimpleFilter

NS = 1_000_000_000


class Reference:
    """message_filters' approximate-time rule, restated.

    - Each input holds at most ``queue_size`` messages, one per stamp: a message whose stamp is
      already held replaces the held one in its place; over the limit the smallest stamp goes.
    - After a message with stamp ``t`` arrives on input ``i``, every other input's held stamps
      within ``slop`` of ``t`` (distance <= slop) are ranked by distance, ties in holding order;
      an input with none ends the attempt.
    - Combinations are tried in lexicographic order of the ranks (the first other input varies
      slowest); the first whose stamps, ``t`` included, span less than ``slop`` while ``t`` is
      still held is emitted (in input order) and its messages leave the inputs.
    """

    def __init__(self, inputs: int, queue_size: int, slop_ns: int) -> None:
        self.held: list[list[list[Any]]] = [[] for _ in range(inputs)]  # [stamp, message] in holding order
        self.queue_size = queue_size
        self.slop_ns = slop_ns
        self.emitted: list[tuple] = []

    def offer(self, i: int, t: int, message: Any) -> None:
        held = self.held[i]
        same = [entry for entry in held if entry[0] == t]
        if same:
            same[0][1] = message
        else:
            held.append([t, message])
        while len(held) > self.queue_size:
            held.remove(min(held, key=lambda entry: entry[0]))
        ranked = []
        for k, other in enumerate(self.held):
            if k == i:
                continue
            near = sorted((e for e in other if abs(e[0] - t) <= self.slop_ns), key=lambda e: abs(e[0] - t))
            if not near:
                return
            ranked.append((k, near))
        for choice in product(*(near for _, near in ranked)):
            members = {k: entry for (k, _), entry in zip(ranked, choice)}
            stamps = [t] + [entry[0] for entry in choice]
            mine = [entry for entry in held if entry[0] == t]
            if max(stamps) - min(stamps) < self.slop_ns and mine:
                members[i] = mine[0]
                self.emitted.append(tuple(members[k][1] for k in range(len(self.held))))
                for k, entry in members.items():
                    self.held[k].remove(entry)
                return


@dataclass(frozen=True)
class Msg:
    """A stamped message as a driver sends it (builtin_interfaces stamp) with a name to compare by."""

    header: Any
    name: str


def message(stamp_ns: int, name: str) -> Msg:
    from std_msgs.msg import Header

    return Msg(Header(stamp=TimeMsg(sec=stamp_ns // NS, nanosec=stamp_ns % NS)), name)


def scrambled_streams(seed: int, rates: list[float], duration_s: float, disorder_s: float,
                      grid_ns: int = 1) -> list[tuple[int, int, Msg]]:
    """``(input, stamp_ns, message)`` in arrival order: each message arrives up to ``disorder_s``
    after its stamp, so stamps arrive out of order by up to that much. ``grid_ns`` > 1 rounds stamps
    (coarse clocks give equal stamps on one input)."""
    rng = random.Random(seed)
    events = []
    for k, rate in enumerate(rates):
        t = rng.uniform(0, 1 / rate)
        n = 0
        while t < duration_s:
            stamp = int((50.0 + t + rng.uniform(-0.003, 0.003)) * NS) // grid_ns * grid_ns
            events.append((t + rng.uniform(0, disorder_s), k, stamp, message(stamp, f"{k}:{n}")))
            t += 1 / rate
            n += 1
    events.sort(key=lambda e: e[0])
    return [(k, stamp, msg) for _, k, stamp, msg in events]


def run_both(events, inputs: int, queue_size: int, slop: float, **kwargs) -> tuple[list, list, Any]:
    filters = [InProjectSimpleFilter() for _ in range(inputs)]
    synchronizer = InProjectApproximateTimeSynchronizer(filters, queue_size, slop, **kwargs)
    got: list[tuple] = []
    synchronizer.registerCallback(lambda *msgs: got.append(msgs))
    reference = Reference(inputs, queue_size, int(slop * NS))
    for k, stamp, msg in events:
        filters[k].signalMessage(msg)
        reference.offer(k, stamp, msg)
    return [tuple(m.name for m in s) for s in got], [tuple(m.name for m in s) for s in reference.emitted], synchronizer


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("queue_size", [3, 10, 400])
@pytest.mark.parametrize("disorder_s", [0.0, 0.3, 4.0])
@pytest.mark.parametrize("grid_ns", [1, 10_000_000], ids=["ns", "10ms-clock"])
def test_two_cameras_scrambled_give_the_reference_pairs(seed, queue_size, disorder_s, grid_ns):
    events = scrambled_streams(seed, [30.0, 9.0], duration_s=6.0, disorder_s=disorder_s, grid_ns=grid_ns)
    got, expected, _ = run_both(events, 2, queue_size, 0.05)
    assert got == expected
    if queue_size == 400:  # everything fits: every thermal frame finds its RGB partner
        assert len(got) >= 0.9 * 6.0 * 9.0


@pytest.mark.parametrize("seed", range(4))
def test_three_inputs_and_equal_stamps_give_the_reference_sets(seed):
    events = scrambled_streams(seed, [30.0, 15.0, 9.0], duration_s=4.0, disorder_s=3.0, grid_ns=20_000_000)
    for queue_size in (4, 50, 300):
        got, expected, _ = run_both(events, 3, queue_size, 0.04)
        assert got == expected
    assert len(got) > 20


@pytest.mark.parametrize("seed", range(4))
def test_loop_recovery_threshold_above_the_disorder_changes_nothing(seed):
    """With recovery switched on (the node's setting) a threshold above the reordering leaves the pairs as they are."""
    events = scrambled_streams(seed, [30.0, 9.0], duration_s=6.0, disorder_s=4.0)
    for queue_size in (3, 10, 400):
        got, expected, synchronizer = run_both(events, 2, queue_size, 0.05, jump_back_threshold=5.0)
        assert got == expected
        assert synchronizer.jumps_recovered == 0


def test_upstream_property_any_order_recombines_all_pairs():
    """message_filters' own check: with room for all messages, N scrambled pairs all recombine."""
    rng = random.Random(0)
    for n in range(1, 12):
        first = [message(t * NS, f"a{t}") for t in range(n)]
        second = [message(t * NS, f"b{t}") for t in range(n)]
        filters = [InProjectSimpleFilter(), InProjectSimpleFilter()]
        synchronizer = InProjectApproximateTimeSynchronizer(filters, n, 0.1)
        got = []
        synchronizer.registerCallback(lambda a, b: got.append((a.name, b.name)))
        for msg in rng.sample(first, n):
            filters[0].signalMessage(msg)
        assert got == []
        for msg in rng.sample(second, n):
            filters[1].signalMessage(msg)
        assert sorted(got) == sorted((f"a{t}", f"b{t}") for t in range(n))


def test_reference_matches_hand_worked_cases():
    """The reference itself, on cases worked out by hand from the rule."""
    ref = Reference(2, 2, int(0.05 * NS))
    ref.offer(0, 1_000_000_000, "r0")
    ref.offer(0, 1_100_000_000, "r1")
    ref.offer(1, 1_080_000_000, "t0")  # r1 is 20 ms away, r0 80 ms: r1
    assert ref.emitted == [("r1", "t0")]
    ref.offer(0, 1_200_000_000, "r2")
    ref.offer(0, 900_000_000, "r-1")  # queue of 2 is full of newer stamps: evicted at once
    ref.offer(1, 905_000_000, "t-1")
    assert ref.emitted == [("r1", "t0")]
    ref.offer(1, 1_250_000_000, "t1")  # exactly slop (50 ms) from r2: not less than slop
    assert ref.emitted == [("r1", "t0")]
