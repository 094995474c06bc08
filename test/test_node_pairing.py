"""The node's pairing without a graph: a looped recording recovers, each event is reported once,
and nothing message_filters would pair is discarded."""
from __future__ import annotations

from dataclasses import dataclass

from std_msgs.msg import Header

from rgbt_perception.core.sync import InProjectApproximateTimeSynchronizer, InProjectSimpleFilter
from rgbt_perception.node.pairing import Pairing

NS = 1_000_000_000


@dataclass
class Item:
    header: Header
    stamp_ns: int
    name: str


def item(name: str, stamp_ns: int) -> Item:
    header = Header()
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, NS)
    return Item(header, stamp_ns, name)


def drive(start_ns: int, seconds: float, thermal_delay_s: float = 0.15) -> list[tuple[int, Item]]:
    """Arrival-ordered (input, item): RGB 30 Hz, thermal 9 Hz arriving ``thermal_delay_s`` late."""
    events = [(k / 30, 0, item(f"rgb{k}", start_ns + int(k * NS / 30))) for k in range(int(seconds * 30))]
    events += [(k / 9 + thermal_delay_s, 1, item(f"th{k}", start_ns + int(k * NS / 9)))
               for k in range(int(seconds * 9))]
    return [(index, it) for _, index, it in sorted(events, key=lambda e: e[0])]


class Recorder:
    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.recoveries: list = []
        self.jumps: list[tuple[int, float]] = []

    def pairing(self) -> Pairing:
        return Pairing(10, 0.05, lambda r, t: self.pairs.append((r.name, t.name)),
                       on_recovery=self.recoveries.append, on_jump=lambda i, s: self.jumps.append((i, s)))


def test_looped_recording_recovers_and_reports_each_event_once():
    rec = Recorder()
    pairing = rec.pairing()
    for index, it in drive(2000 * NS, 3.0):
        pairing.add(index, it)
    first_run = len(rec.pairs)
    assert first_run >= 25 and rec.jumps == [] and rec.recoveries == []
    for index, it in drive(1000 * NS, 3.0):  # the bag starts over
        pairing.add(index, it)
    # One jump event (the first input to go back), one recovery, then the new timeline pairs as the first did.
    assert len(rec.jumps) == 1 and rec.jumps[0][1] > 999
    assert [r.reason for r in rec.recoveries] == ["jump"] and pairing.recoveries == 1
    assert len(rec.pairs) - first_run >= first_run - 3
    for index, it in drive(1000 * NS, 3.0):  # a second loop is a new event
        pairing.add(index, it)
    assert len(rec.jumps) == 2 and pairing.recoveries == 2


def test_a_late_message_is_paired_as_message_filters_pairs_it():
    """A frame more than the jump threshold late is reported but discards nothing."""
    stream = drive(5000 * NS, 2.0)
    late = (1, item("late", 5000 * NS + NS // 9))  # thermal frame 1 again, ~1.9 s late
    stream.append(late)
    stream += [(0, item("rgb_after", 5000 * NS + NS // 9 + 1_000_000))]  # an RGB frame matching it
    rec = Recorder()
    pairing = rec.pairing()
    inputs = [InProjectSimpleFilter(), InProjectSimpleFilter()]
    reference: list[tuple[str, str]] = []
    InProjectApproximateTimeSynchronizer(inputs, 10, 0.05).registerCallback(
        lambda r, t: reference.append((r.name, t.name)))
    for index, it in stream:
        pairing.add(index, it)
        inputs[index].signalMessage(it)
    assert rec.pairs == reference
    assert rec.recoveries == [] and len(rec.jumps) == 1 and rec.jumps[0][0] == 1


def test_reset_empties_the_queues_and_is_reported():
    rec = Recorder()
    pairing = rec.pairing()
    pairing.add(0, item("rgb_a", 10 * NS))
    pairing.add(0, item("rgb_b", 10 * NS + NS // 30))
    assert pairing.reset() == 2
    assert [(r.reason, r.discarded) for r in rec.recoveries] == [("reset", 2)]
    pairing.add(1, item("th_a", 10 * NS))
    assert rec.pairs == []  # rgb_a was dropped with the old queues
    pairing.add(0, item("rgb_c", 10 * NS + 1_000_000))
    assert rec.pairs == [("rgb_c", "th_a")]
