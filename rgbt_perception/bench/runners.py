"""What the benchmark runs: synthetic frames, random-weight networks and the bare forward pass
with its optional speed-ups (channels_last, autocast, torch.compile, CUDA graphs)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from rgbt_perception.bench.engine_worker import synthetic_pair  # noqa: F401  (also run as a script: one copy)
from rgbt_perception.bench.settings import BenchError


def build_model(variant: str, input_size: Sequence[int], seed: int) -> tuple[Any, Any]:
    """A randomly initialised ``RGBTNet`` (eval mode) and its weights metadata."""
    import torch

    from rgbt_perception.core.classes import get_class_set
    from rgbt_perception.io.weights import WeightsMetadata
    from rgbt_perception.model import ModelConfig, RGBTNet

    class_set = get_class_set("synthetic")
    cfg = ModelConfig(variant=variant, num_classes=len(class_set.names), input_size=tuple(input_size))
    torch.manual_seed(seed)
    model = RGBTNet(cfg).eval()
    metadata = WeightsMetadata.for_model(cfg, class_set, provenance={"dataset": "none (random weights, rgbt-bench)"})
    return model, metadata


def resized_model(model: Any, metadata: Any, input_size: Sequence[int]) -> tuple[Any, Any]:
    """The same weights with another ``input_size`` (the network itself is size-agnostic)."""
    import dataclasses

    from rgbt_perception.model import RGBTNet

    cfg = dataclasses.replace(model.cfg, input_size=tuple(input_size))
    if cfg == model.cfg:
        return model, metadata
    resized = RGBTNet(cfg).eval()
    resized.load_state_dict(model.state_dict())
    new_metadata = dataclasses.replace(metadata, model=cfg.to_dict(), input_size=tuple(input_size))
    return resized, new_metadata


@dataclass
class ForwardOptions:
    """How the network runs: the engine's way (fp32/autocast) plus optional speed-ups."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def label(self) -> str:
        parts = [self.precision]
        parts += [name for name in ("channels_last", "compile", "cuda_graphs") if getattr(self, name)]
        return "+".join(parts)


class ForwardRunner:
    """Calls ``model(rgb, thermal)`` as the engine's forward stage does (inference mode,
    autocast at the engine's precision), optionally in channels_last, compiled, or replayed as
    a CUDA graph.

    Args:
        model: the ``RGBTNet``; already on ``options.device``. channels_last converts it in place.
        rgb, thermal: ``1,3,H,W`` / ``1,1,H,W`` float32 network inputs.
    """

    def __init__(self, model: Any, options: ForwardOptions, rgb: Any, thermal: Any) -> None:
        import torch

        from rgbt_perception.core.device import check_precision, resolve_device

        self.device = resolve_device(options.device)
        self.dtype = check_precision(options.precision, self.device)
        if options.cuda_graphs and self.device.type != "cuda":
            raise BenchError("CUDA graphs need a cuda device")
        self.options = options
        self.rgb = rgb.to(self.device)
        self.thermal = thermal.to(self.device)
        if options.channels_last:
            model.to(memory_format=torch.channels_last)
            self.rgb = self.rgb.contiguous(memory_format=torch.channels_last)
            self.thermal = self.thermal.contiguous(memory_format=torch.channels_last)
        self.model = model
        self._call: Callable[[], Any] = self._eager
        self._compiled = None
        if options.compile:
            # reduce-overhead is inductor's CUDA-graph mode: with --cuda-graphs it replaces the
            # manual capture, which cannot wrap compiled code.
            mode = "reduce-overhead" if options.cuda_graphs else "default"
            self._compiled = torch.compile(model, mode=mode, dynamic=False)
            self._call = self._run_compiled
        self._graph = None
        self._graph_outputs = None
        self.setup_s = 0.0
        started = time.perf_counter()
        if options.cuda_graphs and not options.compile:
            self._capture_graph()
        elif options.compile:
            for _ in range(2):  # compilation, then the first compiled run
                self()
        self.setup_s = time.perf_counter() - started

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _eager(self) -> Any:
        import torch

        with torch.inference_mode(), self._autocast():
            return self.model(self.rgb, self.thermal)

    def _run_compiled(self) -> Any:
        import torch

        with torch.inference_mode(), self._autocast():
            return self._compiled(self.rgb, self.thermal)

    def _capture_graph(self) -> None:
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph (cuDNN/cuBLAS autotuning, allocations)
                with torch.no_grad(), self._autocast():
                    self.model(self.rgb, self.thermal)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph), self._autocast():
            outputs = self.model(self.rgb, self.thermal)
        self._graph, self._graph_outputs = graph, outputs
        self._call = self._replay

    def _replay(self) -> Any:
        self._graph.replay()
        return self._graph_outputs

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self) -> Any:
        return self._call()

    def timed(self) -> float:
        """One forward, ms (device synchronised)."""
        started = time.perf_counter()
        self()
        self.synchronize()
        return (time.perf_counter() - started) * 1e3


def reset_gpu_peak(device: str) -> None:
    """Start a new peak of GPU memory (nothing on the CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb(device: str) -> float | None:
    """Peak GPU memory allocated since :func:`reset_gpu_peak`, MiB; ``None`` on the CPU."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


class CallAsModel:
    """Stands in for ``engine.model`` so the engine's forward runs the compiled / graphed call.

    The engine calls ``model(rgb, thermal)`` with tensors equal to the runner's inputs (same
    frame, same preprocessing) and reads ``model.box_head`` for decoding.
    """

    def __init__(self, runner: ForwardRunner, model: Any) -> None:
        self._runner = runner
        self._model = model

    def __call__(self, rgb: Any, thermal: Any) -> Any:
        self._runner.rgb.copy_(rgb)
        self._runner.thermal.copy_(thermal)
        return self._runner()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class GraphRunner:
    """The bare network of a non-torch engine (onnxruntime, TensorRT): one ``run`` of its cached graph
    on the frame's preprocessed arrays, both cameras present; ``timed()`` as :meth:`ForwardRunner.timed`."""

    def __init__(self, engine: Any, rgb: np.ndarray, thermal: np.ndarray) -> None:
        from rgbt_perception.core.preprocess import to_model_arrays

        self.runner = engine.runner
        self.rgb, self.thermal = to_model_arrays(rgb, thermal, engine.input_size, engine.scaling)
        self.present = np.ones((1, 2), dtype=bool)
        self.setup_s = 0.0

    def __call__(self) -> Any:
        return self.runner.run(self.rgb, self.thermal, self.present)

    def timed(self) -> float:
        started = time.perf_counter()
        self()
        self.runner.synchronize()
        return (time.perf_counter() - started) * 1e3
