"""The inference worker: queue -> engine -> outputs, on its own thread, without ROS.

The worker takes the newest work item, runs the engine on it and hands the result to ``publish``
(the node's messages). It survives what an engine can do wrong on one frame:

- an input the engine refuses (``ValueError``: it names the problem) is a rejected input;
- an engine fault (any other exception, non-finite outputs included) is counted, logged once per
  kind with its reason, and the item is dropped; the next item is tried as usual;
- CUDA out of memory: the cached memory is released and the same item retried once;
- after ``max_consecutive_failures`` faults in a row ``on_give_up(reason)`` is called once (the
  node then deactivates, or moves to the CPU when allowed) and the worker stops taking items.

``stop()`` returns once the worker has finished the item it holds: nothing is published after it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from rgbt_perception.backends.base import NonFiniteOutput
from rgbt_perception.node.health import NodeHealth
from rgbt_perception.node.logic import NewestOnlyQueue, WorkItem

#: Faults in a row after which the worker gives up (node parameter ``fault.max_consecutive``).
DEFAULT_MAX_CONSECUTIVE_FAILURES = 10


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or any device) out of memory, whichever torch version raised it."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def release_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back (only when torch is loaded already)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class InferenceWorker:
    """Runs ``engine()`` on the items of ``queue`` until stopped (see the module docstring).

    Args:
        queue: the newest-only hand-over; every item taken is accounted as processed or dropped.
        health: counters (``failed_inferences``, ``non_finite_outputs``, rejections).
        engine: returns the current engine (None while there is none) together with a lock held
            while it runs, so the node can swap or release it between items.
        publish: ``publish(item, result) -> bool``: sends the outputs; False when nothing went out.
        log: ``log(level, text)`` with level ``"warning"`` or ``"error"``.
        want_overlay: whether the colour overlay is wanted now.
        on_give_up: called once with the reason after too many faults in a row.
        max_consecutive_failures: see the module docstring.
    """

    def __init__(self, queue: NewestOnlyQueue[WorkItem], health: NodeHealth,
                 engine: Callable[[], tuple[Any, threading.Lock]], publish: Callable[[WorkItem, Any], bool],
                 log: Callable[[str, str], None], want_overlay: Callable[[], bool],
                 on_give_up: Callable[[str], None],
                 max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES) -> None:
        self._queue = queue
        self._health = health
        self._engine = engine
        self._publish = publish
        self._log = log
        self._want_overlay = want_overlay
        self._on_give_up = on_give_up
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._consecutive = 0
        self._logged_kinds: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._consecutive = 0
        self._thread = threading.Thread(target=self._run, name="rgbt_inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking items and wait for the one in hand (its outputs go out before this returns)."""
        self._stop.set()
        self._queue.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.take(timeout=0.2)
            if item is None:
                continue
            ok = False
            try:
                ok = self._process(item)
            finally:
                self._queue.done(processed=ok)

    def _process(self, item: WorkItem) -> bool:
        engine, lock = self._engine()
        with lock:
            if engine is None or self._stop.is_set():
                return False
            result = self._infer(engine, item)
        if result is None:
            return False
        return self._publish(item, result)

    def _infer(self, engine: Any, item: WorkItem) -> Any:
        """The engine's result, or None after a refused input or a fault (counted and logged)."""
        for attempt in (0, 1):
            try:
                result = engine.infer(item.rgb.image if item.rgb is not None else None,
                                      item.thermal.image if item.thermal is not None else None,
                                      overlay=self._want_overlay(), output_size=item.output_size)
            except ValueError as exc:  # the engine names what is wrong with the input
                line = self._health.rejections.record(f"pair: {exc}")
                if line is not None:
                    self._log("warning", line)
                return None
            except Exception as exc:  # a fault of the engine or the device: counted, the node goes on
                if attempt == 0 and is_out_of_memory(exc):
                    release_cached_memory()
                    continue
                self._fault(exc)
                return None
            self._consecutive = 0
            return result
        return None

    def _fault(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self._health.inference_failed(kind, non_finite=isinstance(exc, NonFiniteOutput))
        self._consecutive += 1
        reason = f"{kind}: {exc}"
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            self._log("error", f"inference failed: {reason} (the frame is dropped and counted in failed_inferences; "
                               f"further {kind} faults are counted without a log line)")
        if self._consecutive == self.max_consecutive_failures:
            self._stop.set()
            self._on_give_up(f"{self._consecutive} inference faults in a row, the last {reason}")
