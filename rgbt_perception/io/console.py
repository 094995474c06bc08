"""What every command-line tool of the project does alike at its console."""
from __future__ import annotations

import functools
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

#: The exit status of a tool whose standard output was closed under it, as a shell reports a program
#: ended by SIGPIPE (``yes | head``).
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (``tool | head`` once ``head`` has exited)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a capture object, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _flush_stdout() -> bool:
    """Flush standard output; False (and the rest discarded) when its reader has gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_closed():
            raise
        _discard_stdout()
        return False
    return True


def console_script(main: Callable[P, int | None]) -> Callable[P, int | None]:
    """Wrap a tool's ``main`` so that a reader that stops early (``| head``) ends it quietly.

    Python otherwise reports the failed write, or the failed flush at exit, as a traceback. The rest
    of the output goes to ``/dev/null`` and the tool exits with :data:`EXIT_OUTPUT_CLOSED` (``--help``,
    which exits by itself, keeps its status); a broken pipe of anything but standard output is left
    to raise.
    """

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int | None:
        try:
            status = main(*args, **kwargs)
        except BrokenPipeError:
            if not stdout_closed():
                raise
            _discard_stdout()
            return EXIT_OUTPUT_CLOSED
        except SystemExit:  # argparse's --help and usage errors
            _flush_stdout()
            raise
        return status if _flush_stdout() else EXIT_OUTPUT_CLOSED

    return run
