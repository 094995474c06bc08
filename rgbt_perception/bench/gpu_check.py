"""``make gpu-check``: on a machine with a CUDA GPU, the GPU tests and the GPU benchmark in one go.

1. ``pytest -m gpu test/test_gpu_*.py`` (the tests that need CUDA; skipped elsewhere);
2. for tiny and base_plus at 480x640 with both cameras, for fp16 and bf16 and every backend that is
   available (torch; onnxruntime when its CUDA provider is installed, fp16 only; TensorRT when the
   ``tensorrt`` package is), interleaved: the bare network and the engine end to end (frames/s,
   p50/p95), with the peak GPU memory;
3. ``results.md`` and ``results.json`` in a new folder (``out/gpu-check/<time>-<gpu>``, printed),
   with the card's name and the goals (tiny >= 100 and base_plus >= 40 frames/s end to end).

The whole run keeps to a time budget (default 450 s): cells that would start after it are listed as
skipped. Without CUDA it measures nothing, says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
GOALS_FPS = {"tiny": 100.0, "base_plus": 40.0}
VARIANTS = ("tiny", "base_plus")
PRECISIONS = ("fp16", "bf16")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
SIZE = (480, 640)


def cuda_device() -> tuple[bool, str]:
    """``(available, description)`` of the first CUDA device."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no NVIDIA GPU or driver visible to this process)"
    return True, torch.cuda.get_device_name(0)


def run_gpu_tests(out: Path, timeout_s: float) -> dict[str, Any]:
    """The ``gpu``-marked tests, output kept in ``pytest.txt``."""
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "test").glob("test_gpu_*.py"))
    if not tests:
        return {"status": "no GPU test files", "returncode": None}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        text, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:
        text, code = f"{exc.stdout or ''}\nTIMED OUT after {timeout_s:.0f} s", -1
    (out / "pytest.txt").write_text(text)
    summary = next((line for line in reversed(text.strip().splitlines()) if " in " in line), "")
    return {"command": " ".join(command), "returncode": code, "summary": summary.strip("= "),
            "seconds": round(time.perf_counter() - started, 1)}


