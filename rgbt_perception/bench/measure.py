"""The measurements of one run: model, engine and node interleaved per variant, the scaling
table, the speed-up steps with the trunk probes, and the ONNX export."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import numpy as np

from rgbt_perception.backends.selection import resolve_backend
from rgbt_perception.bench.round_trip import NodeRoundTrip
from rgbt_perception.bench.runners import (
    CallAsModel,
    ForwardOptions,
    ForwardRunner,
    GraphRunner,
    gpu_peak_mb,
    reset_gpu_peak,
    resized_model,
    synthetic_pair,
)
from rgbt_perception.bench.settings import BenchError, BenchSettings, network_input_size
from rgbt_perception.bench.stats import interleave, peak_rss_mb, process_cpu_s, ratio, summarize


def progress_bar(total: int, description: str) -> Any:
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="it", leave=False, file=sys.stderr,
                disable=not sys.stderr.isatty())


def measure_variant(
    settings: BenchSettings,
    variant: str,
    model: Any,
    metadata: Any,
    workdir: str,
) -> dict[str, Any]:
    """(1) bare forward, (2) engine, and for the node variant (3) the node, interleaved."""
    from rgbt_perception.model import count_parameters

    frame_size = settings.size
    rgb, thermal = synthetic_pair(frame_size, settings.seed)
    total, trainable = count_parameters(model)
    reset_gpu_peak(settings.device)

    weights_path = os.path.join(workdir, f"{variant}.safetensors")
    backend = resolve_backend(settings.backend, settings.device, settings.precision)
    with_node = settings.node and variant == settings.node_variant
    if with_node or backend != "torch":
        _write_weights(settings, backend, weights_path, model, metadata)
    node, node_error = _start_node(settings, variant, weights_path, workdir) if with_node else (None, None)
    options = ForwardOptions(settings.device, settings.precision, settings.channels_last, settings.compile,
                             settings.cuda_graphs)
    engine, runner = _build_engine(settings, backend, options, (model, metadata, weights_path), (rgb, thermal))

    engine_timer = EngineTimer(engine, rgb, thermal)
    # CPU time next to wall time: on a machine shared with other work the CPU seconds a frame
    # costs are far steadier than its wall time (with --threads 1 they do not depend on load).
    cpu_ms: dict[str, list[float]] = {"model": [], "engine": [], "node": []}
    measures: dict[str, Callable[[], float | None]] = {
        "model": with_cpu_time(cpu_ms["model"], runner.timed, time.process_time),
        "engine": with_cpu_time(cpu_ms["engine"], engine_timer, time.process_time),
    }
    node_timer = None
    if node is not None:
        node_timer = NodeTimer(node, rgb, thermal)
        node_pid = node.pid
        measures["node"] = with_cpu_time(cpu_ms["node"], node_timer, lambda: process_cpu_s(node_pid))
    samples, node_facts = _interleave_variant(settings, f"{variant} {frame_size[0]}x{frame_size[1]}", measures,
                                              node_timer, (rgb, thermal))
    if node_timer is not None:
        node_error = node_timer.error

    result: dict[str, Any] = {
        "variant": variant,
        "frame_size": list(frame_size),
        "input_size": list(engine.input_size),
        "parameters_total": total,
        "parameters_trainable": trainable,
        "backend": backend,
        "forward_options": options.label() if backend == "torch" else f"{backend} {settings.precision}",
        "forward_setup_s": runner.setup_s,
        **_timing_summary(samples, engine_timer, cpu_ms),
        "node_lost": node.lost if node is not None else None,
        "node_error": node_error,
        **node_facts,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": gpu_peak_mb(settings.device),
    }
    engine.release()
    return result


def _write_weights(settings: BenchSettings, backend: str, weights_path: str, model: Any, metadata: Any) -> None:
    """The weights file the node or a non-torch engine loads (with its ONNX graph for such a backend)."""
    from rgbt_perception.io.weights import save_weights

    save_weights(weights_path, model, metadata)
    if backend != "torch":
        from rgbt_perception.backends.onnx_graph import ensure_graph

        # Built here, where torch is loaded, so the node finds it cached instead of building it at start.
        ensure_graph(weights_path, metadata.input_size, "fp32" if backend == "tensorrt" else settings.precision,
                     device=settings.device)


def _start_node(settings: BenchSettings, variant: str, weights_path: str,
                workdir: str) -> tuple[NodeRoundTrip | None, str | None]:
    """The node under test, started; or ``None`` and why it did not start (model and engine still run)."""
    import torch

    node = NodeRoundTrip(weights_path, settings.device, settings.precision,
                         settings.threads or torch.get_num_threads(), settings.node_timeout_s,
                         os.path.join(workdir, f"node_{variant}.log"), backend=settings.backend)
    try:
        node.start()
    except BenchError as exc:
        node.stop()
        return None, str(exc)
    return node, None


def _build_engine(settings: BenchSettings, backend: str, options: ForwardOptions, source: tuple[Any, Any, str],
                  pair: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    """The engine (2) and the bare-network runner (1) of one variant, running the same network.

    ``source``: ``(model, metadata, weights_path)``; torch runs the in-memory model, another
    backend loads the weights file. ``pair``: the synthetic ``(rgb, thermal)`` frame.
    """
    model, metadata, weights_path = source
    rgb, thermal = pair
    if backend != "torch":
        from rgbt_perception.backends.factory import create_engine

        engine = create_engine(weights_path, device=settings.device, precision=settings.precision, backend=backend,
                               threads=settings.threads or None)
        return engine, GraphRunner(engine, rgb, thermal)
    from rgbt_perception.backends.torch_engine import InferenceEngine
    from rgbt_perception.core.preprocess import to_model_inputs

    engine = InferenceEngine.from_model(model, metadata, device=settings.device, precision=settings.precision)
    rgb_in, thermal_in = to_model_inputs(rgb, thermal, engine.input_size, engine.scaling)
    runner = ForwardRunner(engine.model, options, rgb_in, thermal_in)
    if options.compile or options.cuda_graphs:
        # The engine must run what the bare measurement runs, or the ratio compares two models.
        engine.model = CallAsModel(runner, engine.model)
    return engine, runner


class EngineTimer:
    """One ``engine.infer`` per call: returns its wall time (ms), keeps the engine's stage timings
    and the number of boxes per frame."""

    def __init__(self, engine: Any, rgb: np.ndarray, thermal: np.ndarray) -> None:
        self.engine, self.rgb, self.thermal = engine, rgb, thermal
        self.stages: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": [], "total": []}
        self.detections: list[int] = []

    def __call__(self) -> float:
        started = time.perf_counter()
        result = self.engine.infer(self.rgb, self.thermal)
        elapsed = (time.perf_counter() - started) * 1e3
        for name in self.stages:
            self.stages[name].append(result.timings_ms[name])
        self.detections.append(len(result.detections))
        return elapsed


class NodeTimer:
    """One round trip through the node per call; a node that dies ends the node's samples (``None``,
    ``error`` says why) and keeps the model and engine numbers."""

    def __init__(self, node: NodeRoundTrip, rgb: np.ndarray, thermal: np.ndarray) -> None:
        self.node, self.rgb, self.thermal = node, rgb, thermal
        self.error: str | None = None

    def __call__(self) -> float | None:
        if self.error is not None:
            return None
        try:
            return self.node.round_trip(self.rgb, self.thermal)
        except BenchError as exc:
            self.error = str(exc)
            return None


def with_cpu_time(cpu_ms: list[float], measure: Callable[[], float | None],
                  clock: Callable[[], float]) -> Callable[[], float | None]:
    """``measure``, also appending the ``clock`` seconds each measured call took (as ms) to ``cpu_ms``."""
    def run() -> float | None:
        before = clock()
        wall = measure()
        if wall is not None:
            cpu_ms.append((clock() - before) * 1e3)
        return wall
    return run


def _interleave_variant(settings: BenchSettings, description: str, measures: dict[str, Callable[[], float | None]],
                        node_timer: NodeTimer | None,
                        pair: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The interleaved samples, then the node's memory and soak (while it is alive) and its stop."""
    node = node_timer.node if node_timer is not None else None
    node_memory = node_soak = None
    with progress_bar(settings.warmup + settings.iters, description) as bar:
        try:
            samples = interleave(measures, settings.iters, settings.warmup, settings.variant_budget_s, bar)
            if node is not None and node_timer.error is None:
                node_memory = node.memory()
                if settings.soak_s > 0:
                    node_soak = node.soak(*pair, settings.soak_s)
        finally:
            node_rss = node.stop() if node is not None else None
    return samples, {"node_peak_rss_mb": node_rss, "node_memory": node_memory, "node_soak": node_soak}


