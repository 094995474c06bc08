"""``make gpu-check``: on a machine with a CUDA GPU, the GPU tests and the GPU benchmark in one go.

1. ``pytest -m gpu test/test_gpu_*.py`` (the tests that need CUDA; skipped elsewhere);
2. for micro, tiny and base_plus (random weights) at 480x640 with both cameras, fp16 and bf16, every
   available backend: ``torch`` (eager, NumPy/OpenCV pre/post), ``torch_resident`` (the step on the
   GPU, eager), ``torch_graphs`` (the step as a CUDA graph), ``torch_compiled`` (compiled network +
   graph), onnxruntime's CUDA provider and TensorRT where installed: the engine end to end and the bare
   network interleaved (CUDA-event timed), p50/p95, frames/s, peak GPU memory;
3. time from process start to first output (tiny fp16, graphs and compiled; compiled twice: cold,
   then from inductor's kernel cache);
4. mask agreement of every path and precision with the fp32 eager engine on a data split (the
   synthetic val split; ``--agreement-data``), with the shipped demo weights; the paths that pass on
   every frame are recorded, fastest first, for ``backend: auto`` on this GPU;
5. the node over DDS with tiny on the fastest passing path: 30 Hz 1280x720 RGB + 9 Hz 640x512 mono16
   thermal, the large-frames Fast DDS profile, 60 s: pairs formed / processed / dropped, latency from
   RGB publish to mask receipt (p50/p95), node CPU time per frame;
6. ``results.md`` and ``results.json`` in a new folder (``out/gpu-check/<time>-<gpu>``, printed), with
   the card's name and the goals.

Steps run in that order within a time budget (default 420 s for steps 2-5): what would start after it
is listed as skipped. Without CUDA it measures nothing, says so and exits with status 2.
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

from rgbt_perception.core.defaults import BACKENDS
from rgbt_perception.io.console import console_script

REPO = Path(__file__).resolve().parents[2]
GOALS_FPS = {"micro": 400.0, "tiny": 200.0, "base_plus": 100.0}
#: tiny first: the goals of the node and the record for ``auto`` are measured on it.
VARIANTS = ("tiny", "micro", "base_plus")
DDS_SECONDS = 60.0
#: The shipped demo weights (trained: their masks say more about agreement than random weights).
DEMO_WEIGHTS = REPO / "rgbt_perception" / "data" / "micro_synthetic.safetensors"
PRECISIONS = ("fp16", "bf16")
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
    """Engine end to end and bare network, interleaved, for one (variant, precision, backend)."""
    import torch

    from rgbt_perception.backends.factory import create_engine
    from rgbt_perception.backends.selection import RESIDENT_BACKENDS
    from rgbt_perception.backends.torch_engine import InferenceEngine
    from rgbt_perception.bench.resident_check import measure_path
    from rgbt_perception.bench.runners import ForwardOptions, ForwardRunner, GraphRunner, synthetic_pair
    from rgbt_perception.bench.stats import interleave, summarize
    from rgbt_perception.core.preprocess import to_model_inputs

    rgb, thermal = synthetic_pair(SIZE, 0)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    started = time.perf_counter()
    row: dict[str, Any] = {"variant": variant, "precision": precision, "backend": backend}
    if backend in RESIDENT_BACKENDS:
        engine = create_engine(weights, device="cuda", precision=precision, backend=backend)
        row.update(setup_s=round(time.perf_counter() - started, 1), active_mode=engine.active_mode,
                   fallbacks=engine.fallbacks, **measure_path(engine, (rgb, thermal), iters, warmup))
    else:
        if backend == "torch":
            engine = InferenceEngine.from_model(model, metadata, device="cuda", precision=precision)
            rgb_in, thermal_in = to_model_inputs(rgb, thermal, engine.input_size, engine.scaling)
            bare = ForwardRunner(engine.model, ForwardOptions("cuda", precision), rgb_in, thermal_in)
        else:
            engine = create_engine(weights, device="cuda", precision=precision, backend=backend)
            bare = GraphRunner(engine, rgb, thermal)
        row["setup_s"] = round(time.perf_counter() - started, 1)

        def engine_once() -> float:
            begun = time.perf_counter()
            engine.infer(rgb, thermal)
            return (time.perf_counter() - begun) * 1e3

        samples = interleave({"network": bare.timed, "engine": engine_once}, iters, warmup)
        row.update(network=summarize(samples["network"]), engine=summarize(samples["engine"]))
    free_after, _ = torch.cuda.mem_get_info()
    row.update(torch_peak_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
               device_memory_added_mb=(free_before - free_after) / 2**20, goal_fps=GOALS_FPS.get(variant))
    row["goal_met"] = None if row["goal_fps"] is None else row["engine"]["fps"] >= row["goal_fps"]
    engine.release()
    torch.cuda.empty_cache()
    return row


def _ms(summary: dict[str, Any] | None) -> str:
    return "–" if not summary else f"{summary['p50_ms']:.2f} / {summary['p95_ms']:.2f}"


def render_cells(cells: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| variant | precision | backend (mode) | network p50 / p95 ms | engine p50 / p95 ms | engine frames/s "
             "| engine / network | goal | torch peak MiB | setup s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in cells:
        if "skipped" in row:
            lines.append(f"| {row['variant']} | {row['precision']} | {row['backend']} | skipped: {row['skipped']} "
                         "| | | | | | |")
            continue
        verdict = "met" if row["goal_met"] else "NOT met"
        goal = "–" if row["goal_fps"] is None else f">= {row['goal_fps']:.0f}: {verdict}"
        mode = f" ({row['active_mode']})" if row.get("active_mode") else ""
        over = row.get("engine_over_network") or (row["engine"]["p50_ms"] / row["network"]["p50_ms"]
                                                  if row.get("network") else None)
        lines.append(f"| {row['variant']} | {row['precision']} | {row['backend']}{mode} | {_ms(row.get('network'))} "
                     f"| {_ms(row['engine'])} | {row['engine']['fps']:.1f} | "
                     f"{'–' if over is None else f'{over:.2f}x'} | {goal} | {row['torch_peak_allocated_mb']:.0f} | "
                     f"{row['setup_s']} |")
    return lines


def render_extras(results: dict[str, Any]) -> list[str]:
    lines = ["", "Start to first output (fresh process, tiny fp16; goal <= 15 s with a cached/compiled engine):", ""]
    for name, report in results.get("first_output", {}).items():
        lines.append(f"- {name}: " + (report.get("error") or f"{report['first_output_s']} s "
                                      f"(engine made at {report['engine_s']} s, mode {report['active_mode']})"))
    lines += ["", f"Mask agreement with the fp32 eager engine ({results.get('agreement_source', 'not run')}; "
              "goal >= 99.5 % on every frame):", "", "| backend | precision | pixels equal | worst frame | passed |",
              "|---|---|---|---|---|"]
    for row in results.get("agreement", []):
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['precision']} | skipped: {row['skipped']} | | |")
            continue
        lines.append(f"| {row['backend']} | {row['precision']} | {100 * row['pixel_agreement']:.3f} % | "
                     f"{100 * row['worst_frame_agreement']:.2f} % | {'yes' if row['passed'] else 'NO'} |")
    lines += ["", f"Recorded for `backend: auto` on this GPU: {results.get('auto_order') or 'nothing'}", ""]
    node = results.get("node") or {}
    lines.append("Node over DDS: " + (node.get("error") or node.get("skipped") or json.dumps(node.get("summary"))))
    return lines


def render(results: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {results['gpu']}", "",
        f"`{results['command']}` on {results['date_utc']}; torch {results['versions'].get('torch')}, "
        f"onnxruntime {results['versions'].get('onnxruntime')}, tensorrt {results['versions'].get('tensorrt')}; "
        f"{results['seconds']:.0f} s in all.", "",
        f"GPU tests: {results['tests'].get('summary') or results['tests'].get('status')} "
        f"(exit {results['tests'].get('returncode')}).", "",
        f"Benchmark: random weights, frames {SIZE[0]}x{SIZE[1]} (RGB uint8 + 16-bit thermal), both cameras; "
        "bare network on preprocessed inputs (CUDA events; a CUDA graph for the graphs/compiled paths) and the "
        "engine end to end (frames in, host results out), iterations interleaved.", "",
        *render_cells(results["cells"]), *render_extras(results)]
    return "\n".join(lines) + "\n"


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class Budget:
    """Seconds left of the benchmark's budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.began = seconds, time.perf_counter()

    def reason(self) -> str | None:
        if time.perf_counter() - self.began > self.seconds:
            return f"time budget of {self.seconds:.0f} s used up"
        return None


