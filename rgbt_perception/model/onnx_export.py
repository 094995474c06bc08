"""ONNX export of :class:`~rgbt_perception.model.network.RGBTNet` and its parity check.

The exported graph takes both modalities (``rgb: B,3,H,W`` and ``thermal: B,1,H,W``, float32 in
``[0, 1]``, the same tensors the inference engine feeds the network) and returns the semantic
logits ``B,K,H/4,W/4`` followed by every raw box-head tensor, named by their place in the
model's ``outputs["boxes"]`` structure (``boxes.0.cls`` ...).

Both LoRA adapters stay unmerged: the trunk is shared and the adapter is switched per modality
while the graph is traced, so the ONNX graph holds the frozen trunk weights once per call site
plus the low-rank factors, and its numbers equal PyTorch's. The TorchScript-based exporter
(``dynamo=False``) is used because it traces through peft's adapter switching and Hiera's
windowing without extra packages; the dynamo exporter needs ``onnxscript``.

TensorRT is not part of this module: an ``.onnx`` written here is what ``trtexec --onnx=``
consumes on a machine that has it.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import check_network_size

DEFAULT_OPSET = 17
INPUT_NAMES = ("rgb", "thermal")
SEMANTIC_OUTPUT = "semantic"


class OnnxExportError(RuntimeError):
    """Export or parity check failed; the message names the step and the cause."""


def flatten_outputs(value: Any, prefix: str) -> list[tuple[str, Tensor]]:
    """Flatten nested dicts / lists / tuples of tensors into ``[(dotted name, tensor), ...]``.

    Order follows dict insertion order and sequence order, so the same model always gives the
    same output names.
    """
    if isinstance(value, Tensor):
        return [(prefix, value)]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        raise OnnxExportError(f"model output {prefix!r} has type {type(value).__name__}, not a tensor")
    out: list[tuple[str, Tensor]] = []
    for key, item in items:
        out.extend(flatten_outputs(item, f"{prefix}.{key}"))
    return out


def nest_outputs(named: dict[str, Any], prefix: str) -> Any:
    """Inverse of :func:`flatten_outputs` for the names under ``prefix``.

    ``{"boxes.cls.0": a, "boxes.cls.1": b, "boxes.reg.0": c}`` with prefix ``"boxes"`` gives
    ``{"cls": [a, b], "reg": [c]}``, the structure ``box_head.decode`` takes (after
    ``torch.from_numpy`` of onnxruntime's arrays).
    """
    if prefix in named:
        return named[prefix]
    children: dict[str, dict[str, Any]] = {}
    for name, value in named.items():
        if name.startswith(prefix + "."):
            head, _, _ = name[len(prefix) + 1:].partition(".")
            children.setdefault(head, {})[name] = value
    if not children:
        raise KeyError(f"no output named {prefix!r} or below it")
    nested = {key: nest_outputs(group, f"{prefix}.{key}") for key, group in children.items()}
    if all(key.isdigit() for key in nested):
        return [nested[key] for key in sorted(nested, key=int)]
    return nested


class ExportableRGBTNet(nn.Module):
    """Positional, tensor-only wrapper: ``(rgb, thermal) -> (semantic, *box tensors)``.

    ``output_names`` is filled by :meth:`describe` from a reference forward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output_names: list[str] = []

    def _named_outputs(self, rgb: Tensor, thermal: Tensor) -> list[tuple[str, Tensor]]:
        outputs = self.model(rgb, thermal)
        if SEMANTIC_OUTPUT not in outputs or "boxes" not in outputs:
            raise OnnxExportError(f"model outputs {sorted(outputs)} lack 'semantic' or 'boxes'")
        return [(SEMANTIC_OUTPUT, outputs[SEMANTIC_OUTPUT])] + flatten_outputs(outputs["boxes"], "boxes")

    def describe(self, rgb: Tensor, thermal: Tensor) -> list[tuple[str, Tensor]]:
        """Run the model once and remember the output names; returns the named outputs."""
        named = self._named_outputs(rgb, thermal)
        self.output_names = [name for name, _ in named]
        return named

    def forward(self, rgb: Tensor, thermal: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensor for _, tensor in self._named_outputs(rgb, thermal))


@dataclass
class OnnxExportResult:
    """What :func:`export_onnx` wrote, and the parity of onnxruntime against PyTorch."""

    path: str
    input_size: tuple[int, int]
    opset: int
    output_names: list[str]
    file_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    @property
    def semantic_max_abs_diff(self) -> float:
        return self.max_abs_diff.get(SEMANTIC_OUTPUT, float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "input_size": list(self.input_size),
            "opset": self.opset,
            "output_names": list(self.output_names),
            "file_bytes": self.file_bytes,
            "max_abs_diff": dict(self.max_abs_diff),
        }


def example_inputs(input_size: Sequence[int], batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic ``(rgb B,3,H,W, thermal B,1,H,W)`` in ``[0, 1]`` for tracing and parity."""
    height, width = (int(v) for v in input_size)
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, height, width, generator=generator)
    thermal = torch.rand(batch, 1, height, width, generator=generator)
    return rgb, thermal


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> OnnxExportResult:
    """Export ``model`` (an ``RGBTNet``) to ``path`` with static shapes, both modalities.

    Args:
        model: the network; a CPU fp32 eval-mode copy of it is exported, the caller's module
            is left as it is.
        path: the ``.onnx`` file to write.
        input_size: ``(H, W)``, multiples of 32; defaults to ``model.cfg.input_size``.
        opset: ONNX opset, at least 17 (``LayerNormalization``).
        check: run the graph in onnxruntime on fixed inputs and fill ``max_abs_diff``.

    Raises:
        OnnxExportError: naming the failed step.
        ValueError: for an invalid ``input_size`` or ``opset``.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    if input_size is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None:
            raise ValueError("input_size is required for a model without .cfg")
        input_size = cfg.input_size
    height, width = check_network_size(input_size)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)

    model = copy.deepcopy(model).to("cpu").float().eval()
    wrapper = ExportableRGBTNet(model).eval()
    rgb, thermal = example_inputs((height, width))
    with torch.inference_mode():
        reference = wrapper.describe(rgb, thermal)
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python int taken from a shape (Hiera's windowing);
            # shapes are static in this export, so those warnings carry no information.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (rgb, thermal),
                path,
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=wrapper.output_names,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise OnnxExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc

    result = OnnxExportResult(
        path=path,
        input_size=(height, width),
        opset=opset,
        output_names=list(wrapper.output_names),
        file_bytes=os.path.getsize(path),
    )
    if check:
        expected = {name: tensor.numpy() for name, tensor in reference}
        result.max_abs_diff = onnx_parity(path, rgb.numpy(), thermal.numpy(), expected)
    return result


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` (``threads``: intra-op threads, default ORT's)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxExportError(f"onnxruntime is not installed: {exc}") from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxExportError(f"onnxruntime cannot load {os.fspath(path)!r}: {exc}") from exc


def onnx_parity(
    path: str | os.PathLike,
    rgb: np.ndarray,
    thermal: np.ndarray,
    expected: dict[str, np.ndarray],
) -> dict[str, float]:
    """Run the exported graph on ``(rgb, thermal)``; ``{output name: max |onnx - expected|}``.

    Raises:
        OnnxExportError: when an output is missing or has another shape than expected.
    """
    session = onnx_session(path)
    names = [output.name for output in session.get_outputs()]
    produced = dict(zip(names, session.run(None, {"rgb": rgb, "thermal": thermal})))
    diffs: dict[str, float] = {}
    for name, want in expected.items():
        if name not in produced:
            raise OnnxExportError(f"ONNX graph lacks output {name!r} (has {names})")
        got = produced[name]
        if got.shape != want.shape:
            raise OnnxExportError(f"ONNX output {name!r} has shape {got.shape}, PyTorch {want.shape}")
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    return diffs