def _timing_summary(samples: dict[str, list[float]], engine_timer: EngineTimer,
                    cpu_ms: dict[str, list[float]]) -> dict[str, Any]:
    """Model, engine and node statistics, their ratios and CPU time per frame (of the measured calls)."""
    measured = len(samples["model"])
    cpu_mean_ms = {
        name: float(np.mean(values[-len(samples[name]):]))
        for name, values in cpu_ms.items() if name in samples and samples[name]
    }
    summary_model = summarize(samples["model"])
    summary_engine = summarize(samples["engine"])
    summary_node = summarize(samples.get("node", []))
    detections = engine_timer.detections
    return {
        "model": summary_model,
        "engine": summary_engine,
        "engine_stages_p50_ms": {
            name: float(np.percentile(values[-measured:], 50))
            for name, values in engine_timer.stages.items() if values
        },
        "engine_over_model": ratio(summary_engine, summary_model),
        "engine_over_model_min": ratio(summary_engine, summary_model, "min_ms"),
        "detections_per_frame": float(np.mean(detections)) if detections else 0.0,
        "node": summary_node,
        "node_over_model": ratio(summary_node, summary_model),
        "node_over_model_min": ratio(summary_node, summary_model, "min_ms"),
        "cpu_ms_per_frame": cpu_mean_ms,
        "cpu_engine_over_model": (cpu_mean_ms["engine"] / cpu_mean_ms["model"]) if "engine" in cpu_mean_ms else None,
        "cpu_node_over_model": (cpu_mean_ms["node"] / cpu_mean_ms["model"]) if "node" in cpu_mean_ms else None,
    }


