"""The ``torch_resident``, ``torch_graphs`` and ``torch_compiled`` backends: the whole per-frame step on the device.

:class:`ResidentEngine` keeps a frame on the device from upload to the kept boxes. Per frame
geometry (output grid, thermal frame shape and type, how thermal reaches the grid) a
:class:`FrameStep` holds static buffers: the raw RGB and thermal frames are copied once into
pinned host buffers and uploaded asynchronously; registration warp, resize, thermal scaling
(:mod:`rgbt_perception.backends.torch_ops`), the merged network (both cameras in one trunk pass,
presence as data: a missing camera keeps the shapes and is flagged absent), the RGB-size class
mask and box decoding + NMS run on the device; only the uint8 mask, the kept boxes and a few flags
come back (and the colour overlay when asked for). One step serves every camera pattern of its
geometry.

Modes (one class, the backend name picks the mode; the factory stays the one place of choice):

- ``eager`` (``torch_resident``): the step's kernels launched from Python per frame;
- ``graphs`` (``torch_graphs``): the step captured once as a CUDA graph (after warm-up runs) and
  replayed per frame; outputs are copied out before the next replay;
- ``compiled`` (``torch_compiled``): the merged network through ``torch.compile`` (inductor's
  on-disk cache under ``~/.cache/rgbt_perception/inductor/<torch>-<device>``, so a restart reuses
  the kernels), and on CUDA the step captured as in ``graphs``.

A mode that cannot run (no CUDA for graphs, a failed compile or capture) falls back to the next
simpler one; the reason is logged and kept in :attr:`ResidentEngine.fallbacks`. The engine warms
up at construction (the node's configure) on a frame of the network's input size; other
geometries capture on their first frame or through :meth:`ResidentEngine.prepare`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rgbt_perception.backends import torch_ops
from rgbt_perception.backends.base import DecodeSettings, FrameEngine, FrameOutput, require_finite
from rgbt_perception.backends.numpy_ops import PRE_NMS_PER_LEVEL, decode_boxes
from rgbt_perception.backends.torch_engine import inference_network, store_autocast_weights
from rgbt_perception.core.device import check_precision, resolve_device
from rgbt_perception.core.frames import Homography, prepare_frame
from rgbt_perception.core.overlay import draw_detections, gray_to_rgb
from rgbt_perception.core.preprocess import check_rgb
from rgbt_perception.core.registration import check_size, check_thermal, parse_homography
from rgbt_perception.io.weights import load_weights

MODES = ("eager", "graphs", "compiled")
#: Backend name of each mode.
MODE_BACKENDS = {"eager": "torch_resident", "graphs": "torch_graphs", "compiled": "torch_compiled"}
#: Frame geometries whose steps (buffers, graphs) are kept; the oldest goes first.
MAX_STEPS = 4
WARMUP_RUNS = 3
OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class Geometry:
    """What fixes a step's shapes: the output grid ``(H, W)``, the thermal frame's shape and type,
    and how thermal reaches the grid (``homography``, ``resize`` or ``none``)."""

    output_size: tuple[int, int]
    thermal_shape: tuple[int, int]
    thermal_dtype: str
    warp: str


@dataclass
class ResidentOutput(FrameOutput):
    """:class:`FrameOutput` plus the blended colour overlay made on the device (RGB present) or the
    thermal frame on the output grid to draw on (RGB missing), when an overlay was asked for."""

    overlay: np.ndarray | None = None
    backdrop: np.ndarray | None = None


@dataclass
class RawPair:
    """One checked pair before upload: raw frames, the geometry, the homography (warp ``homography``)."""

    rgb: np.ndarray | None
    thermal: np.ndarray | None
    geometry: Geometry
    homography: np.ndarray | None

    @property
    def size(self) -> tuple[int, int]:
        return self.geometry.output_size


def inductor_cache_dir(device: torch.device) -> Path:
    """Inductor's cache folder for this torch version and device kind (GPU architecture on CUDA), under
    :func:`~rgbt_perception.backends.selection.user_cache_root`; inductor keys its entries by the graph
    itself (network, input size, precision) inside."""
    from rgbt_perception.backends.selection import user_cache_root

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        kind = f"cuda-sm{major}{minor}"
    else:
        kind = "cpu"
    return user_cache_root() / "inductor" / f"torch{torch.__version__}-{kind}"


def use_inductor_cache(folder: Path) -> None:
    """Point inductor's on-disk cache at ``folder`` unless the user chose one (torch itself writes its
    default into ``TORCHINDUCTOR_CACHE_DIR`` on first use, a per-boot folder under /tmp)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


