"""Pairing of decoded camera frames, whichever synchroniser implementation is installed.

``message_filters`` is used when it imports, else :mod:`rgbt_perception.core.sync` (same API).
The differences between the two (how slop is set, what a backward stamp jump does) are handled
here, so the node has one code path.
"""
from __future__ import annotations

from typing import Any, Callable

from rgbt_perception.core import sync


class Pairing:
    """RGB (input 0) and thermal (input 1) frames in, pairs out through ``on_pair(rgb, thermal)``.

    Frames enter through relay filters, so the synchroniser can be rebuilt after a backward time
    jump (a looped bag, a restarted driver): message_filters would otherwise hold the newer stale
    stamps forever and never pair again. ``restarts`` counts those rebuilds.
    """

    def __init__(self, queue_size: int, slop: float, on_pair: Callable[[Any, Any], None]) -> None:
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self.on_pair = on_pair
        self.restarts = 0
        self._jumps = sync.BackwardJumpDetector(2)
        self._build()

    @property
    def implementation(self) -> str:
        return sync.SYNC_IMPLEMENTATION

    def _build(self) -> None:
        self._relays = [sync.SimpleFilter(), sync.SimpleFilter()]
        args = (self._relays, self.queue_size, self.slop)
        if sync.SYNC_IMPLEMENTATION == "message_filters":
            self._synchronizer = sync.ApproximateTimeSynchronizer(*args)
        else:
            self._synchronizer = sync.ApproximateTimeSynchronizer(*args, jump_back_threshold=1.0)
        self._synchronizer.registerCallback(self.on_pair)

    def set_slop(self, seconds: float) -> None:
        self.slop = float(seconds)
        if sync.SYNC_IMPLEMENTATION == "message_filters":
            from rclpy.duration import Duration

            self._synchronizer.slop = Duration(seconds=seconds)
        else:
            self._synchronizer.slop = seconds

    def add(self, index: int, frame: Any) -> bool:
        """Offer a frame of input ``index`` (its ``stamp_ns`` and ``header``); True when the pairing
        was restarted because this frame's stamp jumped backwards."""
        restarted = False
        if sync.SYNC_IMPLEMENTATION == "message_filters" and self._jumps.is_jump(index, frame.stamp_ns):
            self._jumps.reset()
            self._build()
            self.restarts += 1
            restarted = True
        self._jumps.observe(index, frame.stamp_ns)
        self._relays[index].signalMessage(frame)
        return restarted

    def reset(self) -> None:
        """Forget everything queued (activation)."""
        self._jumps.reset()
        self._build()

    @property
    def recoveries(self) -> int:
        """Backward jumps recovered, by a rebuild here or inside the synchroniser."""
        return self.restarts + int(getattr(self._synchronizer, "jumps_recovered", 0))
