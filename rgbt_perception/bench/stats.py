"""Machine facts and the statistics of timed samples: summaries, ratios, interleaved measuring,
process memory and CPU time."""
from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import time
from typing import Any, Callable, Sequence

import numpy as np


def cpu_model_name() -> str:
    """CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(device: str) -> dict[str, Any]:
    """The facts a reader needs to compare numbers between machines."""
    import timm
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": device,
        "gpu": None,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/meminfo") as handle:
            total_kb = int(handle.readline().split()[1])
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        info["memory_gib"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def summarize(samples_ms: Sequence[float]) -> dict[str, float] | None:
    """``count, mean, p50, p95, min, max`` in ms and ``fps`` (1000 / mean) of a sample list."""
    if not samples_ms:
        return None
    data = np.asarray(samples_ms, np.float64)
    mean = float(data.mean())
    return {
        "count": int(data.size),
        "mean_ms": mean,
        "p50_ms": float(np.percentile(data, 50)),
        "p95_ms": float(np.percentile(data, 95)),
        "min_ms": float(data.min()),
        "max_ms": float(data.max()),
        "fps": 1000.0 / mean if mean > 0 else float("inf"),
    }


def ratio(
    numerator: dict[str, float] | None, denominator: dict[str, float] | None, key: str = "p50_ms"
) -> float | None:
    """Ratio of medians (``key="min_ms"``: of the fastest iterations, the least disturbed ones
    on a shared machine)."""
    if not numerator or not denominator or denominator[key] <= 0:
        return None
    return numerator[key] / denominator[key]


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of process ``pid`` (Linux, clock-tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # Fields after the parenthesised command name start at field 3 (state); utime and
            # stime are fields 14 and 15.
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleave(
    measures: dict[str, Callable[[], float | None]],
    iters: int,
    warmup: int,
    budget_s: float | None = None,
    progress: Any = None,
    min_iters: int = 3,
) -> dict[str, list[float]]:
    """Run every measure once per iteration, alternating their order, and collect the ms.

    A measure returns its duration in ms, or ``None`` when that iteration gave no result (it is
    then left out). Slow variants on a CPU are bounded by ``budget_s``: warm-up ends early
    (after at least one iteration) once it has taken half the budget, and measuring stops once
    it has taken the budget and ``min_iters`` iterations are in.
    """
    names = list(measures)
    samples: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    measured = 0
    index = 0
    while measured < iters:
        warming = index < warmup
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            value = measures[name]()
            if not warming and value is not None:
                samples[name].append(value)
        index += 1
        if progress is not None:
            progress.update(1)
        elapsed = time.perf_counter() - began
        if warming:
            if budget_s is not None and index < warmup and elapsed > budget_s / 2:
                warmup = index  # enough warm-up for a slow variant
            if index == warmup:
                began = time.perf_counter()
            continue
        measured += 1
        if budget_s is not None and measured >= min_iters and elapsed > budget_s:
            break
    return samples
