"""Pairing of decoded camera frames, whichever synchroniser implementation is installed.

``message_filters`` is used when it imports, else :mod:`rgbt_perception.core.sync` (same API and
pairs). Both stall after a backward time jump of the inputs (a looped bag, restarted drivers):
the old timeline's newer stamps are never evicted. The recovery here never discards what
message_filters would pair:

* the in-project synchroniser recovers by itself once ALL inputs went back together and
  message_filters would now evict the new timeline (``jump_back_threshold``);
* with message_filters the same all-inputs condition empties its queues from here;
* :meth:`Pairing.reset` (the node calls it when its clock jumps back under ``use_sim_time``)
  empties the queues at once.

Each recovery is reported once through ``on_recovery`` (:class:`rgbt_perception.core.sync.SyncReset`);
a backward jump of a single input is reported through ``on_jump`` (once per input and jump) so the
log says why pairs stopped even before the other input follows.
"""
from __future__ import annotations

from typing import Any, Callable

from rgbt_perception.core import sync
from rgbt_perception.core.sync import DEFAULT_JUMP_BACK_THRESHOLD, BackwardJumpDetector, SyncReset


class Pairing:
    """RGB (input 0) and thermal (input 1) frames in, pairs out through ``on_pair(rgb, thermal)``.

    Args:
        queue_size, slop: the synchroniser's (message_filters meaning).
        on_pair: called with each matched pair (inside the synchroniser's lock).
        on_recovery: called with a :class:`SyncReset` after each recovery.
        on_jump: called with ``(input index, jump in seconds)`` when an input's stamps go back by
            more than ``jump_back_threshold``, once per event: the inputs that follow before the
            recovery are part of the same event.
        jump_back_threshold: seconds; must exceed the largest reordering of one input's stamps.
    """

    def __init__(self, queue_size: int, slop: float, on_pair: Callable[[Any, Any], None],
                 on_recovery: Callable[[SyncReset], None] | None = None,
                 on_jump: Callable[[int, float], None] | None = None,
                 jump_back_threshold: float = DEFAULT_JUMP_BACK_THRESHOLD) -> None:
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self.on_pair = on_pair
        self.on_recovery = on_recovery
        self.on_jump = on_jump
        self.threshold_s = float(jump_back_threshold)
        self._recovered = 0
        self._jumps = BackwardJumpDetector(2, self.threshold_s)
        self._jumped: set[int] = set()  # inputs that jumped since the last recovery
        self._relays = [sync.SimpleFilter(), sync.SimpleFilter()]
        if sync.SYNC_IMPLEMENTATION == "message_filters":
            self._synchronizer = sync.ApproximateTimeSynchronizer(self._relays, self.queue_size, self.slop)
            self._loop: BackwardJumpDetector | None = BackwardJumpDetector(2, self.threshold_s)
        else:
            self._synchronizer = sync.ApproximateTimeSynchronizer(
                self._relays, self.queue_size, self.slop, jump_back_threshold=self.threshold_s)
            self._synchronizer.registerResetCallback(self._report)
            self._loop = None
        self._synchronizer.registerCallback(self.on_pair)

    @property
    def implementation(self) -> str:
        return sync.SYNC_IMPLEMENTATION

    def set_slop(self, seconds: float) -> None:
        self.slop = float(seconds)
        if sync.SYNC_IMPLEMENTATION == "message_filters":
            from rclpy.duration import Duration

            self._synchronizer.slop = Duration(seconds=seconds)
        else:
            self._synchronizer.slop = seconds

    def add(self, index: int, frame: Any) -> None:
        """Offer a frame of input ``index`` (it has ``stamp_ns`` and ``header``)."""
        stamp = int(frame.stamp_ns)
        if self._jumps.is_jump(index, stamp):
            newest = self._jumps.newest[index]
            self._jumps.newest[index] = stamp  # a later jump of this input is a new event
            if self.on_jump is not None and not self._jumped:
                self.on_jump(index, (newest - stamp) / 1e9)
            self._jumped.add(index)
        self._jumps.observe(index, stamp)
        if self._loop is not None and self._all_inputs_jumped(index, stamp):
            newest = tuple(self._loop.newest)
            self._report(SyncReset("jump", sync.reset_synchronizer(self._synchronizer), stamp, newest))
        self._relays[index].signalMessage(frame)

    def _all_inputs_jumped(self, index: int, stamp: int) -> bool:
        """For message_filters: all inputs went back together (it would stay stuck); the tracker then
        starts on the new timeline."""
        self._loop.arrive(index, stamp)
        if self._loop.all_behind():
            self._loop.rebase(self._loop.latest)
            return True
        self._loop.observe(index, stamp)
        return False

    def reset(self) -> int:
        """Empty the queues (the clock jumped back); reported like any recovery. Returns the frames dropped."""
        self._jumps.reset()
        if self._loop is not None:
            discarded = sync.reset_synchronizer(self._synchronizer)
            self._loop = BackwardJumpDetector(2, self.threshold_s)
            self._report(SyncReset("reset", discarded, None, (None, None)))
            return discarded
        return int(self._synchronizer.reset())  # reports through the reset callback

    def _report(self, event: SyncReset) -> None:
        self._recovered += 1
        self._jumped.clear()
        if self.on_recovery is not None:
            self.on_recovery(event)

    @property
    def recoveries(self) -> int:
        """Recoveries so far (backward jumps of all inputs, clock resets)."""
        return self._recovered
