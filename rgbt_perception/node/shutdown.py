"""SIGINT and SIGTERM end the node with status 0 at any moment, start-up included.

Start-up (imports, ``rclpy.init``, loading the weights: torch alone takes seconds) runs in the
main thread's Python code, so a signal there raises :class:`KeyboardInterrupt` at once and the
start-up unwinds. rclpy's own signal handlers are not installed (``SignalHandlerOptions.NO``):
they would shut the context down at once, under a worker thread that is publishing. While the
node spins, the handler only records the signal; the spin loop sees it within a slice, the node
stops its worker and publishers, and only then the context shuts down. Once stopping, further
signals are ignored so the teardown always completes.

No ROS import: ``rgbt_node`` installs the guard before it imports anything heavy.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

STARTING, SPINNING, STOPPING = "starting", "spinning", "stopping"


class SignalGuard:
    """Turns SIGINT and SIGTERM into an orderly stop; see the module docstring for the phases."""

    def __init__(self) -> None:
        self.phase = STARTING
        self.received: int | None = None
        self._installed = False

    @property
    def requested(self) -> bool:
        """True once SIGINT or SIGTERM arrived."""
        return self.received is not None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here (main thread only; a signal the parent set to be ignored stays ignored)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self._handle)
        self._installed = True

    def spinning(self) -> None:
        """Start-up is over: from now on a signal only ends the spin loop."""
        if self.phase == STARTING:
            self.phase = SPINNING

    def stopping(self) -> None:
        """Teardown begins: ignore further signals."""
        self.phase = STOPPING

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.phase == STARTING:
            self.phase = STOPPING
            raise KeyboardInterrupt


#: The process-wide guard (signal handlers are per process).
GUARD = SignalGuard()
