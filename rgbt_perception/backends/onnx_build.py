"""Build the cached ONNX graph of a weights file (needs torch; run in-process or as a child process).

``python -m rgbt_perception.backends.onnx_build WEIGHTS --input-size HxW --precision fp32 --out FILE
--key KEY`` is what :func:`rgbt_perception.backends.onnx_graph.ensure_graph` runs when its own
process has not loaded torch.

The exported network is the inference form of :mod:`rgbt_perception.model.lora_merge` (LoRA merged
per modality, both cameras in one trunk pass). The graph takes ``rgb: 1,3,H,W`` and ``thermal:
1,1,H,W`` (float32 in ``[0, 1]``) and ``present: 1,2`` (bool, RGB and thermal present), so one graph
serves a missing camera too: its input is zeros and the network's modality mask leaves it out,
exactly as ``net(rgb, None)`` does. Outputs: ``semantic`` and the raw box tensors (``boxes.cls.0``
...). Before the file is kept, onnxruntime runs it on both cameras, RGB alone and thermal alone and
its outputs are compared with the original (unmerged) PyTorch network's; the numbers go into the
sidecar, and a graph outside the tolerance is not cached.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rgbt_perception.backends.onnx_cache import write_sidecar
from rgbt_perception.backends.selection import BackendError
from rgbt_perception.io.files import atomic_path
from rgbt_perception.model.lora_merge import inference_model
from rgbt_perception.model.onnx_export import DEFAULT_OPSET, SEMANTIC_OUTPUT, example_inputs, flatten_outputs

INPUT_NAMES = ("rgb", "thermal", "present")
PATTERNS = {"both": (True, True), "rgb": (True, False), "thermal": (False, True)}
# Parity of a kept graph: max |onnx - torch| / max(1, max |torch|) per output. fp32 reorders sums only;
# fp16 keeps ~3 significant digits through the trunk.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
DECODE_SETTINGS = ("score_threshold", "nms_iou", "max_detections", "max_per_class", "pre_nms_per_level")


class GraphWrapper(nn.Module):
    """``(rgb, thermal, present) -> (semantic, *box tensors)`` around the inference network.

    ``half``: the network runs in fp16 inside the graph; inputs and outputs stay float32.
    """

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model.half() if half else model
        self.half = half
        self.output_names: list[str] = []

    def named_outputs(self, rgb: Tensor, thermal: Tensor, present: Tensor) -> list[tuple[str, Tensor]]:
        if self.half:
            rgb, thermal = rgb.half(), thermal.half()
        outputs = self.model(rgb, thermal, present)
        named = [(SEMANTIC_OUTPUT, outputs[SEMANTIC_OUTPUT])] + flatten_outputs(outputs["boxes"], "boxes")
        return [(name, tensor.float()) for name, tensor in named]

    def forward(self, rgb: Tensor, thermal: Tensor, present: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensor for _, tensor in self.named_outputs(rgb, thermal, present))


def decode_defaults(box_head: nn.Module) -> dict[str, Any]:
    """The defaults of ``box_head.decode`` that the torch-free runtime must repeat."""
    parameters = inspect.signature(box_head.decode).parameters
    return {name: parameters[name].default for name in DECODE_SETTINGS if name in parameters
            and parameters[name].default is not inspect.Parameter.empty}


def reference_outputs(model: nn.Module, rgb: Tensor, thermal: Tensor) -> dict[str, dict[str, np.ndarray]]:
    """``{pattern: {output name: array}}`` of the original network, fp32, for each camera pattern."""
    references = {}
    with torch.inference_mode():
        for pattern, (has_rgb, has_thermal) in PATTERNS.items():
            outputs = model(rgb if has_rgb else None, thermal if has_thermal else None)
            named = [(SEMANTIC_OUTPUT, outputs[SEMANTIC_OUTPUT])] + flatten_outputs(outputs["boxes"], "boxes")
            references[pattern] = {name: tensor.float().cpu().numpy() for name, tensor in named}
    return references


def graph_parity(
    session: Any, rgb: np.ndarray, thermal: np.ndarray, references: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Run the graph per camera pattern (a missing camera: zeros + ``present`` False) against the
    references; relative max differences per pattern and the agreement of the low-resolution argmax."""
    names = [o.name for o in session.get_outputs()]
    result: dict[str, Any] = {"patterns": {}}
    worst = 0.0
    for pattern, (has_rgb, has_thermal) in PATTERNS.items():
        feeds = {
            "rgb": rgb if has_rgb else np.zeros_like(rgb),
            "thermal": thermal if has_thermal else np.zeros_like(thermal),
            "present": np.array([[has_rgb, has_thermal]], dtype=bool),
        }
        produced = dict(zip(names, session.run(None, feeds)))
        diffs = {}
        for name, want in references[pattern].items():
            got = produced.get(name)
            if got is None or got.shape != want.shape:
                raise BackendError(f"ONNX output {name!r}: {None if got is None else got.shape}, PyTorch {want.shape}")
            scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
            diffs[name] = float(np.abs(got.astype(np.float64) - want).max()) / scale if want.size else 0.0
        low_res = produced[SEMANTIC_OUTPUT].argmax(1) == references[pattern][SEMANTIC_OUTPUT].argmax(1)
        agreement = float(low_res.mean())
        result["patterns"][pattern] = {"max_rel_diff": max(diffs.values()), "semantic_argmax_agreement": agreement,
                                       "per_output": diffs}
        worst = max(worst, max(diffs.values()))
    result["max_rel_diff"] = worst
    result["summary"] = f"max relative difference {worst:.2e} over both cameras, RGB alone and thermal alone"
    return result


