"""The engine interface every backend implements, and the per-frame work they all share.

:class:`Engine` is what the node, the command-line tools, evaluation and the benchmarks hold;
:func:`~rgbt_perception.backends.factory.create_engine` makes one. :class:`FrameEngine` does the
work around the network once for every backend: checks and registration of each pair
(:func:`~rgbt_perception.core.frames.prepare_frame`), scaling and resizing into reused buffers
(:func:`~rgbt_perception.core.preprocess.to_model_arrays`), the per-call timings, detections in
output pixels, drawing. A backend supplies three steps: ``_forward`` (model arrays -> raw
outputs), ``_postprocess_batch`` (raw outputs -> class mask and boxes per pair) and ``_release``.

No torch import here: the onnxruntime engine runs without it.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from rgbt_perception.core.defaults import MAX_DETECTIONS, MAX_PER_CLASS, NMS_IOU, PUBLISH_SCORE_THRESHOLD
from rgbt_perception.core.frames import (
    Detection,
    Homography,
    InferenceResult,
    batch_items,
    detections_on_output,
    prepare_frame,
)
from rgbt_perception.core.overlay import blend_overlay, colorize_mask, draw_detections, gray_to_rgb, palette_lut
from rgbt_perception.core.preprocess import InputBuffers, ThermalScaling, to_model_arrays
from rgbt_perception.core.registration import parse_homography

Pair = tuple[np.ndarray | None, np.ndarray | None]


class NonFiniteOutput(RuntimeError):
    """The network produced NaN or infinite outputs (corrupted weights, a device fault): nothing of
    that call may be published."""


def require_finite(all_finite: bool, what: str) -> None:
    """Raise :class:`NonFiniteOutput` naming ``what`` unless its values were all finite."""
    if not all_finite:
        raise NonFiniteOutput(f"the network's {what} contain NaN or infinite values")


@runtime_checkable
class Engine(Protocol):
    """What every inference engine offers, whatever runs its network."""

    backend: str
    precision: str
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    input_size: tuple[int, int]

    @property
    def device(self) -> str: ...

    def infer(self, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography = None,
              overlay: bool = False, output_size: Sequence[int] | None = None) -> InferenceResult: ...

    def infer_batch(self, pairs: Sequence[Pair], homographies: Sequence[Homography] | None = None,
                    overlay: bool = False, output_sizes: Sequence[Sequence[int] | None] | None = None,
                    ) -> list[InferenceResult]: ...

    def draw(self, image: np.ndarray, mask: np.ndarray, detections: Sequence[Detection],
             alpha: float = 0.5) -> np.ndarray: ...

    def colorize(self, mask: np.ndarray) -> np.ndarray: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class DecodeSettings:
    """How raw box outputs become published detections (class-wise NMS, then caps)."""

    score_threshold: float = PUBLISH_SCORE_THRESHOLD
    nms_iou: float = NMS_IOU
    max_detections: int = MAX_DETECTIONS
    max_per_class: int = MAX_PER_CLASS

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must lie in 0..1, got {self.score_threshold}")
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1], got {self.nms_iou}")
        if int(self.max_detections) < 1 or int(self.max_per_class) < 1:
            raise ValueError(f"max_detections and max_per_class must be >= 1, got {self.max_detections}, "
                             f"{self.max_per_class}")


def decode_settings(decode: DecodeSettings | None = None, score_threshold: float | None = None,
                    nms_iou: float | None = None, max_detections: int | None = None) -> DecodeSettings:
    """``decode`` (default: the published boxes' settings) with the values given one by one replaced."""
    settings = decode or DecodeSettings()
    changes = {name: value for name, value in (("score_threshold", score_threshold), ("nms_iou", nms_iou),
                                               ("max_detections", max_detections)) if value is not None}
    return replace(settings, **changes) if changes else settings


@dataclass
class PreparedPair:
    """One pair ready for the network: model arrays (``1, C, h, w`` float32, None for a missing
    camera), the output grid ``(H, W)`` and the image overlays are drawn on."""

    rgb: np.ndarray | None
    thermal: np.ndarray | None
    size: tuple[int, int]
    backdrop: np.ndarray

    @property
    def pattern(self) -> tuple[bool, bool]:
        """Which cameras are present: ``(rgb, thermal)``."""
        return self.rgb is not None, self.thermal is not None


@dataclass
class FrameOutput:
    """A backend's result for one pair: ``H, W`` uint8 class ids on the output grid and the kept
    boxes (``N, 4`` xyxy in network input pixels, ``N`` scores, ``N`` class ids)."""

    mask: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class FrameEngine(abc.ABC):
    """The shared part of every engine (see the module docstring).

    Subclasses call :meth:`_init_common` from their constructor, then implement the steps.
    """

    backend: str
    precision: str

    def _init_common(self, class_names: Sequence[str], palette: Sequence[Sequence[int]],
                     input_size: Sequence[int], scaling: ThermalScaling, decode: DecodeSettings,
                     thermal_to_rgb: Homography) -> None:
        self.class_names: list[str] = list(class_names)
        self.palette: list[tuple[int, int, int]] = [tuple(int(v) for v in c) for c in palette]
        self.input_size: tuple[int, int] = (int(input_size[0]), int(input_size[1]))
        self.scaling = scaling
        self.decode = decode
        self.thermal_to_rgb = None if thermal_to_rgb is None else parse_homography(thermal_to_rgb)
        self._palette_lut = palette_lut(self.palette)
        self._buffers = InputBuffers()
        self._released = False

    # -- read-only views -----------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device the network runs on (``cpu``, ``cuda:0``)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def score_threshold(self) -> float:
        return float(self.decode.score_threshold)

    @property
    def nms_iou(self) -> float:
        return float(self.decode.nms_iou)

    @property
    def max_detections(self) -> int:
        return int(self.decode.max_detections)

    @property
    def max_per_class(self) -> int:
        return int(self.decode.max_per_class)

    # -- the interface ----------------------------------------------------------------------------
    def infer(self, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography = None,
              overlay: bool = False, output_size: Sequence[int] | None = None) -> InferenceResult:
        """Segment and detect on one pair (either image may be ``None``).

        Args:
            rgb: ``H, W, 3`` uint8 RGB.
            thermal: ``h, w`` (or ``h, w, 1``) uint8/uint16 raw counts or float32, any resolution.
            homography: thermal -> RGB homography for this pair (overrides ``thermal_to_rgb``).
            overlay: also draw the colour overlay with boxes.
            output_size: ``(H, W)`` of the RGB camera for a thermal-only call: the thermal frame is
                warped onto that grid, so mask, boxes and overlay come out in RGB pixels as when both
                cameras are there. ``None``: thermal pixels. With RGB given it must be None or RGB's size.
        """
        sizes = None if output_size is None else [output_size]
        return self.infer_batch([(rgb, thermal)], homographies=[homography], overlay=overlay, output_sizes=sizes)[0]

    def infer_batch(self, pairs: Sequence[Pair], homographies: Sequence[Homography] | None = None,
                    overlay: bool = False, output_sizes: Sequence[Sequence[int] | None] | None = None,
                    ) -> list[InferenceResult]:
        """Run several pairs; ``output_sizes`` per pair as ``output_size`` of :meth:`infer`. Each
        result's ``timings_ms`` covers the whole call (``preprocess``, ``forward``, ``postprocess``, ``total``)."""
        if self._released:
            raise RuntimeError("the inference engine was released; create a new one")
        items = batch_items(pairs, homographies, output_sizes)
        if not items:
            return []
        start = time.perf_counter()
        prepared = [self._prepare(*item) for item in items]
        inputs = self._to_device(prepared)
        preprocessed = time.perf_counter()
        raw = self._forward(inputs)
        forwarded = time.perf_counter()
        outputs = self._postprocess_batch(raw, prepared)
        results = [self._result(output, item, overlay) for output, item in zip(outputs, prepared)]
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "forward": (forwarded - preprocessed) * 1e3,
            "postprocess": (done - forwarded) * 1e3,
            "total": (done - start) * 1e3,
        }
        for result in results:
            result.timings_ms = dict(timings)
        return results

    def draw(self, image: np.ndarray, mask: np.ndarray, detections: Sequence[Detection],
             alpha: float = 0.5) -> np.ndarray:
        """Colour overlay of ``mask`` and ``detections`` on an RGB (or single-channel thermal) image."""
        backdrop = image if image.ndim == 3 else gray_to_rgb(image)
        return draw_detections(blend_overlay(backdrop, mask, self._palette_lut, alpha), detections, self._palette_lut)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """``H, W`` class ids -> ``H, W, 3`` uint8 colours of this model's palette."""
        return colorize_mask(mask, self._palette_lut)

    def release(self) -> None:
        """Free the network and accelerator memory; the engine cannot infer afterwards."""
        if not self._released:
            self._released = True
            self._release()

    # -- shared steps ---------------------------------------------------------------------------
    def _prepare(self, index: int, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography,
                 requested_size: Sequence[int] | None = None) -> PreparedPair:
        frame = prepare_frame(index, rgb, thermal, self.thermal_to_rgb if homography is None else homography,
                              requested_size)
        # Written into this engine's buffers (pair slot ``index``): a backend copies or consumes them
        # before the next call.
        rgb_array, thermal_array = to_model_arrays(frame.rgb, frame.thermal, self.input_size, self.scaling,
                                                   self._buffers, index)
        return PreparedPair(rgb_array, thermal_array, frame.size, frame.backdrop)

    def _result(self, output: FrameOutput, item: PreparedPair, overlay: bool) -> InferenceResult:
        detections = detections_on_output(output.boxes, output.scores, output.labels, self.class_names,
                                          self.input_size, item.size)
        drawn = self.draw(item.backdrop, output.mask, detections) if overlay else None
        return InferenceResult(mask=output.mask, detections=detections, overlay=drawn)

    # -- backend steps ----------------------------------------------------------------------------
    def _to_device(self, prepared: list[PreparedPair]) -> Any:
        """The network's inputs for ``prepared`` where it runs (counted as preprocessing); by default
        the prepared pairs themselves."""
        return prepared

    @abc.abstractmethod
    def _forward(self, inputs: Any) -> Any:
        """Run the network on what ``_to_device`` returned and wait for the device; returns the raw
        outputs ``_postprocess_batch`` reads."""

    @abc.abstractmethod
    def _postprocess_batch(self, raw: Any, prepared: list[PreparedPair]) -> list[FrameOutput]:
        """Class masks on each pair's output grid and the kept boxes, in the order of ``prepared``."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Drop the network / runtime session and free accelerator memory."""
