"""The RGB picture at the thermal frame's instant, from the two RGB frames around it.

Free-running cameras expose at different moments. While driving, everything in view moves
between an RGB exposure and the nearest thermal one: 12 ms at 13 m/s moves a near car by
several pixels, and edge alignment then fits the motion as part of the homography (measured
on a synthetic drive: pairs 12 ms apart pulled the corners 12.6 px off, simultaneous ones
0.4 px). The RGB camera runs faster, so a thermal stamp usually lies between two RGB frames;
dense optical flow between them (OpenCV's DIS) moves the nearer one to the thermal instant
(frame interpolation with linear motion over one RGB period, 33 ms at 30 Hz).
"""
from __future__ import annotations

import cv2
import numpy as np

# Flow is estimated on frames at most this wide: DIS at 640 px takes ~20 ms a pair and the
# motion over one RGB period is smooth at that scale; the field is scaled back up.
_FLOW_WIDTH = 640


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image)


def dense_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``H, W, 2`` float32 flow (dx, dy in pixels) taking ``first`` to ``second`` (``H, W, 3``
    uint8 RGB or ``H, W`` uint8): the pixel at ``(x, y)`` of ``first`` is at ``(x, y) + flow``
    in ``second``."""
    if first.shape != second.shape:
        raise ValueError(f"frames differ in shape: {first.shape} and {second.shape}")
    height, width = first.shape[:2]
    scale = min(1.0, _FLOW_WIDTH / width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    a, b = (cv2.resize(_gray(img), size, interpolation=cv2.INTER_AREA) for img in (first, second))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(a, b, None)
    if scale < 1.0:
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) / scale
    return flow.astype(np.float32)


def frame_between(before: np.ndarray, after: np.ndarray, fraction: float) -> np.ndarray:
    """The frame at ``fraction`` (0 = ``before``, 1 = ``after``) of the way from ``before`` to
    ``after`` (same shape, uint8), assuming each point moves linearly.

    The nearer frame is warped, by its flow to the other frame times the distance in time, so at
    most half an RGB period of motion is interpolated and no two frames are blended (blending
    would double every moving edge wherever the flow is off).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    source, target, step = (before, after, fraction) if fraction <= 0.5 else (after, before, 1.0 - fraction)
    if step == 0.0:
        return source.copy()
    flow = dense_flow(source, target)
    height, width = source.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    # Backward warping with the flow read at the output pixel: accurate where the flow is smooth
    # over the distance moved (a few pixels within half a period).
    map_x = grid_x - step * flow[..., 0]
    map_y = grid_y - step * flow[..., 1]
    return cv2.remap(source, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
