"""rgbt-bench: how close the inference engine and the node come to the bare network's cost.

One run measures, per model variant and on the same inputs,

1. the bare fused network forward (both modalities, already preprocessed tensors on the device),
2. the inference engine end to end (registration, preprocessing, forward, post-processing),
3. the node end to end over DDS (the real ``rgbt_node`` executable in a child process: publish
   an RGB + thermal pair, wait for ``semantic`` and ``detections`` of that stamp),

with the iterations of (1), (2) and (3) interleaved so machine noise affects them alike. It
prints and stores the ratios (2)/(1) and (3)/(1), frames per second, latency p50/p95, peak RSS
and peak GPU memory, a scaling table (resolution x model size), the gain of each speed-up step
(channels_last, autocast, torch.compile, CUDA graphs, batching the modalities) and, on request,
an ONNX export with its onnxruntime parity.

The results are written between two marker lines of a Markdown file (``--out``), so the prose
around them survives re-runs, and as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_VARIANTS = ("micro", "tiny", "small", "base_plus")
SCALING_SIZES = ((240, 320), (480, 640), (720, 1280))
STEP_NAMES = ("channels_last", "autocast", "compile", "cuda_graphs")
SMOKE_SIZE = (64, 96)
NODE_EXECUTABLE = "rgbt_node"
NODE_PACKAGE = "rgbt_perception"
RESULTS_BEGIN = "<!-- rgbt-bench results: begin -->"
RESULTS_END = "<!-- rgbt-bench results: end -->"
SCALING_PLOT = "benchmarks_scaling.png"
# Goals of the CPU pipeline (micro, 480x640) and of the GPU pipeline (H100, fp16/bf16).
CPU_GOALS = {"engine_over_model": 1.10, "node_over_model": 1.25}
GPU_GOALS = {"tiny_fps": 100.0, "base_plus_fps": 40.0, "pipeline_over_model": 1.05}


class BenchError(ValueError):
    """A bad option or an unusable environment; the message names the problem."""


# ------------------------------------------------------------------------------------------------
# Options


@dataclass
class BenchSettings:
    """Everything one run measures; filled from the command line."""

    variants: list[str]
    size: tuple[int, int]
    iters: int
    warmup: int
    device: str
    precision: str
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    threads: int = 0
    variant_budget_s: float = 120.0
    node: bool = False
    node_variant: str = "micro"
    node_timeout_s: float = 30.0
    scaling: bool = False
    scaling_sizes: list[tuple[int, int]] = field(default_factory=lambda: list(SCALING_SIZES))
    scaling_iters: int = 3
    steps: list[str] = field(default_factory=list)
    steps_variant: str = "micro"
    export_onnx: str | None = None
    weights: str | None = None
    seed: int = 0
    smoke: bool = False


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise BenchError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 480x640)") from None
    if height < 32 or width < 32:
        raise BenchError(f"size {text!r} is too small: height and width must be at least 32")
    return height, width


def network_input_size(frame_size: Sequence[int]) -> tuple[int, int]:
    """The network input for a frame size: each side rounded up to a multiple of 32 (Hiera's
    windowing needs it), so no pixel of the frame is lost by the resize."""
    return tuple(-(-int(v) // 32) * 32 for v in frame_size)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-bench",
        description=(
            "Measure the bare network, the inference engine and the node end to end in one run "
            "(interleaved), a resolution/model-size scaling table and the gain of each speed-up; "
            "write the results to a Markdown file and JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated model variants (micro, tiny, small, base_plus, large)")
    parser.add_argument("--weights", help="measure this node weights file instead of randomly initialised variants")
    parser.add_argument("--size", default="480x640", help="frame size HEIGHTxWIDTH of the main measurement")
    parser.add_argument("--iters", type=int, default=20, help="measured iterations per variant")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured iterations first")
    parser.add_argument("--variant-budget", type=float, default=120.0, dest="variant_budget_s",
                        help="seconds of measuring per variant after which fewer iterations are taken (at least 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="compute precision (autocast) of network and engine")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the harness and the node (0: torch's default)")
    parser.add_argument("--channels-last", action="store_true", help="network in channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (slow start)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the forward as a CUDA graph (cuda only)")
    parser.add_argument("--node", action="store_true",
                        help="also measure the rgbt_node executable end to end over DDS (needs ROS 2)")
    parser.add_argument("--node-variant", default="micro", help="variant whose weights the node runs")
    parser.add_argument("--node-timeout", type=float, default=30.0, dest="node_timeout_s",
                        help="seconds to wait for the node's start and for each reply")
    parser.add_argument("--scaling", action="store_true",
                        help="network cost against resolution (240x320, 480x640, 720x1280) and variant")
    parser.add_argument("--scaling-iters", type=int, default=3, help="measured iterations per scaling cell")
    parser.add_argument("--steps", nargs="?", const=",".join(STEP_NAMES), default="",
                        help="measure the gain of each speed-up step in turn (comma-separated subset of "
                        f"{','.join(STEP_NAMES)}; steps that do not apply to the device are skipped)")
    parser.add_argument("--steps-variant", default="micro", help="variant of the speed-up steps")
    parser.add_argument("--export-onnx", metavar="FILE",
                        help="export the first variant at --size to ONNX, check parity and time onnxruntime")
    parser.add_argument("--out", help="Markdown file whose results section is (re)written, e.g. docs/benchmarks.md")
    parser.add_argument("--json", help="write all numbers to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and frames")
    parser.add_argument("--smoke", action="store_true",
                        help="quick check of the harness: micro, 64x96, 2 iterations, no node, no scaling")
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Validate the parsed options; raises :class:`BenchError` naming the bad one."""
    from rgbt_perception.model.config import VARIANTS

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants + [args.node_variant, args.steps_variant] if v not in VARIANTS]
    if unknown:
        raise BenchError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not variants and not args.weights:
        raise BenchError("--variants is empty")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad_steps = [s for s in steps if s not in STEP_NAMES]
    if bad_steps:
        raise BenchError(f"unknown --steps {bad_steps}; known: {', '.join(STEP_NAMES)}")
    for name in ("iters", "scaling_iters"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads < 0:
        raise BenchError(f"--threads must be >= 0, got {args.threads}")
    if args.weights and not os.path.isfile(args.weights):
        raise BenchError(f"--weights {args.weights!r}: file not found")
    settings = BenchSettings(
        variants=variants,
        size=parse_size(args.size),
        iters=args.iters,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        threads=args.threads,
        variant_budget_s=args.variant_budget_s,
        node=args.node,
        node_variant=args.node_variant,
        node_timeout_s=args.node_timeout_s,
        scaling=args.scaling,
        scaling_iters=args.scaling_iters,
        steps=steps,
        steps_variant=args.steps_variant,
        export_onnx=args.export_onnx,
        weights=args.weights,
        seed=args.seed,
        smoke=args.smoke,
    )
    if settings.smoke:
        settings.variants, settings.size = ["micro"], SMOKE_SIZE
        settings.iters, settings.warmup = 2, 1
        settings.node = settings.scaling = False
        settings.steps = []
        settings.weights = None
    return settings


# ------------------------------------------------------------------------------------------------
# Machine and statistics


def cpu_model_name() -> str:
    """CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(device: str) -> dict[str, Any]:
    """The facts a reader needs to compare numbers between machines."""
    import timm
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": device,
        "gpu": None,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/meminfo") as handle:
            total_kb = int(handle.readline().split()[1])
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        info["memory_gib"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def summarize(samples_ms: Sequence[float]) -> dict[str, float] | None:
    """``count, mean, p50, p95, min, max`` in ms and ``fps`` (1000 / mean) of a sample list."""
    if not samples_ms:
        return None
    data = np.asarray(samples_ms, np.float64)
    mean = float(data.mean())
    return {
        "count": int(data.size),
        "mean_ms": mean,
        "p50_ms": float(np.percentile(data, 50)),
        "p95_ms": float(np.percentile(data, 95)),
        "min_ms": float(data.min()),
        "max_ms": float(data.max()),
        "fps": 1000.0 / mean if mean > 0 else float("inf"),
    }


def ratio(
    numerator: dict[str, float] | None, denominator: dict[str, float] | None, key: str = "p50_ms"
) -> float | None:
    """Ratio of medians (``key="min_ms"``: of the fastest iterations, the least disturbed ones
    on a shared machine)."""
    if not numerator or not denominator or denominator[key] <= 0:
        return None
    return numerator[key] / denominator[key]


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of process ``pid`` (Linux, clock-tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # Fields after the parenthesised command name start at field 3 (state); utime and
            # stime are fields 14 and 15.
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleave(
    measures: dict[str, Callable[[], float | None]],
    iters: int,
    warmup: int,
    budget_s: float | None = None,
    progress: Any = None,
    min_iters: int = 3,
) -> dict[str, list[float]]:
    """Run every measure once per iteration, alternating their order, and collect the ms.

    A measure returns its duration in ms, or ``None`` when that iteration gave no result (it is
    then left out). Slow variants on a CPU are bounded by ``budget_s``: warm-up ends early
    (after at least one iteration) once it has taken half the budget, and measuring stops once
    it has taken the budget and ``min_iters`` iterations are in.
    """
    names = list(measures)
    samples: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    measured = 0
    index = 0
    while measured < iters:
        warming = index < warmup
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            value = measures[name]()
            if not warming and value is not None:
                samples[name].append(value)
        index += 1
        if progress is not None:
            progress.update(1)
        elapsed = time.perf_counter() - began
        if warming:
            if budget_s is not None and index < warmup and elapsed > budget_s / 2:
                warmup = index  # enough warm-up for a slow variant
            if index == warmup:
                began = time.perf_counter()
            continue
        measured += 1
        if budget_s is not None and measured >= min_iters and elapsed > budget_s:
            break
    return samples


# ------------------------------------------------------------------------------------------------
# Inputs and models


def synthetic_pair(frame_size: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic road-like pair: RGB ``HxWx3`` uint8 and raw 16-bit thermal ``HxW``.

    Smooth gradients plus noise, so percentiles, resizing and the network see ordinary values.
    """
    height, width = (int(v) for v in frame_size)
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = 0.6 * rows + 0.4 * cols
    rgb = np.stack([base, 1.0 - base, 0.5 * (rows + 0 * cols)], axis=-1) * 200.0
    rgb = np.clip(rgb + rng.normal(0.0, 12.0, rgb.shape), 0, 255).astype(np.uint8)
    thermal = 7500.0 + 1500.0 * rows * (1.0 - cols) + rng.normal(0.0, 40.0, (height, width))
    return rgb, np.clip(thermal, 0, 65535).astype(np.uint16)


def build_model(variant: str, input_size: Sequence[int], seed: int) -> tuple[Any, Any]:
    """A randomly initialised ``RGBTNet`` (eval mode) and its weights metadata."""
    import torch

    from rgbt_perception.core.classes import get_class_set
    from rgbt_perception.model import ModelConfig, RGBTNet
    from rgbt_perception.io.weights import WeightsMetadata

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


# ------------------------------------------------------------------------------------------------
# The bare forward, with optional speed-ups


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

        from rgbt_perception.inference import check_precision, resolve_device

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
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------------------------------------
# The node over DDS


def find_node_executable() -> str:
    """``<prefix>/lib/rgbt_perception/rgbt_node`` of the sourced workspace, else ``rgbt_node`` on PATH."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    for prefix in prefixes:
        candidate = os.path.join(prefix, "lib", NODE_PACKAGE, NODE_EXECUTABLE)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(NODE_EXECUTABLE)
    if found:
        return found
    raise BenchError(
        f"cannot find the {NODE_EXECUTABLE} executable: source install/setup.bash (or run `make setup`) first"
    )


class NodeRoundTrip:
    """The real ``rgbt_node`` in a child process, fed and read over DDS by this process.

    ``round_trip()`` publishes one pair with a fresh stamp and returns the ms until both
    ``semantic`` and ``detections`` with that stamp have arrived (``None`` on time-out).
    The node runs with the same torch thread count as this process.
    """

    def __init__(self, weights: str, device: str, precision: str, threads: int, timeout_s: float,
                 log_path: str) -> None:
        self.weights = weights
        self.device = device
        self.precision = precision
        self.threads = threads
        self.timeout_s = timeout_s
        self.log_path = log_path
        self.lost = 0
        self.received = 0
        self.process: subprocess.Popen | None = None
        self._arrivals: dict[tuple[str, int], float] = {}
        self._context = None
        self._node = None
        self._executor = None
        self._log = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rgbt_msgs.msg import Detection2DArray
        from sensor_msgs.msg import Image

        executable = find_node_executable()
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.threads)
        command = [
            executable, "--ros-args",
            "-r", "__node:=rgbt_bench_target",
            "-p", f"weights:={self.weights}",
            "-p", f"device:={self.device}",
            "-p", f"precision:={self.precision}",
            "-p", "qos.reliability:=reliable",
        ]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("rgbt_bench_probe", context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        # Reliable both ways: a frame lost in transport would count as a time-out, not as latency.
        images = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        outputs = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self._rgb_pub = self._node.create_publisher(Image, "rgb/image", images)
        self._thermal_pub = self._node.create_publisher(Image, "thermal/image", images)
        self._node.create_subscription(Image, "semantic", lambda m: self._arrived("semantic", m), outputs)
        self._node.create_subscription(Detection2DArray, "detections", lambda m: self._arrived("detections", m),
                                       outputs)
        self._wait_for_graph()

    def _wait_for_graph(self) -> None:
        """Until the node subscribes to both inputs and publishes both outputs."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{NODE_EXECUTABLE} exited with code {self.process.returncode}: "
                                 f"{self._log_tail()}")
            node = self._node
            if (self._rgb_pub.get_subscription_count() > 0 and self._thermal_pub.get_subscription_count() > 0
                    and node.count_publishers("semantic") > 0 and node.count_publishers("detections") > 0):
                return
            self._executor.spin_once(timeout_sec=0.05)
        raise BenchError(f"{NODE_EXECUTABLE} did not connect within {self.timeout_s:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        self._log.flush()
        try:
            with open(self.log_path) as handle:
                return handle.read()[-1500:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> float | None:
        """Stop the node (SIGINT, then SIGKILL) and return its peak RSS in MiB."""
        if self._node is not None:
            self._executor.shutdown()
            self._node.destroy_node()
            self._node = None
        if self._context is not None:
            import rclpy

            rclpy.try_shutdown(context=self._context)
            self._context = None
        peak = None
        if self.process is not None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            # ru_maxrss of children is the largest of all waited-for children so far.
            peak = after / 1024.0 if after >= before else None
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return peak

    # -- measuring ----------------------------------------------------------------------------
    def _arrived(self, topic: str, msg: Any) -> None:
        stamp = msg.header.stamp
        self._arrivals[(topic, stamp.sec * 1_000_000_000 + stamp.nanosec)] = time.perf_counter()

    def round_trip(self, rgb: np.ndarray, thermal: np.ndarray) -> float | None:
        """Publish one pair, wait for both outputs of its stamp; ms, or ``None`` when lost."""
        from rgbt_perception.core.image_codec import array_to_image

        stamp = self._node.get_clock().now().to_msg()
        key = stamp.sec * 1_000_000_000 + stamp.nanosec
        rgb_msg = array_to_image(rgb, "rgb8")
        thermal_msg = array_to_image(thermal, "mono16")
        for msg in (rgb_msg, thermal_msg):
            msg.header.stamp = stamp
            msg.header.frame_id = "camera"
        self._arrivals.clear()
        started = time.perf_counter()
        self._thermal_pub.publish(thermal_msg)
        self._rgb_pub.publish(rgb_msg)
        deadline = started + self.timeout_s
        wanted = (("semantic", key), ("detections", key))
        while time.perf_counter() < deadline:
            if all(k in self._arrivals for k in wanted):
                self.received += 1
                return (max(self._arrivals[k] for k in wanted) - started) * 1e3
            if self.process.poll() is not None:
                raise BenchError(f"{NODE_EXECUTABLE} died during the measurement: {self._log_tail()}")
            self._executor.spin_once(timeout_sec=0.01)
        self.lost += 1
        return None


# ------------------------------------------------------------------------------------------------
# Measurements


def progress_bar(total: int, description: str) -> Any:
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
    import torch

    from rgbt_perception.inference import InferenceEngine
    from rgbt_perception.model import count_parameters
    from rgbt_perception.core.preprocess import to_model_inputs
    from rgbt_perception.io.weights import save_weights

    frame_size = settings.size
    rgb, thermal = synthetic_pair(frame_size, settings.seed)
    total, trainable = count_parameters(model)
    reset_gpu_peak(settings.device)

    node = None
    node_error = None
    if settings.node and variant == settings.node_variant:
        weights_path = os.path.join(workdir, f"{variant}.safetensors")
        save_weights(weights_path, model, metadata)
        node = NodeRoundTrip(weights_path, settings.device, settings.precision,
                             settings.threads or torch.get_num_threads(), settings.node_timeout_s,
                             os.path.join(workdir, f"node_{variant}.log"))
        try:
            node.start()
        except BenchError as exc:
            node_error = str(exc)
            node.stop()
            node = None

    engine = InferenceEngine.from_model(model, metadata, device=settings.device, precision=settings.precision)
    rgb_in, thermal_in = to_model_inputs(rgb, thermal, engine.input_size, engine.scaling)
    options = ForwardOptions(settings.device, settings.precision, settings.channels_last, settings.compile,
                             settings.cuda_graphs)
    runner = ForwardRunner(engine.model, options, rgb_in, thermal_in)
    if options.compile or options.cuda_graphs:
        # The engine must run what the bare measurement runs, or the ratio compares two models.
        engine.model = _CallAsModel(runner, engine.model)

    stages: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": [], "total": []}
    detections: list[int] = []

    def engine_once() -> float:
        started = time.perf_counter()
        result = engine.infer(rgb, thermal)
        elapsed = (time.perf_counter() - started) * 1e3
        for name in stages:
            stages[name].append(result.timings_ms[name])
        detections.append(len(result.detections))
        return elapsed

    # CPU time next to wall time: on a machine shared with other work the CPU seconds a frame
    # costs are far steadier than its wall time (with --threads 1 they do not depend on load).
    cpu_ms: dict[str, list[float]] = {"model": [], "engine": [], "node": []}

    def with_cpu(name: str, measure: Callable[[], float | None], clock: Callable[[], float]) -> Callable[[], float | None]:
        def run() -> float | None:
            before = clock()
            wall = measure()
            if wall is not None:
                cpu_ms[name].append((clock() - before) * 1e3)
            return wall
        return run

    measures: dict[str, Callable[[], float | None]] = {
        "model": with_cpu("model", runner.timed, time.process_time),
        "engine": with_cpu("engine", engine_once, time.process_time),
    }
    if node is not None:
        node_pid = node.process.pid

        def node_once() -> float | None:
            nonlocal node_error
            if node_error is not None:
                return None
            try:
                return node.round_trip(rgb, thermal)
            except BenchError as exc:  # the node died: keep the model and engine numbers
                node_error = str(exc)
                return None

        measures["node"] = with_cpu("node", node_once, lambda: process_cpu_s(node_pid))
    with progress_bar(settings.warmup + settings.iters, f"{variant} {frame_size[0]}x{frame_size[1]}") as bar:
        try:
            samples = interleave(measures, settings.iters, settings.warmup, settings.variant_budget_s, bar)
        finally:
            node_rss = node.stop() if node is not None else None
    measured = len(samples["model"])

    cpu_mean_ms = {
        name: float(np.mean(values[-len(samples[name]):]))
        for name, values in cpu_ms.items() if name in samples and samples[name]
    }
    summary_model = summarize(samples["model"])
    summary_engine = summarize(samples["engine"])
    summary_node = summarize(samples.get("node", []))
    result: dict[str, Any] = {
        "variant": variant,
        "frame_size": list(frame_size),
        "input_size": list(engine.input_size),
        "parameters_total": total,
        "parameters_trainable": trainable,
        "forward_options": options.label(),
        "forward_setup_s": runner.setup_s,
        "model": summary_model,
        "engine": summary_engine,
        "engine_stages_p50_ms": {
            name: float(np.percentile(values[-measured:], 50)) for name, values in stages.items() if values
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
        "node_lost": node.lost if node is not None else None,
        "node_error": node_error,
        "node_peak_rss_mb": node_rss,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": gpu_peak_mb(settings.device),
    }
    engine.release()
    return result


class _CallAsModel:
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


# ------------------------------------------------------------------------------------------------
# Reporting


def _ms(stats: dict[str, float] | None, key: str = "p50_ms") -> str:
    return "–" if not stats else f"{stats[key]:.1f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _diff(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def evaluate_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against this run (only those this run measured)."""
    goals = []
    by_variant = {row["variant"]: row for row in results["variants"]}
    cuda = results["settings"]["device"].startswith("cuda")
    size = tuple(results["settings"]["size"])
    micro = by_variant.get("micro")
    if micro and not cuda and size == (480, 640):
        for key, limit in CPU_GOALS.items():
            value, fastest = micro.get(key), micro.get(f"{key}_min")
            if value is not None:
                goals.append({"goal": f"CPU micro 480x640 {key.replace('_over_', '/')} <= {limit}",
                              "measured": round(value, 3), "measured_min": round(fastest, 3),
                              "measured_cpu": None if micro.get(f"cpu_{key}") is None
                              else round(micro[f"cpu_{key}"], 3),
                              "met": value <= limit})
    if cuda and size == (480, 640):
        for variant, key in (("tiny", "tiny_fps"), ("base_plus", "base_plus_fps")):
            row = by_variant.get(variant)
            if row and row["engine"]:
                fps = row["engine"]["fps"]
                goals.append({"goal": f"GPU {variant} engine >= {GPU_GOALS[key]:.0f} frames/s",
                              "measured": round(fps, 1), "met": fps >= GPU_GOALS[key]})
        for row in results["variants"]:
            if row.get("engine_over_model") is not None:
                value = row["engine_over_model"]
                limit = GPU_GOALS["pipeline_over_model"]
                goals.append({"goal": f"GPU {row['variant']} engine/model <= {limit}",
                              "measured": round(value, 3), "met": value <= limit})
    return goals


def render_markdown(results: dict[str, Any]) -> str:
    """The generated results section (between the marker lines)."""
    machine, settings = results["machine"], results["settings"]
    size = "x".join(str(v) for v in settings["size"])
    lines = [
        RESULTS_BEGIN,
        "## Results",
        "",
        f"Generated by `{results['command']}` on {machine['date_utc']}.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine.get('memory_gib')} GiB; "
        f"torch {machine['torch']} (threads: {machine['torch_threads']}), timm {machine['timm']}, "
        f"Python {machine['python']}; device `{machine['device']}`"
        + (f" ({machine['gpu']}, CUDA {machine.get('cuda')})" if machine.get("gpu") else "") + ".",
        f"- Load average when the run started: {', '.join(str(v) for v in machine['load_average_at_start'])} "
        "(other work shared the machine; the interleaved iterations expose (1), (2) and (3) to the "
        "same noise, so the ratios hold better than the absolute times).",
        f"- Frame {size}, precision {settings['precision']}, forward options "
        f"`{results['variants'][0]['forward_options'] if results['variants'] else '-'}`, random weights "
        "(speed does not depend on training), synthetic frames (RGB uint8, 16-bit thermal).",
        "",
        f"### Network, engine and node at {size}",
        "",
        "(1) bare network forward on preprocessed tensors; (2) `InferenceEngine.infer` end to end; "
        "(3) `rgbt_node` over DDS: publish a pair, receive `semantic` and `detections` of that stamp. "
        "Ratios are of medians, in brackets of the fastest iterations (the least disturbed by other "
        "work on the machine).",
        "",
        "| variant | params (M) | (1) model p50 / p95 ms | (2) engine p50 / p95 ms | (2)/(1) "
        "| (3) node p50 / p95 ms | (3)/(1) | engine fps | iters | peak RSS MiB | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["variants"]:
        node_rss = f" (node {_mb(row['node_peak_rss_mb'])})" if row.get("node_peak_rss_mb") else ""
        lines.append(
            f"| {row['variant']} | {row['parameters_total'] / 1e6:.2f} "
            f"| {_ms(row['model'])} / {_ms(row['model'], 'p95_ms')} "
            f"| {_ms(row['engine'])} / {_ms(row['engine'], 'p95_ms')} "
            f"| {_x(row['engine_over_model'])} ({_x(row['engine_over_model_min'])}) "
            f"| {_ms(row['node'])} / {_ms(row['node'], 'p95_ms')} "
            f"| {_x(row['node_over_model'])} ({_x(row['node_over_model_min'])}) "
            f"| {row['engine']['fps']:.2f} | {row['model']['count']} "
            f"| {_mb(row['peak_rss_mb'])}{node_rss} | {_mb(row['peak_gpu_mb'])} |"
        )
    lines += ["", "Peak RSS: the harness process's peak after the row's measurement; it holds the networks of all "
              "requested variants (kept for the scaling table). The node's is its own process's peak "
              "(`getrusage(RUSAGE_CHILDREN)` after it exits).", ""]
    errors = [row for row in results["variants"] if row.get("node_error")]
    for row in errors:
        lines += [f"Node measurement of {row['variant']} failed: {row['node_error']}", ""]
    lines += ["### CPU time per frame (mean ms)", "",
              "User + system CPU time of the harness process for (1) and (2) and of the node process for "
              "(3), all threads. Unlike wall time it does not grow when other work shares the cores.", "",
              "| variant | (1) model | (2) engine | (2)/(1) | (3) node | (3)/(1) |", "|---|---|---|---|---|---|"]
    for row in results["variants"]:
        cpu = row.get("cpu_ms_per_frame") or {}
        fmt = lambda name: "–" if name not in cpu else f"{cpu[name]:.1f}"  # noqa: E731
        lines.append(f"| {row['variant']} | {fmt('model')} | {fmt('engine')} | {_x(row.get('cpu_engine_over_model'))} "
                     f"| {fmt('node')} | {_x(row.get('cpu_node_over_model'))} |")
    lines += ["", "### Engine stages (median ms)", "",
              "| variant | preprocess | forward | postprocess | total | detections/frame |", "|---|---|---|---|---|---|"]
    for row in results["variants"]:
        st = row["engine_stages_p50_ms"]
        lines.append(f"| {row['variant']} | {st.get('preprocess', 0):.1f} | {st.get('forward', 0):.1f} "
                     f"| {st.get('postprocess', 0):.1f} | {st.get('total', 0):.1f} | {row['detections_per_frame']:.1f} |")
    goals = results.get("goals") or []
    if goals:
        lines += ["", "### Goals", "", "| goal | measured (p50 wall) | fastest iterations | CPU time | met (p50) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['measured']} | {g.get('measured_min', '–')} | {g.get('measured_cpu') or '–'} "
                  f"| {'yes' if g['met'] else 'NO'} |" for g in goals]
    if results.get("scaling"):
        sizes = []
        for row in results["scaling"]:
            label = "x".join(map(str, row["frame_size"]))
            if label not in sizes:
                sizes.append(label)
        lines += ["", "### Scaling: bare forward p50 ms (both modalities)", "",
                  "Network input = frame size rounded up to multiples of 32 (720x1280 runs at 736x1280).", "",
                  "| variant | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for variant in dict.fromkeys(row["variant"] for row in results["scaling"]):
            cells = {"x".join(map(str, r["frame_size"])): r for r in results["scaling"] if r["variant"] == variant}
            lines.append(f"| {variant} | " + " | ".join(_ms(cells[s]["model"]) if s in cells else "–"
                                                         for s in sizes) + " |")
        if results.get("scaling_plot"):
            lines += ["", f"![scaling]({results['scaling_plot']})"]
    if results.get("steps"):
        lines += ["", f"### Speed-up steps ({results['settings']['steps_variant']}, {size}, bare forward)", "",
                  "Steps are cumulative; gain = previous step's p50 / this step's p50 (for the probes: the "
                  "time in brackets / this time). Setup: compilation or graph capture.", "",
                  "| step | p50 ms | gain | setup s | max abs diff of logits vs fp32 |",
                  "|---|---|---|---|---|"]
        for row in results["steps"]:
            if "error" in row:
                lines.append(f"| {row['step']} | failed: {row['error']} | | | |")
                continue
            extra = f" (against {_ms(row['baseline'])})" if "baseline" in row else ""
            gain = row.get("gain_over_previous")
            lines.append(f"| {row['step']} | {_ms(row['model'])}{extra} | {'–' if gain is None else f'{gain:.2f}x'} "
                         f"| {row.get('setup_s', 0.0):.1f} | {_diff(row.get('semantic_max_abs_diff'))} |")
    onnx = results.get("onnx")
    if onnx:
        lines += ["", f"### ONNX ({onnx['variant']}, input {'x'.join(map(str, onnx['input_size']))}, "
                  f"opset {onnx['opset']})", "",
                  f"- Export {onnx['export_s']:.1f} s, {onnx['file_bytes'] / 2**20:.1f} MiB; max abs difference "
                  f"onnxruntime vs PyTorch: semantic {onnx['max_abs_diff'].get('semantic', float('nan')):.2e}, "
                  f"all outputs {max(onnx['max_abs_diff'].values()):.2e}.",
                  f"- CPU forward p50: PyTorch {_ms(onnx['torch_cpu'])} ms, onnxruntime "
                  f"{_ms(onnx['onnxruntime_cpu'])} ms."]
    lines += ["", RESULTS_END, ""]
    return "\n".join(lines)


def write_markdown(path: str, section: str) -> None:
    """Replace the results section of ``path`` (or append it; create the file if missing)."""
    text = ""
    if os.path.exists(path):
        with open(path) as handle:
            text = handle.read()
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head = text[: text.index(RESULTS_BEGIN)]
        tail = text[text.index(RESULTS_END) + len(RESULTS_END):].lstrip("\n")
        text = head + section + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "# Benchmarks\n\n") + section
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def plot_scaling(rows: list[dict[str, Any]], path: str) -> str:
    """Bare-forward time against input pixels, one line per variant (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for number, variant in enumerate(dict.fromkeys(row["variant"] for row in rows)):
        cells = [r for r in rows if r["variant"] == variant and r["model"]]
        pixels = [r["input_size"][0] * r["input_size"][1] / 1e3 for r in cells]
        ax.plot(pixels, [r["model"]["p50_ms"] for r in cells], "o-", label=variant)
        # Every variant runs the same sizes: name them once, along the first line.
        for r, x in zip(cells if number == 0 else [], pixels):
            ax.annotate("x".join(map(str, r["frame_size"])), (x, r["model"]["p50_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network input (kilopixels)")
    ax.set_ylabel("forward p50 (ms), both modalities")
    ax.set_title("rgbt-bench: cost against resolution and model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_summary(results: dict[str, Any]) -> None:
    for row in results["variants"]:
        text = (f"{row['variant']:>10}: model p50 {_ms(row['model'])} ms, engine p50 {_ms(row['engine'])} ms "
                f"(x{_x(row['engine_over_model'])}, fastest x{_x(row['engine_over_model_min'])}), "
                f"{row['engine']['fps']:.2f} frames/s")
        if row["node"]:
            text += (f", node p50 {_ms(row['node'])} / p95 {_ms(row['node'], 'p95_ms')} ms "
                     f"(x{_x(row['node_over_model'])}, fastest x{_x(row['node_over_model_min'])})")
        text += f", peak RSS {_mb(row['peak_rss_mb'])} MiB"
        if row["peak_gpu_mb"] is not None:
            text += f", peak GPU {_mb(row['peak_gpu_mb'])} MiB"
        print(text)
    for goal in results.get("goals") or []:
        print(f"goal {goal['goal']}: {goal['measured']} ({'met' if goal['met'] else 'NOT met'})")


# ------------------------------------------------------------------------------------------------
# Entry point


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

    from rgbt_perception.inference import check_precision, resolve_device

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "rgbt-bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from_args(args)
        results = run(settings, command.strip(), lambda partial: write_outputs(partial, args.out, args.json))
        write_outputs(results, args.out, args.json)
    except BenchError as exc:
        print(f"rgbt-bench: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"rgbt-bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rgbt-bench: interrupted (finished phases are written)", file=sys.stderr)
        return 130
    print_summary(results)
    for path in (args.out, args.json):
        if path:
            print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
