"""Engines side by side, each in its own process, iterations interleaved: the speed-up ladder.

``rgbt-bench --ladder`` measures ``InferenceEngine.infer`` end to end on one fixed synthetic frame
for a list of contenders: optionally the engine of an older source tree (``--baseline-tree``, e.g.
the commit before this work unpacked with ``git archive``), then this checkout's engine with each
speed-up added in turn. Every contender runs in its own worker process
(:mod:`rgbt_perception.bench.engine_worker`) with the same thread count; the driver asks them for
one frame each in turn, rotating the order every iteration, so a shared machine's load changes hit
all of them alike. Reported per contender: wall p50/p95, frames/s, CPU time per frame, the engine's
stage medians, peak RSS, the gain over the previous step and over the first contender, and the
share of mask pixels equal to its tree's reference contender's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rgbt_perception.backends.selection import cpu_has_bf16
from rgbt_perception.bench.settings import BenchError
from rgbt_perception.bench.stats import summarize

WORKER_SOURCE = Path(__file__).with_name("engine_worker.py")
CHECKOUT = str(Path(__file__).resolve().parents[2])


@dataclass
class Contender:
    """One engine configuration; ``tree``: source tree (``None``: this checkout)."""

    name: str
    tree: str | None = None
    backend: str = "torch"
    merge: str = "default"
    precision: str = "fp32"


def ladder_contenders(baseline_tree: str | None, bf16: bool) -> list[Contender]:
    """The steps of the CPU ladder, each on top of the previous one (bf16 as a branch off torch)."""
    steps = []
    if baseline_tree:
        steps.append(Contender("engine at the baseline tree", tree=baseline_tree))
    steps += [
        Contender("torch, LoRA unmerged (two trunk passes)", merge="off"),
        Contender("+ LoRA merged per modality", merge="per_camera"),
        Contender("+ one trunk pass for both cameras", merge="batched"),
        Contender("onnxruntime (merged, one pass, NumPy post-processing)", backend="onnxruntime"),
    ]
    if bf16:
        steps.append(Contender("torch engine (merged, pass per camera on CPU) + bf16", precision="bf16"))
    return steps


class Worker:
    """A worker process and its line protocol."""

    def __init__(self, contender: Contender, config: dict[str, Any], threads: int, log_path: Path) -> None:
        tree = contender.tree or CHECKOUT
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p))
        self.contender = contender
        self._log = open(log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-c", WORKER_SOURCE.read_text(), json.dumps(config)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, env=env, cwd=tree)
        self.ready = self._read(f"start ({log_path})")

    def _read(self, what: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self._log.flush()
            raise BenchError(f"worker {self.contender.name!r} exited during {what}")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read(command)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self._log.close()


@dataclass
class LadderRun:
    """What every contender of a ladder runs: the frame, the network input, iterations, threads, variant."""

    frame_size: Sequence[int] = (480, 640)
    input_size: Sequence[int] = (480, 640)
    iters: int = 20
    warmup: int = 3
    threads: int = 1
    variant: str = "micro"
    seed: int = 0


def run_ladder(contenders: Sequence[Contender], workdir: str, run: LadderRun | None = None) -> dict[str, Any]:
    """Measure ``contenders`` interleaved; returns JSON-ready results (see the module docstring)."""
    run = run or LadderRun()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    workers: list[Worker] = []
    results: dict[str, Any] = {"frame_size": list(run.frame_size), "input_size": list(run.input_size),
                               "threads": run.threads, "variant": run.variant,
                               "load_average_start": [round(v, 2) for v in os.getloadavg()],
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "contenders": []}
    try:
        workers += _start_workers(contenders, work, run)
        samples: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(workers))}
        for iteration in range(run.warmup + run.iters):
            shift = iteration % len(workers)
            for index in list(range(shift, len(workers))) + list(range(shift)):
                answer = workers[index].ask("run")
                if iteration >= run.warmup:
                    samples[index].append(answer)
        results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        references: dict[str, np.ndarray] = {}
        for index, worker in enumerate(workers):
            results["contenders"].append(_contender_row(worker, samples[index], work / f"mask_{index}.npy",
                                                        references))
    finally:
        for worker in workers:
            worker.stop()
    first = results["contenders"][0]
    previous = None
    for row in results["contenders"]:
        row["gain_over_first"] = first["wall"]["p50_ms"] / row["wall"]["p50_ms"]
        row["cpu_gain_over_first"] = first["cpu_ms_per_frame"] / row["cpu_ms_per_frame"]
        row["gain_over_previous"] = None if previous is None else previous["wall"]["p50_ms"] / row["wall"]["p50_ms"]
        previous = row
    return results


def _start_workers(contenders: Sequence[Contender], work: Path, run: LadderRun) -> list[Worker]:
    """One worker per contender; the first contender of each source tree writes that tree's weights file."""
    built: dict[str, str] = {}
    workers: list[Worker] = []
    try:
        for index, contender in enumerate(contenders):
            tree_key = contender.tree or "checkout"
            weights = built.get(tree_key) or str(work / f"{run.variant}_{len(built)}.safetensors")
            config = {"weights": weights, "build": tree_key not in built, "variant": run.variant,
                      "input_size": list(run.input_size), "seed": run.seed, "frame_size": list(run.frame_size),
                      "backend": contender.backend, "merge": contender.merge, "precision": contender.precision,
                      "threads": run.threads, "random_adapters": True}
            workers.append(Worker(contender, config, run.threads, work / f"worker_{index}.log"))
            built[tree_key] = weights
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def _contender_row(worker: Worker, samples: list[dict[str, Any]], mask_path: Path,
                   references: dict[str, np.ndarray]) -> dict[str, Any]:
    """One contender's results; its mask is compared with the first mask of its source tree."""
    worker.ask(f"mask {mask_path}")
    mask = np.load(mask_path)
    reference = references.setdefault(worker.contender.tree or "checkout", mask)
    return {
        **asdict(worker.contender),
        "engine_class": worker.ready.get("engine"),
        "setup_s": worker.ready.get("setup_s"),
        "wall": summarize([s["wall_ms"] for s in samples]),
        "cpu_ms_per_frame": float(np.mean([s["cpu_ms"] for s in samples])),
        "stages_p50_ms": {name: float(np.median([s["stages"][name] for s in samples]))
                          for name in samples[0]["stages"]},
        "memory": worker.ask("memory"),
        "mask_agreement_with_tree_reference": float((mask == reference).mean())
        if mask.shape == reference.shape else None,
    }