def backend_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot run ``precision`` on this GPU (``None`` when it can)."""
    from rgbt_perception.backends.selection import unavailable_reason

    reason = unavailable_reason(backend, "cuda", precision)
    if reason is None and backend == "onnxruntime" and precision == "bf16":
        reason = "onnxruntime runs fp16 graphs on CUDA, not bf16"
    if reason is None and precision == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            reason = "this GPU has no bf16"
    return reason


def measure_cell(variant: str, precision: str, backend: str, weights: str, model: Any, metadata: Any,
                 iters: int, warmup: int) -> dict[str, Any]:
    """Bare network and engine end to end, interleaved, for one (variant, precision, backend)."""
    import torch

    from rgbt_perception.bench.runners import ForwardOptions, ForwardRunner, GraphRunner, synthetic_pair
    from rgbt_perception.bench.stats import interleave, summarize
    from rgbt_perception.core.preprocess import to_model_inputs
    from rgbt_perception.inference import InferenceEngine

    rgb, thermal = synthetic_pair(SIZE, 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    started = time.perf_counter()
    if backend == "torch":
        engine = InferenceEngine.from_model(model, metadata, device="cuda", precision=precision)
        rgb_in, thermal_in = to_model_inputs(rgb, thermal, engine.input_size, engine.scaling)
        bare = ForwardRunner(engine.model, ForwardOptions("cuda", precision), rgb_in, thermal_in)
    else:
        engine = InferenceEngine(weights, device="cuda", precision=precision, backend=backend)
        bare = GraphRunner(engine, rgb, thermal)
    setup_s = time.perf_counter() - started

    def engine_once() -> float:
        begun = time.perf_counter()
        engine.infer(rgb, thermal)
        return (time.perf_counter() - begun) * 1e3

    samples = interleave({"model": bare.timed, "engine": engine_once}, iters, warmup)
    free_after, _ = torch.cuda.mem_get_info()
    row = {
        "variant": variant, "precision": precision, "backend": backend, "setup_s": round(setup_s, 1),
        "model": summarize(samples["model"]), "engine": summarize(samples["engine"]),
        "torch_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "device_memory_used_mb": (total - free_after) / 2**20,
        "device_memory_added_mb": (free_before - free_after) / 2**20,
        "goal_fps": GOALS_FPS.get(variant),
    }
    row["goal_met"] = None if row["goal_fps"] is None else row["engine"]["fps"] >= row["goal_fps"]
    engine.release()
    torch.cuda.empty_cache()
    return row


def render(results: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {results['gpu']}",
        "",
        f"`{results['command']}` on {results['date_utc']}; torch {results['versions'].get('torch')}, "
        f"onnxruntime {results['versions'].get('onnxruntime')}, tensorrt {results['versions'].get('tensorrt')}; "
        f"{results['seconds']:.0f} s in all.",
        "",
        f"GPU tests: {results['tests'].get('summary') or results['tests'].get('status')} "
        f"(exit {results['tests'].get('returncode')}).",
        "",
        f"Benchmark: random weights, frames {SIZE[0]}x{SIZE[1]} (RGB uint8 + 16-bit thermal), both cameras; "
        "(1) bare network on preprocessed inputs, (2) engine end to end; iterations interleaved.",
        "",
        "| variant | precision | backend | (1) model p50 / p95 ms | (2) engine p50 / p95 ms | engine frames/s | goal "
        "| torch peak MiB | device memory MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["cells"]:
        if "skipped" in row:
            lines.append(f"| {row['variant']} | {row['precision']} | {row['backend']} | skipped: {row['skipped']} "
                         "| | | | | |")
            continue
        model, engine = row["model"], row["engine"]
        verdict = "met" if row["goal_met"] else "NOT met"
        goal = "–" if row["goal_fps"] is None else f">= {row['goal_fps']:.0f}: {verdict}"
        lines.append(
            f"| {row['variant']} | {row['precision']} | {row['backend']} | {model['p50_ms']:.2f} / "
            f"{model['p95_ms']:.2f} | {engine['p50_ms']:.2f} / {engine['p95_ms']:.2f} | {engine['fps']:.1f} | {goal} | "
            f"{row['torch_peak_allocated_mb']:.0f} | {row['device_memory_used_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "out" / "gpu-check"), help="parent of the results folder")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    parser.add_argument("--iters", type=int, default=100, help="measured iterations per cell (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per cell (default 10)")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    args = parser.parse_args(argv)
    available, gpu = cuda_device()
    if not available:
        print(f"gpu-check: no CUDA GPU here: {gpu}. Nothing was measured; run `make gpu-check` on a machine "
              "with an NVIDIA GPU.", file=sys.stderr)
        return 2
    begun = time.perf_counter()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) / f"{stamp}-{slug}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check: {gpu}; results go to {out}", flush=True)
    results: dict[str, Any] = {
        "gpu": gpu, "command": "make gpu-check " + " ".join(argv or sys.argv[1:]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {n: _version(n) for n in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "timm")},
        "tests": {"status": "skipped"} if args.skip_tests else run_gpu_tests(out, timeout_s=args.budget / 3),
        "cells": [],
    }
    print(f"gpu-check: tests: {results['tests'].get('summary') or results['tests'].get('status')}", flush=True)

    from rgbt_perception.bench.runners import build_model
    from rgbt_perception.io.weights import save_weights

    with tempfile.TemporaryDirectory(prefix="rgbt-gpu-check-") as workdir:
        for variant in VARIANTS:
            model, metadata = build_model(variant, SIZE, seed=0)
            weights = os.path.join(workdir, f"{variant}.safetensors")
            save_weights(weights, model, metadata)
            for backend in BACKENDS:
                for precision in PRECISIONS:
                    cell = {"variant": variant, "precision": precision, "backend": backend}
                    reason = backend_reason(backend, precision)
                    if reason is None and time.perf_counter() - begun > args.budget:
                        reason = f"time budget of {args.budget:.0f} s used up"
                    if reason is not None:
                        results["cells"].append({**cell, "skipped": reason})
                        continue
                    try:
                        row = measure_cell(variant, precision, backend, weights, model, metadata, args.iters,
                                           args.warmup)
                    except Exception as exc:  # one failing backend must not hide the others' numbers
                        row = {**cell, "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                    results["cells"].append(row)
                    if "engine" in row:
                        print(f"gpu-check: {variant} {precision} {backend}: engine {row['engine']['fps']:.1f} "
                              f"frames/s (p50 {row['engine']['p50_ms']:.2f} ms)", flush=True)
            model.to("cpu")
    results["seconds"] = time.perf_counter() - begun
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(render(results))
    print(render(results))
    print(f"gpu-check: results written to {out}")
    tests_ok = args.skip_tests or results["tests"].get("returncode") in (0, 5)
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