def measure_cells(workdir: str, budget: Budget, iters: int, warmup: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every (variant, backend, precision) cell; returns the rows and each variant's weights file."""
    from rgbt_perception.bench.runners import build_model
    from rgbt_perception.io.weights import save_weights

    cells, weights_files = [], {}
    for variant in VARIANTS:
        model, metadata = build_model(variant, SIZE, seed=0)
        weights = weights_files[variant] = os.path.join(workdir, f"{variant}.safetensors")
        save_weights(weights, model, metadata)
        for backend in BACKENDS:
            for precision in PRECISIONS:
                cell = {"variant": variant, "precision": precision, "backend": backend}
                reason = backend_reason(backend, precision) or budget.reason()
                if reason is not None:
                    cells.append({**cell, "skipped": reason})
                    continue
                try:
                    row = measure_cell(variant, precision, backend, weights, model, metadata, iters, warmup)
                except Exception as exc:  # one failing backend must not hide the others' numbers
                    row = {**cell, "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                cells.append(row)
                if "engine" in row:
                    print(f"gpu-check: {variant} {precision} {backend}: engine {row['engine']['fps']:.1f} frames/s "
                          f"(p50 {row['engine']['p50_ms']:.2f} ms)", flush=True)
        model.to("cpu")
    return cells, weights_files


def first_outputs(weights: str, budget: Budget) -> dict[str, Any]:
    """Start-to-first-output of tiny fp16: graphs, compiled from an empty kernel cache, compiled again."""
    from rgbt_perception.bench.resident_check import first_output_seconds

    reports: dict[str, Any] = {}
    for name, backend in (("torch_graphs", "torch_graphs"), ("torch_compiled (cold cache)", "torch_compiled"),
                          ("torch_compiled (cached)", "torch_compiled")):
        reason = backend_reason(backend, "fp16") or budget.reason()
        reports[name] = {"error": f"skipped: {reason}"} if reason else first_output_seconds(weights, backend, "fp16",
                                                                                               "cuda")
    return reports


def agreement(data_root: str, weights: str, budget: Budget) -> tuple[list[dict[str, Any]], str]:
    """Mask agreement of every path and precision on the split's frames."""
    from rgbt_perception.bench.agreement import read_split
    from rgbt_perception.bench.resident_check import mask_agreement

    if budget.reason() or not os.path.isfile(os.path.join(data_root, "val.txt")):
        return [], f"not run: {budget.reason() or f'no val split in {data_root}'}"
    pairs = read_split(data_root, "val")
    candidates = [(b, p) for b in BACKENDS for p in PRECISIONS if backend_reason(b, p) is None]
    rows = mask_agreement(weights, pairs, "cuda", candidates)
    return rows, f"{len(pairs)} frames of split val of `{data_root}`, weights `{os.path.basename(weights)}`"


def node_over_dds(weights: str, backend: str, precision: str, budget: Budget, seconds: float) -> dict[str, Any]:
    """The real node on ``backend`` over DDS with the large-frames profile (see the module docstring)."""
    from rgbt_perception.bench.dds_delivery import DeliveryRun, run_case
    from rgbt_perception.bench.stats import summarize

    if budget.reason():
        return {"skipped": budget.reason()}
    log_dir = Path(tempfile.mkdtemp(prefix="gpu_check_dds_"))
    run = DeliveryRun(seconds, 30.0, 9.0, weights, "cuda", True, log_dir,
                      node_params=(f"backend:={backend}", f"precision:={precision}", "publish_color:=false"))
    try:
        row = run_case((720, 1280), "profile", run)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "logs": str(log_dir)}
    node = row.get("node", {})
    processed = int(node.get("frames_processed", 0) or 0)
    latency = summarize(row.pop("mask_latencies_ms", []))
    row["summary"] = {
        "backend": backend, "precision": precision, "rgb_published": row["published"].get("rgb"),
        "pairs_formed": node.get("pairs_formed"), "frames_processed": processed,
        "pairs_dropped": node.get("pairs_dropped"),
        "latency_p50_ms": latency and round(latency["p50_ms"], 1),
        "latency_p95_ms": latency and round(latency["p95_ms"], 1),
        "node_cpu_ms_per_frame": round(1e3 * row["node_cpu_s"] / processed, 1) if processed else None}
    row["logs"] = str(log_dir)
    return row


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "out" / "gpu-check"), help="parent of the results folder")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for steps 2-5 (default 420)")
    parser.add_argument("--iters", type=int, default=100, help="measured iterations per cell (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per cell (default 10)")
    parser.add_argument("--agreement-data", default=str(REPO / "runs" / "data" / "synthetic"),
                        help="MFNet-layout folder whose val split the agreement check runs on")
    parser.add_argument("--agreement-weights", default=str(DEMO_WEIGHTS),
                        help="trained weights of the agreement check (default: the shipped demo weights)")
    parser.add_argument("--dds-seconds", type=float, default=DDS_SECONDS, help="publishing time of the node check")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    return parser.parse_args(argv)


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    available, gpu = cuda_device()
    if not available:
        print(f"gpu-check: no CUDA GPU here: {gpu}. Nothing was measured; run `make gpu-check` on a machine "
              "with an NVIDIA GPU.", file=sys.stderr)
        return 2
    begun = time.perf_counter()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = Path(args.out) / f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{slug}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check: {gpu}; results go to {out}", flush=True)
    results: dict[str, Any] = {
        "gpu": gpu, "command": "make gpu-check " + " ".join(argv or sys.argv[1:]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {n: _version(n) for n in ("torch", "triton", "onnxruntime", "onnxruntime-gpu", "tensorrt", "timm")},
        "tests": {"status": "skipped"} if args.skip_tests else run_gpu_tests(out, timeout_s=150.0),
    }
    print(f"gpu-check: tests: {results['tests'].get('summary') or results['tests'].get('status')}", flush=True)
    budget = Budget(args.budget)
    with tempfile.TemporaryDirectory(prefix="rgbt-gpu-check-") as workdir:
        results["cells"], weights = measure_cells(workdir, budget, args.iters, args.warmup)
        results["first_output"] = first_outputs(weights["tiny"], budget)
        results["agreement"], results["agreement_source"] = agreement(args.agreement_data, args.agreement_weights,
                                                                      budget)
        from rgbt_perception.bench.resident_check import record_passing_paths

        order = record_passing_paths(gpu, results["cells"], results["agreement"]) if results["agreement"] else {}
        results["auto_order"] = order
        best = (order.get("fp16") or ["torch"])[0]
        results["node"] = node_over_dds(weights["tiny"], best, "fp16", budget, args.dds_seconds)
    results["seconds"] = time.perf_counter() - begun
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(render(results))
    print(render(results))
    print(f"gpu-check: results written to {out}")
    tests_ok = args.skip_tests or results["tests"].get("returncode") in (0, 5)
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
