"""The ``tensorrt`` backend: :class:`TensorRTEngine` runs the cached fp32 ONNX graph compiled into a TensorRT
engine (fp32, fp16 or bf16).

The engine (``.plan``) is cached beside the graph, keyed by precision, GPU model and TensorRT
version (a plan only runs on the GPU and TensorRT release it was built for). Input and output
buffers are torch CUDA tensors, and the class mask is computed on the GPU (bilinear upsampling and
argmax, as the torch backend does), so only the uint8 mask and the small box tensors come back to
the host. Needs the ``tensorrt`` package, torch with CUDA, and a CUDA GPU; none is imported before a
runner is created.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rgbt_perception.backends.base import require_finite
from rgbt_perception.backends.onnx_cache import CachedGraph
from rgbt_perception.backends.onnx_engine import OnnxEngine
from rgbt_perception.backends.selection import BackendError

WORKSPACE_BYTES = 4 << 30


def plan_path(graph: CachedGraph, precision: str, gpu_name: str, trt_version: str) -> Path:
    """``<graph>.<precision>.<gpu>.trt<version>.plan`` beside the graph."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return graph.onnx_path.with_suffix(f".{precision}.{gpu}.trt{trt_version}.plan")


def build_plan(onnx_path: Path, precision: str, out: Path, logger: Any) -> bytes:
    """Parse the ONNX graph and build a serialized engine; written to ``out`` and returned."""
    import tensorrt as trt

    from rgbt_perception.io.files import atomic_path

    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        if not hasattr(trt.BuilderFlag, "BF16"):
            raise BackendError(f"TensorRT {trt.__version__} has no bf16 builder flag; use fp16")
        config.set_flag(trt.BuilderFlag.BF16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {str(onnx_path)!r} ({precision})")
    data = bytes(serialized)
    with atomic_path(out, suffix=".plan.tmp") as tmp:
        Path(tmp).write_bytes(data)
    return data


class TensorRTRunner:
    """Runs the TensorRT engine of one cached graph on ``cuda:device_index``.

    ``run(rgb, thermal, present)`` copies the host inputs into the engine's input buffers, enqueues the
    engine on torch's current stream and returns ``{output name: CUDA tensor}`` (valid until the next run).
    """

    name = "tensorrt"

    def __init__(self, graph: CachedGraph, device_index: int = 0, precision: str = "fp32", log: Any = None) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA device; none is available")
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        logger = trt.Logger(trt.Logger.WARNING)
        path = plan_path(graph, precision, torch.cuda.get_device_name(self.device), trt.__version__)
        with torch.cuda.device(self.device):
            if path.is_file():
                data = path.read_bytes()
            else:
                if log is not None:
                    log(f"building the TensorRT engine {str(path)!r} (once per graph, precision and GPU)")
                data = build_plan(graph.onnx_path, precision, path, logger)
            self.runtime = trt.Runtime(logger)
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise BackendError(f"TensorRT could not load {str(path)!r} (delete it to rebuild)")
            self.context = self.engine.create_execution_context()
            self.buffers: dict[str, Any] = {}
            self.inputs: list[str] = []
            self.outputs: list[str] = []
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                shape = tuple(self.engine.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, self.buffers[name].data_ptr())
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                (self.inputs if is_input else self.outputs).append(name)
        self.plan_path = path
        self.graph = graph

    def run(self, rgb: np.ndarray, thermal: np.ndarray, present: np.ndarray) -> dict[str, Any]:
        torch = self.torch
        for name, array in (("rgb", rgb), ("thermal", thermal), ("present", present)):
            self.buffers[name].copy_(torch.from_numpy(np.ascontiguousarray(array)), non_blocking=False)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return {name: self.buffers[name] for name in self.outputs}

    def semantic_mask(self, logits: Any, size: Sequence[int]) -> np.ndarray:
        """``1,K,h,w`` CUDA logits -> ``H,W`` uint8 mask on the host (upsampled and reduced on the GPU)."""
        import torch.nn.functional as F

        require_finite(bool(self.torch.isfinite(logits).all()), "class scores")
        upsampled = F.interpolate(logits.float(), size=tuple(int(v) for v in size), mode="bilinear",
                                  align_corners=False)
        return upsampled.max(dim=1).indices[0].to(self.torch.uint8).cpu().numpy()

    def to_host(self, tensor: Any) -> np.ndarray:
        return tensor.float().cpu().numpy()

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def release(self) -> None:
        self.context = None
        self.engine = None
        self.buffers = {}
        self.torch.cuda.empty_cache()


class TensorRTEngine(OnnxEngine):
    """The engine on TensorRT (see :class:`~rgbt_perception.backends.onnx_engine.OnnxEngine` for the arguments;
    ``threads`` is not used). The graph is exported in fp32 and TensorRT builds the requested precision."""

    backend = "tensorrt"
    graph_precision = staticmethod(lambda precision: "fp32")

    def _make_runner(self, graph: CachedGraph, device_type: str, device_index: int, threads: int | None,
                     log: Callable[[str], None] | None) -> TensorRTRunner:
        return TensorRTRunner(graph, device_index, self.precision, log)