def _session(path: str, device: str) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ort.InferenceSession(path, providers=providers)


def build_graph(
    weights: str | os.PathLike,
    input_size: Sequence[int],
    precision: str,
    device: str,
    onnx_path: str | os.PathLike,
    key: str,
) -> dict[str, Any]:
    """Export, check and store the graph of ``weights``; returns the sidecar's contents.

    Raises:
        BackendError: export failed or the graph is outside the parity tolerance.
    """
    from rgbt_perception.io.weights import load_weights

    started = time.perf_counter()
    if precision not in TOLERANCE:
        raise BackendError(f"ONNX graphs are built in fp32 or fp16, not {precision}")
    target = torch.device(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")
    if precision == "fp16" and target.type != "cuda":
        raise BackendError("an fp16 ONNX graph is built and checked on a CUDA device; none is available")
    height, width = (int(v) for v in input_size)
    model, metadata = load_weights(weights, device="cpu")
    model = model.float().eval()
    fast, report = inference_model(model)
    rgb, thermal = example_inputs((height, width))
    references = reference_outputs(model, rgb, thermal)
    wrapper = GraphWrapper(copy.deepcopy(fast).to(target), half=precision == "fp16").eval()
    present = torch.ones(1, 2, dtype=torch.bool, device=target)
    with torch.inference_mode():
        named = wrapper.named_outputs(rgb.to(target), thermal.to(target), present)
    output_names = [name for name, _ in named]
    onnx_path = Path(onnx_path)
    with atomic_path(onnx_path, suffix=".onnx.tmp") as tmp:
        try:
            with warnings.catch_warnings():
                # The tracer warns about every Python number taken from a shape (Hiera's windowing)
                # and the modality check; shapes are static in this graph.
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (rgb.to(target), thermal.to(target), present), tmp, dynamo=False,
                                  opset_version=DEFAULT_OPSET, input_names=list(INPUT_NAMES),
                                  output_names=output_names, do_constant_folding=True)
        except Exception as exc:  # the exporter raises many unrelated types
            raise BackendError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        parity = graph_parity(_session(tmp, str(target)), rgb.numpy(), thermal.numpy(), references)
        if parity["max_rel_diff"] > TOLERANCE[precision]:
            raise BackendError(f"the ONNX graph differs from PyTorch: {parity['summary']} > {TOLERANCE[precision]:g}")
    info = {
        "key": key,
        "weights": os.fspath(Path(weights).resolve()),
        "input_size": [height, width],
        "precision": precision,
        "inputs": list(INPUT_NAMES),
        "outputs": output_names,
        "class_names": list(metadata.class_names),
        "box_strides": [int(s) for s in model.box_head.strides],
        "decode_defaults": decode_defaults(model.box_head),
        "lora": {"merged_layers": report.merged_layers, "batched_trunk": report.batched,
                 "max_abs_diff_vs_unmerged": report.max_abs_diff, "fallback": report.fallback},
        "parity": parity,
        "built_on": str(target),
        "build_s": round(time.perf_counter() - started, 2),
    }
    write_sidecar(onnx_path, info)
    return info


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH") from None
    return height, width


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgbt_perception.backends.onnx_build",
                                     description="Build the cached ONNX graph of a node weights file.")
    parser.add_argument("weights")
    parser.add_argument("--input-size", type=_size, required=True)
    parser.add_argument("--precision", default="fp32", choices=sorted(TOLERANCE))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    try:
        info = build_graph(args.weights, args.input_size, args.precision, args.device, args.out, args.key)
    except (BackendError, ValueError, RuntimeError, OSError) as exc:
        print(f"onnx_build: error: {exc}", file=sys.stderr)
        return 1
    print(f"onnx_build: {args.out}: {info['parity']['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