class PresenceNet(nn.Module):
    """``(rgb 1,3,h,w, thermal 1,1,h,w, present 1,2 bool) -> outputs`` of the inference network, with
    presence as a device tensor: the network's own ``forward`` checks a given modality mask on the
    host, which a CUDA graph cannot hold; this runs the same encode -> heads path without it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        net = getattr(model, "net", model)  # the merged copy wraps the network; a fallback is the network
        self.net = net
        self.batched = bool(getattr(model, "batch_modalities", False)) and hasattr(net.encoder, "prefetch")

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor, present: torch.Tensor) -> dict[str, Any]:
        encoder = self.net.encoder
        if self.batched:
            encoder.prefetch(rgb, thermal)
        try:
            return self.net._heads(self.net.encode(rgb, thermal), present)
        finally:
            if self.batched:
                encoder._prefetched = {}


def _integer_mode(dtype: str) -> str:
    return {"uint8": "uint8", "uint16": "uint16"}.get(dtype, "float")


class FrameStep:
    """Static device buffers and the step of one :class:`Geometry` (see the module docstring)."""

    def __init__(self, engine: "ResidentEngine", geometry: Geometry) -> None:
        device = engine.torch_device
        height, width = geometry.output_size
        self.engine, self.geometry, self.device = engine, geometry, device
        pinned = device.type == "cuda"
        thermal_type = getattr(torch, geometry.thermal_dtype)
        self.rgb = torch.zeros(height, width, 3, dtype=torch.uint8, device=device)
        self.thermal = torch.zeros(geometry.thermal_shape, dtype=thermal_type, device=device)
        self.present = torch.zeros(1, 2, dtype=torch.bool, device=device)
        self.coords = torch.zeros(2, height, width, device=device) if geometry.warp == "homography" else None
        self.host = {"rgb": torch.zeros(height, width, 3, dtype=torch.uint8, pin_memory=pinned),
                     "thermal": torch.zeros(geometry.thermal_shape, dtype=thermal_type, pin_memory=pinned),
                     "present": torch.zeros(1, 2, dtype=torch.bool, pin_memory=pinned)}
        self.homography: np.ndarray | None = None
        mode = _integer_mode(geometry.thermal_dtype)
        self.rgb_resize = torch_ops.Resizer.build((height, width), engine.input_size, "uint8", device)
        self.thermal_to_grid = torch_ops.Resizer.build(geometry.thermal_shape, (height, width), mode, device)
        self.thermal_resize = torch_ops.Resizer.build((height, width), engine.input_size, mode, device)
        self.graph: Any = None
        self.outputs: dict[str, Any] | None = None
        self.downloads: dict[str, torch.Tensor] = {}

    # -- per frame ----------------------------------------------------------------------------
    def upload(self, pair: RawPair) -> None:
        """Copy the frames into the pinned buffers and start their upload (asynchronous on CUDA).
        A missing camera leaves its buffer as it is: the network ignores it (``present`` False)."""
        for name, frame in (("rgb", pair.rgb), ("thermal", pair.thermal)):
            if frame is not None:
                self.host[name].numpy()[...] = frame.reshape(self.host[name].shape)
                getattr(self, name).copy_(self.host[name], non_blocking=True)
        self.host["present"].numpy()[0] = (pair.rgb is not None, pair.thermal is not None)
        self.present.copy_(self.host["present"], non_blocking=True)
        if self.coords is not None and pair.thermal is not None and not np.array_equal(pair.homography,
                                                                                      self.homography):
            coords = torch_ops.warp_coordinates(pair.homography, self.geometry.thermal_shape, self.geometry.output_size)
            self.coords.copy_(coords)
            self.homography = pair.homography

    def compute(self) -> dict[str, Any]:
        """The step on the buffers (no host sync): the dict of device outputs."""
        engine = self.engine
        rgb_in = (self.rgb_resize(self.rgb.permute(2, 0, 1).float()) / 255.0)[None]
        thermal = self.thermal.float()
        integer = self.geometry.thermal_dtype != "float32"
        if self.coords is not None:
            thermal = torch_ops.sample_bilinear(thermal, self.coords, integer)
        else:
            thermal = self.thermal_to_grid(thermal[None])[0]
        thermal_in = torch_ops.scale_thermal(self.thermal_resize(thermal[None]), engine.scaling)[None]
        with engine.autocast():
            outputs = engine.network(rgb_in, thermal_in, self.present)
        logits = outputs["semantic"].float()
        boxes = outputs["boxes"]
        decoded = torch_ops.decode_boxes_static(
            boxes, engine.strides, engine.decode.score_threshold, engine.decode.nms_iou,
            (engine.decode.max_detections, engine.decode.max_per_class), PRE_NMS_PER_LEVEL, torch_ops.NMS_CANDIDATES)
        finite = torch.isfinite(logits).all() & torch.stack([torch.isfinite(r).all() for r in boxes["reg"]]).all()
        return {"mask": torch_ops.class_mask(logits, self.geometry.output_size), "boxes": decoded.boxes,
                "scores": decoded.scores, "labels": decoded.labels, "count": decoded.count, "exact": decoded.exact,
                "finite": finite, "thermal_grid": thermal, "raw": boxes}

    def run(self) -> dict[str, Any]:
        with torch.inference_mode():
            if self.graph is not None:
                self.graph.replay()
                return self.outputs
            return self.compute()

    def capture(self) -> None:
        """Warm up on a side stream, then record the step as a CUDA graph (raises what capture raises)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                self.compute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = self.compute()
        self.graph, self.outputs = graph, outputs

    def download(self, outputs: dict[str, Any], overlay: torch.Tensor | None) -> dict[str, np.ndarray]:
        """The small outputs (and ``overlay``) copied to fresh host arrays; waits for the device."""
        wanted = {name: outputs[name] for name in ("mask", "boxes", "scores", "labels", "count", "exact", "finite")}
        if overlay is not None:
            wanted["overlay"] = overlay
        for name, tensor in wanted.items():
            if name not in self.downloads:
                self.downloads[name] = torch.empty(tensor.shape, dtype=tensor.dtype,
                                                   pin_memory=self.device.type == "cuda")
            self.downloads[name].copy_(tensor, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        # Copies: the pinned buffers (and a graph's outputs) are overwritten by the next frame.
        return {name: buffer.numpy().copy() for name, buffer in self.downloads.items() if name in wanted}

    def release(self) -> None:
        self.graph = self.outputs = None


class ResidentEngine(FrameEngine):
    """The network and its per-frame work on one device with static shapes (see the module docstring).

    Args:
        weights: node weights file (see :mod:`rgbt_perception.io.weights`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``fp32``; ``fp16`` (CUDA) and ``bf16`` by autocast, as the ``torch`` backend.
        decode: box decoding (default: the published boxes' settings).
        thermal_to_rgb: default 3x3 thermal-to-RGB homography (``None``: same field of view).
        threads: not used (the signature of every backend).
        log: told about warm-up, compilation and every fallback.
        mode: ``eager``, ``graphs`` or ``compiled``; default: this class's :attr:`mode`.
    """

    backend = MODE_BACKENDS["eager"]
    mode = "eager"

    def __init__(self, weights: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                 decode: DecodeSettings | None = None, thermal_to_rgb: Homography = None, threads: int | None = None,
                 log: Callable[[str], None] | None = None, mode: str | None = None) -> None:
        from rgbt_perception.backends.selection import resolve_precision

        requested = mode or self.mode
        if requested not in MODES:
            raise ValueError(f"unknown engine mode {requested!r}; use one of {', '.join(MODES)}")
        model, metadata = load_weights(weights, device="cpu")
        self.torch_device = resolve_device(device)
        self.precision = resolve_precision(precision, str(self.torch_device))
        self.compute_dtype = check_precision(self.precision, self.torch_device)
        self.metadata = metadata
        self._init_common(metadata.class_names, metadata.palette, model.cfg.input_size, metadata.scaling,
                          decode or DecodeSettings(), thermal_to_rgb)
        self._log = log or (lambda text: None)
        self.fallbacks: list[str] = []
        self.host_decodes = 0  # frames whose boxes were decoded on the host (static NMS not provably exact)
        self._lock = threading.Lock()
        self._overlay_wanted = False
        self._steps: dict[Geometry, FrameStep] = {}
        self._lut = torch.from_numpy(self._palette_lut).to(self.torch_device)
        self.model, self.merge_report = inference_network(model.eval().to(self.torch_device), batch_modalities=True)
        if self.compute_dtype != torch.float32 and self.model is not model:
            store_autocast_weights(self.model, self.compute_dtype)
        self.strides = tuple(int(s) for s in self.model.box_head.strides)
        self.network: Callable[..., Any] = PresenceNet(self.model).eval()
        self.active_mode = self._choose_mode(requested)
        self.prepare(self.input_size, self.input_size, "uint16")

    # -- modes ----------------------------------------------------------------------------------
    def _fall_back(self, wanted: str, reason: str) -> None:
        line = f"engine mode {wanted} not used: {reason}"
        self.fallbacks.append(line)
        self._log(line)

    def _choose_mode(self, requested: str) -> str:
        if requested == "graphs" and self.torch_device.type != "cuda":
            self._fall_back("graphs", "CUDA graphs need a CUDA device; running eager")
            return "eager"
        if requested == "compiled":
            reason = self._compile()
            if reason is not None:
                self._fall_back("compiled", f"torch.compile failed ({reason}); running "
                                            f"{'graphs' if self.torch_device.type == 'cuda' else 'eager'}")
                return "graphs" if self.torch_device.type == "cuda" else "eager"
        return requested

    def _compile(self) -> str | None:
        """Compile the network and run it once at the input size; the reason of a failure, else None."""
        use_inductor_cache(inductor_cache_dir(self.torch_device))
        self._log(f"compiling the network (torch.compile, kernel cache {os.environ['TORCHINDUCTOR_CACHE_DIR']})")
        compiled = torch.compile(self.network, dynamic=False)
        height, width = self.input_size
        probe = (torch.zeros(1, 3, height, width, device=self.torch_device),
                 torch.zeros(1, 1, height, width, device=self.torch_device),
                 torch.ones(1, 2, dtype=torch.bool, device=self.torch_device))
        try:
            with torch.inference_mode(), self.autocast():
                compiled(*probe)
        except Exception as exc:  # inductor raises many kinds (no compiler, codegen, lowering)
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        self.network = compiled
        return None

    def prepare(self, rgb_size: Sequence[int], thermal_size: Sequence[int] | None = None,
                thermal_dtype: str = "uint16", homography: Homography = None) -> None:
        """Build (and in graphs/compiled mode on CUDA capture) the step for frames of these sizes now,
        so the first such frame does not pay for it."""
        height, width = check_size(rgb_size, "rgb_size")
        shape = (height, width) if thermal_size is None else check_size(thermal_size, "thermal_size")
        matrix = self.thermal_to_rgb if homography is None else parse_homography(homography)
        warp = "homography" if matrix is not None else ("none" if shape == (height, width) else "resize")
        pair = RawPair(np.zeros((height, width, 3), np.uint8), np.zeros(shape, thermal_dtype),
                       Geometry((height, width), shape, str(np.dtype(thermal_dtype)), warp), matrix)
        with self._lock:
            self._run_pair(pair, overlay=False)

    # -- frames ---------------------------------------------------------------------------------
    def _prepare(self, index: int, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography,
                 requested_size: Sequence[int] | None = None) -> RawPair:
        """Checks as :func:`~rgbt_perception.core.frames.prepare_frame` (same errors), no warp on the host."""
        if rgb is None and thermal is None:
            prepare_frame(index, rgb, thermal, homography, requested_size)  # raises its error
        if rgb is not None:
            check_rgb(rgb, f"pair {index}: rgb")
            rgb = np.ascontiguousarray(rgb)
        if thermal is not None:
            thermal = check_thermal(thermal, f"pair {index}: thermal")
        output = tuple(rgb.shape[:2]) if rgb is not None else tuple(thermal.shape)
        if requested_size is not None:
            wanted = check_size(requested_size, f"pair {index}: output_size")
            if rgb is not None and wanted != output:
                raise ValueError(f"pair {index}: output_size {wanted} differs from the RGB frame's {output}")
            output = wanted
        matrix = self.thermal_to_rgb if homography is None else homography
        if matrix is not None:
            try:
                matrix = parse_homography(matrix)
            except ValueError as exc:
                raise ValueError(f"pair {index}: {exc}") from None
        on_grid = rgb is not None or requested_size is not None
        return RawPair(rgb, thermal, self._geometry(output, thermal, matrix if on_grid else None, on_grid),
                       matrix if on_grid else None)

    def _geometry(self, output: tuple[int, int], thermal: np.ndarray | None, matrix: np.ndarray | None,
                  on_grid: bool) -> Geometry:
        if thermal is None:  # any step of this output grid serves: presence is data
            same_grid = [g for g in self._steps if g.output_size == output]
            return same_grid[-1] if same_grid else Geometry(output, output, "uint16", "none")
        shape = tuple(thermal.shape)
        if matrix is not None:
            warp = "homography"
        else:
            warp = "none" if shape == output or not on_grid else "resize"
        return Geometry(output, shape, str(thermal.dtype), warp)

    def _forward(self, inputs: list[RawPair]) -> list[tuple[RawPair, dict[str, np.ndarray]]]:
        with self._lock:
            return [(pair, self._run_pair(pair, overlay=self._overlay_wanted)) for pair in inputs]

    def _step(self, geometry: Geometry) -> FrameStep:
        step = self._steps.pop(geometry, None)
        if step is None:
            if len(self._steps) >= MAX_STEPS:
                self._steps.pop(next(iter(self._steps))).release()
            step = FrameStep(self, geometry)
            if self.active_mode in ("graphs", "compiled") and self.torch_device.type == "cuda":
                self._capture(step)
        self._steps[geometry] = step  # most recent last
        return step

    def _capture(self, step: FrameStep) -> None:
        try:
            step.capture()
        except Exception as exc:  # capture refuses host syncs and some kernels; the step then runs eagerly
            step.release()
            torch.cuda.synchronize(self.torch_device)
            self._fall_back(self.active_mode, f"CUDA graph capture failed for {step.geometry} "
                                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                              "this geometry runs without a graph")

    def _run_pair(self, pair: RawPair, overlay: bool) -> dict[str, np.ndarray]:
        step = self._step(pair.geometry)
        step.upload(pair)
        outputs = step.run()
        drawn = None
        if overlay and pair.rgb is not None:
            with torch.inference_mode():
                drawn = torch_ops.blend_colours(step.rgb, outputs["mask"], self._lut, OVERLAY_ALPHA)
        host = step.download(outputs, drawn)
        if overlay and pair.rgb is None:
            host["backdrop"] = gray_to_rgb(outputs["thermal_grid"].cpu().numpy())
        if not bool(host["exact"]) and bool(host["finite"]):
            self._decode_on_host(outputs["raw"], host)
        return host

    def _decode_on_host(self, raw: dict[str, list[torch.Tensor]], host: dict[str, np.ndarray]) -> None:
        """The NumPy decoder on the raw box outputs, for a frame the static NMS could not decide exactly."""
        self.host_decodes += 1
        levels = {part: [t.float().cpu().numpy() for t in tensors] for part, tensors in raw.items()}
        decoded = decode_boxes(levels, self.strides, self.decode.score_threshold, self.decode.nms_iou,
                               self.decode.max_detections, self.decode.max_per_class, PRE_NMS_PER_LEVEL)[0]
        host.update(boxes=decoded["boxes"], scores=decoded["scores"], labels=decoded["labels"],
                    count=np.array(len(decoded["boxes"])))

    def infer_batch(self, pairs: Sequence[Any], homographies: Sequence[Homography] | None = None,
                    overlay: bool = False, output_sizes: Sequence[Sequence[int] | None] | None = None) -> list[Any]:
        """As :meth:`FrameEngine.infer_batch`; the pairs run one after another, each through its
        step, so ``timings_ms`` counts the checks as ``preprocess`` and the device step as ``forward``."""
        self._overlay_wanted = overlay
        return super().infer_batch(pairs, homographies, overlay, output_sizes)

    def _postprocess_batch(self, raw: list[tuple[RawPair, dict[str, np.ndarray]]],
                           prepared: list[RawPair]) -> list[FrameOutput]:
        results = []
        for pair, host in raw:
            require_finite(bool(host["finite"]), "class scores or boxes")
            count = int(host["count"])
            results.append(ResidentOutput(host["mask"], host["boxes"][:count], host["scores"][:count],
                                          host["labels"][:count], host.get("overlay"), host.get("backdrop")))
        return results

    def _result(self, output: ResidentOutput, item: RawPair, overlay: bool) -> Any:
        from rgbt_perception.core.frames import InferenceResult, detections_on_output

        detections = detections_on_output(output.boxes, output.scores, output.labels, self.class_names,
                                          self.input_size, item.size)
        drawn = None
        if overlay and output.overlay is not None:
            drawn = draw_detections(output.overlay, detections, self._palette_lut)
        elif overlay:
            drawn = self.draw(output.backdrop, output.mask, detections)
        return InferenceResult(mask=output.mask, detections=detections, overlay=drawn)

    # -- the rest of the interface --------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self.torch_device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        # No autocast weight cache: a cache filled inside a CUDA graph capture is not valid after it
        # (the weights are stored in the low precision already, so it saves nothing here).
        return torch.autocast(device_type=self.torch_device.type, dtype=self.compute_dtype, cache_enabled=False)

    def _release(self) -> None:
        for step in self._steps.values():
            step.release()
        self._steps.clear()
        self.network = None  # type: ignore[assignment]
        if self.model is not None:
            self.model.to("cpu")
            self.model = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


class GraphEngine(ResidentEngine):
    """``torch_graphs``: the step captured as a CUDA graph and replayed."""

    backend = MODE_BACKENDS["graphs"]
    mode = "graphs"


class CompiledEngine(ResidentEngine):
    """``torch_compiled``: the network compiled by ``torch.compile``, the step captured on CUDA."""

    backend = MODE_BACKENDS["compiled"]
    mode = "compiled"
