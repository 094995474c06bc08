"""Edge points of many pairs at one resolution, weighed by how often they repeat, and the
edge ICP between them (the working level of :mod:`rgbt_perception.calibration.targetless`)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import dense
from rgbt_perception.calibration import edges as ed
from rgbt_perception.calibration import features as ft


def work_size(size: Sequence[int], width: int) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if size[1] <= width else ft.level_size(size, width)


# A thermal edge found at the same place in more than REPEATS pairs is static structure; all
# its copies together weigh STATIC_WEIGHT pairs' worth.
REPEATS = 3.0
STATIC_WEIGHT = 0.03


class EdgeLevel:
    """RGB edge targets and thermal edge points of some pairs at one resolution, and the ICP
    between them in full-resolution coordinates.

    Args:
        rgb_grays / thermal_grays: ``H, W`` float32 full frames (:func:`features.to_gray`).
        rgb_full / thermal_full: their ``(H, W)``; ``rgb_size`` / ``thermal_size`` this level's.
    """

    def __init__(self, rgb_grays: Sequence[np.ndarray], thermal_grays: Sequence[np.ndarray],
                 sizes: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]], sigma: float,
                 locate_sigma: float | None = None, static_weight: float = STATIC_WEIGHT) -> None:
        rgb_full, thermal_full, self.rgb_size, self.thermal_size = (tuple(int(v) for v in s) for s in sizes)
        self.rgb_scale = ft.resize_matrix(rgb_full, self.rgb_size)
        self.thermal_scale = ft.resize_matrix(thermal_full, self.thermal_size)
        self.targets = [ed.EdgeTarget(ft.resize_to(g, self.rgb_size), sigma, locate_sigma) for g in rgb_grays]
        self.sources = [ed.edge_points(ft.resize_to(g, self.thermal_size), sigma, locate_sigma=locate_sigma)[0]
                        for g in thermal_grays]
        count_repeats_once(self.sources, self.thermal_size, static_weight)

    def to_full(self, level_h: np.ndarray) -> np.ndarray:
        return ft.full_homography(level_h, self.thermal_scale, self.rgb_scale)

    def icp(self, homography: np.ndarray, radii: Sequence[float], weights: np.ndarray | None = None,
            dof: int = 8) -> ed.IcpResult:
        """ICP from a full-resolution map (``dof``: see :func:`edges.refine_icp`); the result's
        ``homography`` is at this level."""
        level_h = ft.level_homography(homography, self.thermal_scale, self.rgb_scale)
        return ed.refine_icp(self.targets, self.sources, level_h, self.rgb_size, weights=weights, radii=tuple(radii),
                             dof=dof)


def count_repeats_once(sources: list[ed.EdgePoints], thermal_size: Sequence[int],
                       static_weight: float = STATIC_WEIGHT) -> None:
    """Weigh down thermal edges found at the same place in many pairs (sets their weights).

    In a drive the horizon, the road's edges and the lane lines stay put while the traffic
    moves, and the thermal camera's fixed-pattern stripes repeat as well. The static edges of
    the two cameras are not the same boundaries (the thermal road edge is where the shoulder's
    temperature changes, the RGB one where its colour does, beside the RGB-only edge line; at
    night the RGB road edge is lit only in the headlights' cone), they all run through the
    vanishing point, so they leave the zoom about it loose, and over a minute they outnumber
    the traffic's edges 25 to 1 (a night drive: 64,618 static matched points against 2,566
    on cars and people). Counted as 3 pairs' worth they pulled two night drives' finishes,
    started at the truth, 3.2 and 9.8 px off; counted as 0.03 pairs' worth, 1.3 and 1.7 px,
    where they still settle directions the traffic leaves open (the targetless finish counts
    them more where they agree with the traffic). An edge pixel seen in ``c`` pairs counts 1
    up to ``REPEATS`` and ``static_weight / c`` beyond; in pairs from different places almost
    nothing repeats, and a static scene alone keeps its uniform weights.
    """
    h, w = (int(v) for v in thermal_size)
    reach = max(1, int(round(w / 320.0)))  # the same place: within a pixel or two of a 640 px image
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    cells = []
    seen = np.zeros((h, w), np.float32)
    for source in sources:
        xy = np.clip(np.rint(source.points).astype(np.int64), 0, [w - 1, h - 1])
        mask = np.zeros((h, w), np.uint8)
        mask[xy[:, 1], xy[:, 0]] = 1
        seen += cv2.dilate(mask, kernel)
        cells.append(xy)
    for source, xy in zip(sources, cells):
        count = seen[xy[:, 1], xy[:, 0]]
        source.weights = np.where(count > REPEATS, static_weight / np.maximum(count, 1.0), 1.0).astype(np.float64)


def pyramid_level(rgb_grays, thermal_grays, rgb_full, thermal_full, rgb_width: int, homography: np.ndarray
                  ) -> EdgeLevel:
    """An edge level ``rgb_width`` wide whose thermal pixels are about as large as its RGB ones
    under ``homography`` (both images then blur alike)."""
    rgb_size = work_size(rgb_full, rgb_width)
    scale = dense.linear_scale(homography, thermal_full)
    thermal_width = int(round(thermal_full[1] * rgb_size[1] * scale / rgb_full[1]))
    thermal_size = work_size(thermal_full, max(16, min(thermal_width, 2 * rgb_size[1])))
    return EdgeLevel(rgb_grays, thermal_grays, (rgb_full, thermal_full, rgb_size, thermal_size), 1.0)
