"""The real ``rgbt_node`` as a child process: find it, start it, wait for it, read its log, stop it.

Used by the live replay (``rgbt-eval-bag --live``) and the node benchmark, so both run the node
the same way: the executable of the sourced workspace, this very package on its ``PYTHONPATH``,
parameters as ``--ros-args -p``, stdout and stderr in one log file.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

NODE_PACKAGE = "rgbt_perception"
NODE_EXECUTABLE = "rgbt_node"


class NodeProcessError(RuntimeError):
    """The node could not be found or started, exited early, or did not reach a state in time."""


def find_node_executable() -> str:
    """``<prefix>/lib/rgbt_perception/rgbt_node`` of the sourced workspace (AMENT_PREFIX_PATH, then
    this interpreter's prefix), else ``rgbt_node`` on PATH."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    for prefix in prefixes:
        candidate = Path(prefix) / "lib" / NODE_PACKAGE / NODE_EXECUTABLE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(NODE_EXECUTABLE)
    if found:
        return found
    raise NodeProcessError(f"cannot find the {NODE_EXECUTABLE} executable: build with `make setup` and "
                           "`source install/setup.bash` first")


def signal_and_wait(process: subprocess.Popen, signum: int = signal.SIGINT, timeout_s: float = 20.0) -> int | None:
    """Send ``signum`` to ``process`` if it still runs and wait up to ``timeout_s`` for it to exit.

    Returns its exit status, or ``None`` when it outlived the signal and was killed: whether that is a
    failure is the caller's to say.
    """
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


def ros_parameter_value(value: Any) -> str:
    """A Python value as ``-p name:=VALUE`` spells it (YAML: booleans lower case, lists bracketed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(ros_parameter_value(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """One ``rgbt_node`` child process with its log file.

    Args:
        parameters: ROS parameters (``name -> value``) passed with ``-p``.
        log_path: file that receives the node's stdout and stderr.
        node_name: ``__node:=`` remapping (``None`` keeps the node's own name).
        threads: ``OMP_NUM_THREADS`` of the child (``None`` inherits).
    """

    def __init__(self, parameters: Mapping[str, Any], log_path: str | os.PathLike, node_name: str | None = None,
                 threads: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.parameters = dict(parameters)
        self.log_path = Path(log_path)
        self.node_name = node_name
        self.threads = threads
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        command = [find_node_executable(), "--ros-args"]
        if self.node_name:
            command += ["-r", f"__node:={self.node_name}"]
        for name, value in self.parameters.items():
            command += ["-p", f"{name}:={ros_parameter_value(value)}"]
        return command + self.extra_args

    def start(self) -> NodeProcess:
        command = self.command()
        env = dict(os.environ)
        # The node runs this very package, wherever it is imported from.
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        self._log = open(self.log_path, "w")
        try:
            self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            self._log.close()
            self._log = None
            raise NodeProcessError(f"cannot start {command[0]}: {exc}") from None
        return self

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self, during: str) -> None:
        """Raise :class:`NodeProcessError` with the log tail if the node has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise NodeProcessError(f"{NODE_EXECUTABLE} exited with status {self.process.returncode} {during}: "
                                   f"{self.log_tail()}")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str,
                   poll: Callable[[], Any] | None = None) -> None:
        """Until ``condition()`` holds; ``poll`` (e.g. an executor's ``spin_once``) runs between
        checks, else a short sleep. Raises on exit or time-out, naming ``what`` was awaited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive(f"while waiting until {what}")
            if condition():
                return
            if poll is not None:
                poll()
            else:
                time.sleep(0.05)
        raise NodeProcessError(f"{NODE_EXECUTABLE}: not {what} within {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(no output)"

    def peak_rss_mb(self) -> float | None:
        """The running node's peak resident memory (``VmHWM``) in MiB, ``None`` where /proc has none.

        Read from /proc rather than ``getrusage``: a child's ``ru_maxrss`` also counts the forking
        parent's memory before the exec, which overstates a small node."""
        if not self.running:
            return None
        try:
            with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except (OSError, ValueError, IndexError):
            return None
        return None

    def stop(self, timeout_s: float = 10.0) -> float | None:
        """SIGINT (the node's clean shutdown), then SIGTERM, then SIGKILL; returns the node's peak RSS in
        MiB (``VmHWM`` just before the stop; ``None`` where it cannot be read)."""
        peak = self.peak_rss_mb()
        if self.process is not None:
            for send, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
                if self.process.poll() is not None:
                    break
                self.process.send_signal(send)
                try:
                    self.process.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    continue
            self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return peak