def measure_scaling(
    settings: BenchSettings,
    models: dict[str, tuple[Any, Any]],
    rows: list[dict[str, Any]],
    cell_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Bare forward p50 per (variant, frame size), appended to ``rows`` cell by cell (then
    ``cell_done()``); network input = frame size rounded up to multiples of 32."""
    from rgbt_perception.core.preprocess import to_model_inputs

    cells = [(v, s) for v in models for s in settings.scaling_sizes]
    with progress_bar(len(cells), "scaling") as bar:
        for variant, frame_size in cells:
            model, metadata = models[variant]
            input_size = network_input_size(frame_size)
            sized, sized_metadata = resized_model(model, metadata, input_size)
            rgb, thermal = synthetic_pair(frame_size, settings.seed)
            rgb_in, thermal_in = to_model_inputs(rgb, thermal, input_size, sized_metadata.scaling)
            runner = ForwardRunner(sized.to(settings.device), ForwardOptions(settings.device, settings.precision),
                                   rgb_in, thermal_in)
            reset_gpu_peak(settings.device)
            samples = interleave({"model": runner.timed}, settings.scaling_iters, 1, settings.variant_budget_s,
                                 min_iters=1)
            rows.append({
                "variant": variant,
                "frame_size": list(frame_size),
                "input_size": list(input_size),
                "model": summarize(samples["model"]),
                "peak_gpu_mb": gpu_peak_mb(settings.device),
            })
            sized.to("cpu")
            bar.update(1)
            if cell_done is not None:
                cell_done()
    return rows


def measure_steps(settings: BenchSettings, model: Any, metadata: Any) -> list[dict[str, Any]]:
    """Bare-forward cost as speed-ups are switched on one after another, with the max abs
    difference of the semantic logits against the fp32 baseline; plus the batched-modality
    trunk probe."""
    import copy
    import dataclasses

    import torch

    from rgbt_perception.core.preprocess import to_model_inputs

    cuda = settings.device.startswith("cuda")
    low_precision = settings.precision if settings.precision != "fp32" else ("fp16" if cuda else "bf16")
    rgb, thermal = synthetic_pair(settings.size, settings.seed)
    rgb_in, thermal_in = to_model_inputs(rgb, thermal, model.cfg.input_size, metadata.scaling)
    ladder: list[tuple[str, ForwardOptions]] = [("fp32 eager (baseline)", ForwardOptions(settings.device))]
    current = ForwardOptions(settings.device)
    for step in settings.steps:
        if step == "cuda_graphs" and not cuda:
            continue
        current = dataclasses.replace(current, **{
            "channels_last": {"channels_last": True},
            "autocast": {"precision": low_precision},
            "compile": {"compile": True},
            "cuda_graphs": {"cuda_graphs": True},
        }[step])
        label = {"channels_last": "+ channels_last", "autocast": f"+ autocast {low_precision}",
                 "compile": "+ torch.compile", "cuda_graphs": "+ CUDA graphs"}[step]
        ladder.append((label, current))

    # Every step gets its own copy of the network (channels_last converts in place) and all
    # steps are measured interleaved, so load changes during the run hit every step alike.
    rows: list[dict[str, Any]] = []
    runners: dict[str, ForwardRunner] = {}
    for label, options in ladder:
        row: dict[str, Any] = {"step": label, "options": options.label()}
        try:
            runners[label] = ForwardRunner(copy.deepcopy(model).to(settings.device), options, rgb_in, thermal_in)
            row["setup_s"] = runners[label].setup_s
        except Exception as exc:  # a step that fails here (e.g. no compiler) is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
    with progress_bar(settings.warmup + settings.iters, "steps") as bar:
        samples = interleave({label: runner.timed for label, runner in runners.items()}, settings.iters,
                             settings.warmup, settings.variant_budget_s * max(1, len(runners)) / 2, bar)
    reference = None
    previous_ms = None
    for row in rows:
        if "error" in row:
            continue
        runner = runners[row["step"]]
        stats = summarize(samples[row["step"]])
        semantic = runner()["semantic"].float().cpu()
        reference = semantic if reference is None else reference
        row.update(model=stats, semantic_max_abs_diff=float((semantic - reference).abs().max()),
                   gain_over_previous=(previous_ms / stats["p50_ms"]) if previous_ms else None)
        previous_ms = stats["p50_ms"]
    runners.clear()
    if any(options.compile for _, options in ladder):
        torch._dynamo.reset()  # drop the compiled graphs
    rows.extend(measure_trunk_probes(settings, copy.deepcopy(model).to(settings.device), rgb_in))
    return rows


def measure_trunk_probes(settings: BenchSettings, model: Any, rgb_in: Any) -> list[dict[str, Any]]:
    """Two trunk-level probes (fp32, one modality's input) that bound speed-ups the network's
    structure does not allow as it is:

    - batching both modalities through the shared trunk: one call with batch 2 against two
      calls with batch 1 (adapters off; the network cannot batch them because each modality
      runs the trunk with its own LoRA adapter and peft cannot mix adapters in one batch);
    - merging LoRA: the trunk with the RGB adapter against the trunk with adapters off, which
      is what a trunk with the adapter merged into its weights costs.
    """
    import torch

    device = torch.device(settings.device)
    single = rgb_in.to(device)
    double = torch.cat([single, single])
    encoder = model.encoder

    def trunk(x: Any, modality: str | None) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            with torch.inference_mode():
                encoder(x, modality)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return (time.perf_counter() - started) * 1e3
        return run

    samples = interleave(
        {"single": trunk(single, None), "double": trunk(double, None), "adapter": trunk(single, "rgb")},
        settings.iters, settings.warmup, settings.variant_budget_s,
    )
    single_stats = summarize(samples["single"])
    two_calls = summarize([2 * v for v in samples["single"]])
    one_batch = summarize(samples["double"])
    adapter = summarize(samples["adapter"])
    return [
        {
            "step": "probe: trunk, 2 modalities as 1 call with batch 2 (vs 2 calls)",
            "options": "fp32, adapters off",
            "model": one_batch,
            "baseline": two_calls,
            "gain_over_previous": two_calls["p50_ms"] / one_batch["p50_ms"],
        },
        {
            "step": "probe: trunk with LoRA merged (adapters off, vs RGB adapter on)",
            "options": "fp32",
            "model": single_stats,
            "baseline": adapter,
            "gain_over_previous": adapter["p50_ms"] / single_stats["p50_ms"],
        },
    ]


def measure_onnx(settings: BenchSettings, model: Any, path: str) -> dict[str, Any]:
    """Export to ONNX, check parity, time onnxruntime against the PyTorch forward on the CPU."""
    import torch

    from rgbt_perception.model.onnx_export import example_inputs, export_onnx, onnx_session

    started = time.perf_counter()
    export = export_onnx(model, path, model.cfg.input_size)
    export_s = time.perf_counter() - started
    rgb, thermal = example_inputs(model.cfg.input_size)
    session = onnx_session(path, threads=settings.threads or torch.get_num_threads())
    feeds = {"rgb": rgb.numpy(), "thermal": thermal.numpy()}
    cpu_model = model.to("cpu")
    runner = ForwardRunner(cpu_model, ForwardOptions("cpu"), rgb, thermal)

    def ort_once() -> float:
        begun = time.perf_counter()
        session.run(None, feeds)
        return (time.perf_counter() - begun) * 1e3

    samples = interleave({"torch": runner.timed, "onnxruntime": ort_once}, settings.iters, settings.warmup,
                         settings.variant_budget_s)
    return {
        **export.to_dict(),
        "variant": model.cfg.variant,
        "export_s": export_s,
        "torch_cpu": summarize(samples["torch"]),
        "onnxruntime_cpu": summarize(samples["onnxruntime"]),
    }
