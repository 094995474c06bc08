"""The node's ROS parameters: names, defaults, descriptions, ranges and checks (no heavy imports,
so ``rgbt_node --help`` lists them without loading ROS, NumPy or torch)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgbt_perception.core.defaults import (
    BACKEND_CHOICES,
    NMS_IOU,
    PRECISION_CHOICES,
    PUBLISH_SCORE_THRESHOLD,
    SYNC_QUEUE_SIZE,
    SYNC_SLOP,
)

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "micro_synthetic.safetensors"
IDENTITY_HOMOGRAPHY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default, description, optional numeric range or choices.

    ``when`` says when a change takes effect: ``"live"``, ``"configure"`` (next configure)
    or ``"activate"`` (next activate); ``read_only`` parameters are fixed at start-up.
    """

    name: str
    default: Any
    description: str
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False
    when: str = "live"


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("weights", "", "Node weights file (.safetensors); empty = the shipped demo weights.",
                  when="configure"),
    ParameterSpec("device", "auto", "Inference device: auto, cpu, cuda or cuda:N.", when="configure"),
    ParameterSpec("precision", "fp32", "Inference precision: fp32, fp16 (CUDA), bf16, or auto (bf16 on CPUs with "
                  "AVX512-BF16/AMX, fp16 on CUDA, else fp32).", choices=PRECISION_CHOICES, when="configure"),
    ParameterSpec("backend", "torch", "Inference backend: torch; onnxruntime (the weights' ONNX graph, built on "
                  "first use and cached beside them; the node then never loads torch); tensorrt (CUDA); "
                  "torch_resident / torch_graphs / torch_compiled (the whole per-frame step on the device: eager, "
                  "one CUDA graph replayed per frame (CUDA), compiled network; warmed up at configure, falling back "
                  "with a logged reason); auto (the fastest available for device and precision; on a GPU the "
                  "fastest path make gpu-check found to agree with fp32 there).", choices=BACKEND_CHOICES,
                  when="configure"),
    ParameterSpec("sync.slop", SYNC_SLOP, "Largest RGB/thermal stamp difference of a pair, seconds.",
                  value_range=(0.001, 1.0)),
    ParameterSpec("sync.queue_size", SYNC_QUEUE_SIZE, "Messages kept per camera while waiting for a partner; must "
                  "exceed arrival delay difference x RGB rate.", value_range=(1, 100), when="activate"),
    ParameterSpec("score_threshold", PUBLISH_SCORE_THRESHOLD, "Lowest detection score published.",
                  value_range=(0.0, 1.0), when="configure"),
    ParameterSpec("nms_iou", NMS_IOU, "IoU above which overlapping detections are suppressed.", value_range=(0.01, 1.0),
                  when="configure"),
    ParameterSpec("thermal_to_rgb", list(IDENTITY_HOMOGRAPHY),
                  "Homography from thermal to RGB pixels, 9 numbers row-major (identity = same field of view).",
                  when="configure"),
    ParameterSpec("modality_timeout", 0.5, "Seconds without frames after which a camera counts as silent and "
                  "the node publishes from the other one alone.", value_range=(0.05, 60.0)),
    ParameterSpec("qos.reliability", "best_effort", "Reliability of the image subscriptions (sensor-data QoS "
                  "otherwise).", choices=("best_effort", "reliable"), when="activate"),
    ParameterSpec("qos.depth", 5, "History depth of the image subscriptions.", value_range=(1, 100), when="activate"),
    ParameterSpec("rgb_transport", "raw", "raw: sensor_msgs/Image on rgb/image; compressed: "
                  "sensor_msgs/CompressedImage on rgb/image/compressed.", choices=("raw", "compressed"),
                  when="activate"),
    ParameterSpec("thermal_transport", "raw", "raw: sensor_msgs/Image on thermal/image; compressed: "
                  "sensor_msgs/CompressedImage on thermal/image/compressed (16-bit PNG keeps raw counts).",
                  choices=("raw", "compressed"), when="activate"),
    ParameterSpec("publish_color", True, "Publish semantic/color (only computed while someone subscribes)."),
    ParameterSpec("status_period", 1.0, "Seconds between status and /diagnostics messages.",
                  value_range=(0.1, 60.0), when="configure"),
    ParameterSpec("alignment.check", True, "Watch the thermal/RGB registration at run time: one of every "
                  "alignment.every_n fused pairs is scored (thermal edges against RGB edges, on a background "
                  "thread); /diagnostics shows it and a WARN is logged when it stays low.", when="activate"),
    ParameterSpec("alignment.every_n", 30, "Score one of every N fused pairs (30 at 30 Hz: about one a second, "
                  "30-50 ms of one core each).", value_range=(1, 10000), when="activate"),
    ParameterSpec("alignment.threshold", 0.5, "Smoothed alignment score (1 = aligned, about 0.3 when 8 px off) "
                  "below which the registration counts as off.", value_range=(0.0, 1.0), when="activate"),
    ParameterSpec("alignment.warn_after", 10.0, "Seconds the score must stay below alignment.threshold before the "
                  "node warns.", value_range=(1.0, 3600.0), when="activate"),
    ParameterSpec("fault.max_consecutive", 10, "Inference faults in a row (an exception from the engine, CUDA out "
                  "of memory after one retry, non-finite outputs) after which the node gives up on the engine: it "
                  "deactivates, or reloads the weights on the CPU when fault.cpu_fallback is true.",
                  value_range=(1, 100000)),
    ParameterSpec("fault.cpu_fallback", False, "After fault.max_consecutive faults on a GPU, reload the weights on "
                  "the CPU and go on instead of deactivating.", when="live"),
    ParameterSpec("autostart", True, "Configure and activate at start-up, so the node also runs unmanaged.",
                  read_only=True),
)

PARAMETER_SPECS: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


def check_parameter(name: str, value: Any) -> str | None:
    """Reason why ``value`` is not acceptable for parameter ``name`` (None when it is)."""
    spec = PARAMETER_SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.value_range is not None:
        low, high = spec.value_range
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} must be a number in [{low}, {high}]; got {value!r}"
        if not low <= value <= high:
            return f"{name} must lie in [{low}, {high}]; got {value}"
    if name == "device" and not _DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N; got {value!r}"
    if name == "thermal_to_rgb":
        try:
            from rgbt_perception.core.registration import parse_homography

            parse_homography(list(value))
        except (TypeError, ValueError) as exc:
            return f"thermal_to_rgb: {exc}"
    if name == "weights" and value and not str(value).endswith(".safetensors"):
        return f"weights must name a .safetensors file; got {value!r}"
    return None


def resolve_weights(value: str) -> Path:
    """The weights file a parameter value names (empty = the shipped demo weights)."""
    return Path(value).expanduser() if value else DEFAULT_WEIGHTS
