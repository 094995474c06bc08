"""What every inference backend does around the network, without torch: input checks, thermal onto
the output grid, and the results (:class:`Detection`, :class:`InferenceResult`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from rgbt_perception.core.preprocess import check_rgb
from rgbt_perception.core.registration import check_size, check_thermal, warp_thermal_to_rgb

Homography = np.ndarray | Sequence[float] | None


@dataclass(frozen=True)
class Detection:
    """One detected object; box corners in RGB pixels (thermal pixels when RGB is missing and no
    ``output_size`` was given)."""

    class_id: int
    label: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InferenceResult:
    """Output for one pair.

    ``mask``: HxW uint8 class ids at RGB resolution (at ``output_size`` when RGB is missing and one
    was given, else thermal's). ``overlay``: HxWx3 uint8 or ``None``. ``timings_ms``: ``preprocess``,
    ``forward``, ``postprocess``, ``total`` of the call that produced this result (for a batch: the
    whole batch).
    """

    mask: np.ndarray
    detections: list[Detection]
    overlay: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedFrame:
    """One pair checked and registered: ``thermal`` is on the output grid whenever RGB is present or
    the output size was given; ``size`` is the output ``(H, W)``; ``backdrop`` the image to draw on."""

    rgb: np.ndarray | None
    thermal: np.ndarray | None
    size: tuple[int, int]
    backdrop: np.ndarray


def batch_items(pairs: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
                homographies: Sequence[Homography] | None = None,
                output_sizes: Sequence[Sequence[int] | None] | None = None,
                ) -> list[tuple[int, np.ndarray | None, np.ndarray | None, Homography, Sequence[int] | None]]:
    """``(index, rgb, thermal, homography, output_size)`` per pair of an ``infer_batch`` call; the
    optional per-pair lists must match ``pairs`` in length."""
    if homographies is not None and len(homographies) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(homographies)} homographies")
    if output_sizes is not None and len(output_sizes) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(output_sizes)} output sizes")
    return [(index, rgb, thermal, None if homographies is None else homographies[index],
             None if output_sizes is None else output_sizes[index])
            for index, (rgb, thermal) in enumerate(pairs)]


def prepare_frame(index: int, rgb: np.ndarray | None, thermal: np.ndarray | None, homography: Homography,
                  requested_size: Sequence[int] | None = None) -> PreparedFrame:
    """Check a pair and put thermal onto the output grid; errors name the pair ``index``.

    Args:
        rgb: HxWx3 uint8 or ``None``; thermal: hxw uint8/uint16/float32 or ``None`` (not both ``None``).
        homography: thermal -> RGB pixels (``None``: same field of view).
        requested_size: output ``(H, W)`` for a thermal-only frame (the RGB camera's once known).
    """
    if rgb is None and thermal is None:
        raise ValueError(f"pair {index}: both rgb and thermal are missing; at least one modality is required")
    if rgb is not None:
        check_rgb(rgb, f"pair {index}: rgb")
    if thermal is not None:
        thermal = check_thermal(thermal, f"pair {index}: thermal")
    output_size = rgb.shape[:2] if rgb is not None else thermal.shape
    if requested_size is not None:
        requested_size = check_size(requested_size, f"pair {index}: output_size")
        if rgb is not None and requested_size != tuple(rgb.shape[:2]):
            raise ValueError(f"pair {index}: output_size {requested_size} differs from the RGB frame's "
                             f"{tuple(rgb.shape[:2])}")
        output_size = requested_size
    # Thermal goes onto the RGB grid with RGB present, and alone when the RGB geometry is given:
    # the outputs of a thermal-only frame then line up with the fused ones.
    if thermal is not None and (rgb is not None or requested_size is not None):
        try:
            thermal = warp_thermal_to_rgb(thermal, homography, output_size)
        except ValueError as exc:
            raise ValueError(f"pair {index}: {exc}") from None
    return PreparedFrame(rgb, thermal, tuple(int(v) for v in output_size), rgb if rgb is not None else thermal)


def detections_on_output(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                         input_size: Sequence[int], output_size: Sequence[int]) -> list[Detection]:
    """Decoded boxes (``N, 4`` xyxy in network input pixels) as detections in output pixels, clipped."""
    in_h, in_w = input_size
    out_h, out_w = output_size
    scale = np.array([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h], np.float32)
    corners = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
    corners = np.clip(corners, 0, [out_w, out_h, out_w, out_h])
    return [
        Detection(class_id=int(label), label=class_names[int(label)], score=float(score), x_min=float(box[0]),
                  y_min=float(box[1]), x_max=float(box[2]), y_max=float(box[3]))
        for box, score, label in zip(corners, np.asarray(scores), np.asarray(labels))
    ]
