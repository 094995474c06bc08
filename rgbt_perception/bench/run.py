"""One ``rgbt-bench`` run: every requested measurement in turn, and its outputs on disk."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from typing import Any, Callable

from rgbt_perception.bench.measure import measure_onnx, measure_scaling, measure_steps, measure_variant
from rgbt_perception.bench.render import SCALING_PLOT, evaluate_goals, plot_scaling, render_markdown, write_markdown
from rgbt_perception.bench.runners import build_model, resized_model
from rgbt_perception.bench.settings import BenchError, BenchSettings, network_input_size
from rgbt_perception.bench.stats import machine_description


def run(
    settings: BenchSettings, command: str, checkpoint: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every requested measurement; returns the JSON-ready results.

    ``checkpoint(results)`` is called after each phase (variant, steps, ONNX, scaling), so a
    long run that is stopped still leaves the finished parts behind.
    """

    def phase_done() -> None:
        results["goals"] = evaluate_goals(results)
        if checkpoint is not None:
            checkpoint(results)

    import torch

    from rgbt_perception.core.device import check_precision, resolve_device

    try:
        device = resolve_device(settings.device)
        check_precision(settings.precision, device)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    if settings.cuda_graphs and device.type != "cuda":
        raise BenchError("--cuda-graphs needs --device cuda")
    settings.device = str(device)
    if settings.threads:
        torch.set_num_threads(settings.threads)

    results: dict[str, Any] = {
        "command": command,
        "machine": machine_description(settings.device),
        "settings": {**asdict(settings), "size": list(settings.size)},
        "variants": [],
    }
    models: dict[str, tuple[Any, Any]] = {}
    input_size = network_input_size(settings.size)
    with tempfile.TemporaryDirectory(prefix="rgbt-bench-") as workdir:
        if settings.weights:
            from rgbt_perception.io.weights import load_weights

            model, metadata = load_weights(settings.weights)
            model, metadata = resized_model(model.eval(), metadata, input_size)
            models[model.cfg.variant] = (model, metadata)
            settings.node_variant = model.cfg.variant
        else:
            for variant in settings.variants:
                models[variant] = build_model(variant, input_size, settings.seed)
        for variant, (model, metadata) in models.items():
            results["variants"].append(measure_variant(settings, variant, model, metadata, workdir))
            model.to("cpu")
            phase_done()
        if settings.steps:
            model, metadata = models.get(settings.steps_variant) or build_model(
                settings.steps_variant, input_size, settings.seed)
            results["steps"] = measure_steps(settings, model, metadata)
            phase_done()
        if settings.export_onnx:
            model = next(iter(models.values()))[0]
            results["onnx"] = measure_onnx(settings, model, settings.export_onnx)
            phase_done()
        if settings.scaling:
            results["scaling"] = []
            measure_scaling(settings, models, results["scaling"], phase_done)
    results["goals"] = evaluate_goals(results)
    return results


def write_outputs(results: dict[str, Any], out: str | None, json_path: str | None) -> None:
    """Markdown section (+ scaling plot next to it) and JSON of the results so far."""
    if out and results.get("scaling"):
        plot_scaling(results["scaling"], os.path.join(os.path.dirname(os.path.abspath(out)), SCALING_PLOT))
        results["scaling_plot"] = SCALING_PLOT
    if out:
        write_markdown(out, render_markdown(results))
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