def render_ladder(results: dict[str, Any]) -> str:
    """The ladder as a Markdown table."""
    (in_h, in_w), (frame_h, frame_w) = results["input_size"], results["frame_size"]
    lines = [
        f"Engine end to end, {results['variant']}, network input {in_h}x{in_w}, "
        f"frames {frame_h}x{frame_w}, {results['threads']} thread(s), "
        f"{results['contenders'][0]['wall']['count']} interleaved iterations per contender; load average "
        f"{results['load_average_start']} at the start, {results.get('load_average_end')} at the end.",
        "",
        "| step | p50 / p95 ms | frames/s | CPU ms/frame | pre / fwd / post ms | gain vs previous | gain vs first "
        "(wall, CPU) | masks = reference | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["contenders"]:
        wall, stages = row["wall"], row["stages_p50_ms"]
        previous = "–" if row["gain_over_previous"] is None else f"{row['gain_over_previous']:.2f}x"
        agreement = "–" if row["mask_agreement_with_tree_reference"] is None else \
            f"{100 * row['mask_agreement_with_tree_reference']:.3f} %"
        lines.append(
            f"| {row['name']} | {wall['p50_ms']:.1f} / {wall['p95_ms']:.1f} | {wall['fps']:.2f} | "
            f"{row['cpu_ms_per_frame']:.1f} | {stages['preprocess']:.1f} / {stages['forward']:.1f} / "
            f"{stages['postprocess']:.1f} | {previous} | {row['gain_over_first']:.2f}x, "
            f"{row['cpu_gain_over_first']:.2f}x | {agreement} | {row['memory']['peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def run_ladder_command(settings: Any, command: str, json_path: str | None) -> int:
    """``rgbt-bench --ladder``: run, print the table, write the JSON; 0 on success."""
    import tempfile

    from rgbt_perception.bench.settings import network_input_size

    if settings.device != "cpu":
        raise BenchError("--ladder measures the CPU engine (--device cpu); on a GPU use rgbt-bench --backend")
    contenders = ladder_contenders(settings.baseline_tree, cpu_has_bf16())
    with tempfile.TemporaryDirectory(prefix="rgbt-ladder-") as workdir:
        run = LadderRun(settings.size, network_input_size(settings.size), settings.iters, settings.warmup,
                        settings.threads or 1, settings.variants[0], settings.seed)
        results = run_ladder(contenders, workdir, run)
    results["command"] = command
    results["bf16_cpu"] = cpu_has_bf16()
    print(render_ladder(results), end="")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"results written to {json_path}")
    return 0
