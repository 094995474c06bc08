"""What ``make gpu-check`` measures of every engine path: the engine end to end and its bare network
(CUDA-event timed), peak GPU memory, time from process start to first output, mask agreement with
the fp32 eager engine on a data split, and the record ``auto`` reads (:func:`record_passing_paths`).

``python -m rgbt_perception.bench.resident_check --first-output WEIGHTS --backend B --precision P``
is the fresh process whose start-to-first-output time is measured (it prints one JSON line).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from rgbt_perception.io.console import console_script

_STARTED = time.perf_counter()  # as early as this module loads: the first-output clock

#: Share of mask pixels equal to the fp32 eager engine's that a path needs on every frame.
MIN_AGREEMENT = 0.995


class DeviceTimer:
    """Milliseconds of one call: CUDA events on a GPU (device time of what the call queued, waited
    for), the wall clock on the CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        if self.cuda:
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def __call__(self, call: Callable[[], Any]) -> float:
        if not self.cuda:
            started = time.perf_counter()
            call()
            return (time.perf_counter() - started) * 1e3
        begin, end = self.events
        begin.record()
        call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)


class BareNetwork:
    """The engine's network alone on static preprocessed inputs (both cameras): replayed as a CUDA
    graph when the engine replays its step as one, else called as the engine calls it."""

    def __init__(self, engine: Any) -> None:
        import torch

        height, width = engine.input_size
        device = engine.torch_device
        self.engine = engine
        self.inputs = (torch.rand(1, 3, height, width, device=device), torch.rand(1, 1, height, width, device=device),
                       torch.ones(1, 2, dtype=torch.bool, device=device))
        self.graph = None
        if device.type == "cuda" and engine.active_mode in ("graphs", "compiled"):
            for _ in range(3):
                self._eager()
            torch.cuda.synchronize(device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(self.graph), engine.autocast():
                engine.network(*self.inputs)
        self.timer = DeviceTimer(str(device))

    def _eager(self) -> None:
        import torch

        with torch.inference_mode(), self.engine.autocast():
            self.engine.network(*self.inputs)

    def timed(self) -> float:
        return self.timer(self.graph.replay if self.graph is not None else self._eager)


def measure_path(engine: Any, frames: tuple[Any, Any], iters: int, warmup: int) -> dict[str, Any]:
    """Engine end to end (frames in, host results out) and bare network, interleaved: p50/p95 and frames/s."""
    from rgbt_perception.bench.stats import interleave, summarize

    rgb, thermal = frames
    engine.infer(rgb, thermal)  # this geometry's step built (and captured) before timing
    bare = BareNetwork(engine) if hasattr(engine, "network") else None

    def end_to_end() -> float:
        started = time.perf_counter()
        engine.infer(rgb, thermal)
        return (time.perf_counter() - started) * 1e3

    measures: dict[str, Callable[[], float | None]] = {"engine": end_to_end}
    if bare is not None:
        measures["network"] = bare.timed
    samples = interleave(measures, iters, warmup)
    row = {"engine": summarize(samples["engine"]), "network": summarize(samples.get("network", []))}
    row["engine_over_network"] = (row["engine"]["p50_ms"] / row["network"]["p50_ms"]
                                  if row["network"] else None)
    return row


def first_output_seconds(weights: str, backend: str, precision: str, device: str, timeout_s: float = 300.0
                         ) -> dict[str, Any]:
    """Start a fresh process that makes the engine and infers one frame; its seconds from start."""
    command = [sys.executable, "-m", "rgbt_perception.bench.resident_check", "--first-output", weights,
               "--backend", backend, "--precision", precision, "--device", device]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"no output within {timeout_s:.0f} s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit {result.returncode}: {tail[0][:200]}"}
    report = json.loads(lines[-1])
    report["wall_s"] = round(time.perf_counter() - started, 2)
    return report


def mask_agreement(weights: str, pairs: Sequence[Any], device: str,
                   candidates: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per ``(backend, precision)``: share of mask pixels equal to the fp32 eager torch engine's on
    ``pairs`` (``read_split``'s ``(stem, rgb, thermal, homography)``), overall and on the worst frame."""
    from rgbt_perception.backends.factory import create_engine

    reference = create_engine(weights, device=device, precision="fp32", backend="torch")
    wanted = [reference.infer(rgb, thermal, homography=h).mask for _, rgb, thermal, h in pairs]
    reference.release()
    rows = []
    for backend, precision in candidates:
        try:
            engine = create_engine(weights, device=device, precision=precision, backend=backend)
        except (ValueError, RuntimeError) as exc:
            rows.append({"backend": backend, "precision": precision, "skipped": str(exc)[:200]})
            continue
        shares = [float((engine.infer(rgb, thermal, homography=h).mask == want).mean())
                  for (_, rgb, thermal, h), want in zip(pairs, wanted)]
        engine.release()
        rows.append({"backend": backend, "precision": precision, "frames": len(shares),
                     "pixel_agreement": sum(shares) / len(shares), "worst_frame_agreement": min(shares),
                     "passed": min(shares) >= MIN_AGREEMENT})
    return rows


def record_passing_paths(gpu: str, cells: Sequence[dict[str, Any]], agreement: Sequence[dict[str, Any]],
                         variant: str = "tiny") -> dict[str, list[str]]:
    """Write the paths that passed agreement, fastest first (engine p50 of ``variant``), per precision,
    into the record :func:`~rgbt_perception.backends.selection.measured_order` reads; returns them."""
    from rgbt_perception.backends.selection import MEASURED_PATHS, user_cache_root

    passed = {(row["backend"], row["precision"]) for row in agreement if row.get("passed")}
    order: dict[str, list[str]] = {}
    timed = sorted((cell["engine"]["p50_ms"], cell["precision"], cell["backend"]) for cell in cells
                   if cell.get("variant") == variant and cell.get("engine") and
                   (cell["backend"], cell["precision"]) in passed)
    for _, precision, backend in timed:
        order.setdefault(precision, []).append(backend)
    path = user_cache_root() / MEASURED_PATHS
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        record = {}
    record[gpu] = order
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return order


def _first_output_main(args: argparse.Namespace) -> int:
    from rgbt_perception.backends.factory import create_engine
    from rgbt_perception.bench.runners import synthetic_pair
    from rgbt_perception.io.weights import read_metadata

    size = read_metadata(args.first_output).input_size
    rgb, thermal = synthetic_pair(size, 0)
    engine = create_engine(args.first_output, device=args.device, precision=args.precision, backend=args.backend)
    made = time.perf_counter()
    engine.infer(rgb, thermal)
    done = time.perf_counter()
    print(json.dumps({"first_output_s": round(done - _STARTED, 2), "engine_s": round(made - _STARTED, 2),
                      "active_mode": getattr(engine, "active_mode", None),
                      "fallbacks": getattr(engine, "fallbacks", [])}))
    return 0


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-output", required=True, metavar="WEIGHTS", help="weights file to start on")
    parser.add_argument("--backend", default="torch_graphs")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--device", default="cuda")
    return _first_output_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
