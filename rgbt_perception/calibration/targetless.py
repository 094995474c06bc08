"""Targetless thermal-to-RGB homography from ordinary scenes, all pairs at once.

Both cameras agree on where object boundaries are (a warm body, a road edge, the horizon),
not on brightness, so everything here compares edges, blind to contrast polarity:

1. Pairs with too few edges in either camera are set aside (a night RGB frame of black sky,
   a thermal frame of one temperature).
2. Coarse search (:func:`dense.search`): scale and roll hypotheses around the starting map,
   translation from a masked normalised cross-correlation of edge maps, averaged over pairs.
3. Dense refinement (:func:`dense.refine`): all 8 degrees of freedom on the pairs' weighted
   mean correlation at 96 and 192 px width. Good to a few pixels.
4. Edge refinement (:func:`edges.refine_icp`): thermal edge points pulled onto RGB edges of the
   same orientation at full resolution, robustly, with a shrinking match radius.
5. Evidence and refusal: a pair *supports* the estimate when clearly more of its edge points
   match at the estimate than with the thermal image shifted a few pixels; the corner
   uncertainty comes from how much the supporting pairs disagree (a cluster-robust
   covariance). Too few supporting pairs, an undetermined direction (for example only
   horizontal edges) or an implausible map raise :class:`CalibrationRefused`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import dense
from rgbt_perception.calibration import edges as ed
from rgbt_perception.calibration import features as ft


class CalibrationRefused(RuntimeError):
    """The data cannot determine the homography; the message says why."""


@dataclass(frozen=True)
class TargetlessOptions:
    """Settings of :func:`estimate_targetless` (defaults measured in docs/calibration.md).

    Search ranges are relative to the starting map: ``scale_range`` and ``max_angle_deg``
    (roll), ``max_shift`` a fraction of the RGB size. ``work_width`` caps the resolution of the
    edge stage. A pair *has structure* with at least ``min_edge_fraction`` of its pixels on
    edges in both cameras and *supports* the estimate when its ``agreement`` reaches
    ``min_agreement``; fewer than ``min_pairs`` supporting pairs or a corner uncertainty above
    ``max_corner_sigma_px`` is a refusal.
    """

    levels: tuple[int, ...] = (96,)
    search_width: int = 64
    scale_range: tuple[float, float] = (0.6, 1.6)
    scale_step: float = 0.08
    max_angle_deg: float = 4.0
    angle_step_deg: float = 4.0
    max_shift: float = 0.25
    search: bool = True
    search_pairs: int = 16
    work_width: int = 1280
    edge_sigma: float = 1.5
    icp_radii: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0)
    min_edge_fraction: float = 0.002
    min_agreement: float = 0.1
    min_pairs: int = 3
    max_corner_sigma_px: float = 2.0


@dataclass
class PairScore:
    """One pair against the estimate: ``points`` thermal edge points, ``inliers`` matched
    within 2 px and 25 degrees, ``agreement`` along x and y (inliers minus the most with the
    thermal image shifted by 6 px along that axis, over points), ``rms_px`` point-to-edge RMS
    of the inliers and ``shift_px`` the translation this pair alone would add (RGB px)."""

    name: str
    points: int
    inliers: int
    agreement: tuple[float, float]
    rms_px: float
    shift_px: tuple[float, float]
    supporting: bool


@dataclass
class TargetlessResult:
    """The estimate (3x3 thermal -> RGB, full resolution) and its evidence.

    ``residual_px``: RMS point-to-edge distance of the supporting pairs' matched points;
    ``corner_sigma_px``: standard deviation (largest over the 4 thermal image corners, RGB px)
    implied by the disagreement between supporting pairs; ``coarse``: the dense-stage map.
    """

    homography: np.ndarray
    start: np.ndarray
    coarse: np.ndarray
    pairs_total: int
    pairs_with_structure: int
    pairs: list[PairScore]
    residual_px: float
    corner_sigma_px: float
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_supporting(self) -> int:
        return sum(p.supporting for p in self.pairs)


def _work_size(size: Sequence[int], width: int) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if size[1] <= width else ft.level_size(size, width)


def estimate_targetless(
    rgb_images: Sequence[np.ndarray],
    thermal_images: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    start: np.ndarray | None = None,
    options: TargetlessOptions = TargetlessOptions(),
    progress: Callable[[int], None] | None = None,
) -> TargetlessResult:
    """Estimate the thermal -> RGB homography from scene structure shared by many pairs.

    Args:
        rgb_images: ``H, W, 3`` uint8 RGB (or ``H, W`` grey), one size for all.
        thermal_images: ``h, w`` uint8/uint16/float32 thermal, one size for all.
        names: pair names for the report (default: indices).
        start: prior homography; ``None`` starts from the same field of view (thermal
            resized onto the RGB grid). The search covers ``options`` ranges around it.
        progress: called with a number of work units done (see :func:`work_units`).

    Raises:
        CalibrationRefused: too few pairs with structure in both cameras or supporting the
            estimate, a direction the data leave undetermined, or an implausible map.
        ValueError: image lists of different lengths or sizes.
    """
    timings: dict[str, float] = {}
    tick = progress if progress is not None else (lambda n: None)
    clock = time.perf_counter()
    if len(rgb_images) != len(thermal_images):
        raise ValueError(f"{len(rgb_images)} RGB images but {len(thermal_images)} thermal images")
    if not rgb_images:
        raise CalibrationRefused("no image pairs to calibrate from")
    names = [str(i) for i in range(len(rgb_images))] if names is None else [str(n) for n in names]
    rgb_full, thermal_full = tuple(rgb_images[0].shape[:2]), tuple(thermal_images[0].shape[:2])
    for rgb, thermal, name in zip(rgb_images, thermal_images, names):
        if tuple(rgb.shape[:2]) != rgb_full or tuple(thermal.shape[:2]) != thermal_full:
            raise ValueError(f"pair {name}: sizes RGB {rgb.shape[1]}x{rgb.shape[0]}, thermal {thermal.shape[1]}x"
                             f"{thermal.shape[0]} differ from the first pair's (RGB {rgb_full[1]}x{rgb_full[0]}, "
                             f"thermal {thermal_full[1]}x{thermal_full[0]}): one calibration is for one camera pair")
    rgb_work, thermal_work = _work_size(rgb_full, options.work_width), _work_size(thermal_full, options.work_width)
    rgb_scale, thermal_scale = ft.resize_matrix(rgb_full, rgb_work), ft.resize_matrix(thermal_full, thermal_work)
    rgb_grays = [ft.resize_to(ft.to_gray(im), rgb_work) for im in rgb_images]
    thermal_grays = [ft.resize_to(ft.to_gray(im), thermal_work) for im in thermal_images]
    targets = [ed.EdgeTarget(g, options.edge_sigma) for g in rgb_grays]
    sources = [ed.edge_points(g, options.edge_sigma)[0] for g in thermal_grays]
    tick(len(rgb_images))
    rgb_min = options.min_edge_fraction * rgb_work[0] * rgb_work[1]
    thermal_min = options.min_edge_fraction * thermal_work[0] * thermal_work[1]
    usable = [i for i in range(len(names)) if targets[i].count >= rgb_min and len(sources[i].points) >= thermal_min]
    if len(usable) < options.min_pairs:
        raise CalibrationRefused(
            f"too little shared structure: {len(usable)} of {len(names)} pairs show edges in both cameras "
            f"(at least {options.min_pairs} needed); record scenes with warm objects, road edges or a horizon "
            "in view, or use a heated checkerboard (--target checkerboard)")
    start = ft.same_view_homography(thermal_full, rgb_full) if start is None else np.asarray(start, np.float64)
    start = start / start[2, 2]
    timings["edges"] = time.perf_counter() - clock

    clock = time.perf_counter()
    coarse = _dense_stage([rgb_grays[i] for i in usable], [thermal_grays[i] for i in usable], rgb_full,
                          thermal_full, start, options, tick)
    timings["dense"] = time.perf_counter() - clock

    clock = time.perf_counter()
    work = ft.level_homography(coarse, thermal_scale, rgb_scale)
    use_t, use_s = [targets[i] for i in usable], [sources[i] for i in usable]
    icp = ed.refine_icp(use_t, use_s, work, rgb_work, radii=options.icp_radii)
    # Second pass with only the pairs that support the first estimate.
    agreement = _agreement(use_t, use_s, icp.homography)
    supporting = agreement.max(axis=1) >= options.min_agreement
    if supporting.sum() >= options.min_pairs and not supporting.all():
        icp = ed.refine_icp(use_t, use_s, icp.homography, rgb_work, weights=supporting.astype(float),
                            radii=options.icp_radii[-2:])
        agreement = _agreement(use_t, use_s, icp.homography)
        supporting = agreement.max(axis=1) >= options.min_agreement
    tick(1)
    estimate = ft.full_homography(icp.homography, thermal_scale, rgb_scale)
    timings["edges"] += time.perf_counter() - clock

    work_to_full = float(rgb_full[1]) / rgb_work[1]
    pairs = []
    for k, i in enumerate(usable):
        shift = tuple(float(v) * work_to_full for v in icp.shift_px[k])
        pairs.append(PairScore(names[i], int(icp.points[k]), int(icp.inliers[k]),
                               (float(agreement[k, 0]), float(agreement[k, 1])),
                               float(icp.rms_px[k]) * work_to_full, shift, bool(supporting[k])))
    chosen = [k for k in range(len(usable)) if supporting[k]]
    residual = float(math.sqrt(np.nansum([icp.rms_px[k] ** 2 * icp.inliers[k] for k in chosen])
                               / max(sum(icp.inliers[k] for k in chosen), 1))) * work_to_full if chosen else math.nan
    sigma = _corner_sigma(icp, chosen, thermal_work) * work_to_full if chosen else math.inf
    result = TargetlessResult(estimate, start, coarse, len(names), len(usable), pairs, residual, sigma, timings)
    _check(result, rgb_full, thermal_full, options)
    return result


def work_units(pairs: int, options: TargetlessOptions = TargetlessOptions()) -> int:
    """How many units :func:`estimate_targetless` reports through ``progress`` (for a bar)."""
    return pairs + len(_scales(options)) * len(_angles(options)) * options.search + len(options.levels) + 1


def _scales(opts: TargetlessOptions) -> np.ndarray:
    low, high = opts.scale_range
    steps = max(1, int(round(math.log(high / low) / math.log1p(opts.scale_step))))
    return np.exp(np.linspace(math.log(low), math.log(high), steps + 1))


def _angles(opts: TargetlessOptions) -> np.ndarray:
    count = int(round(opts.max_angle_deg / opts.angle_step_deg)) if opts.angle_step_deg > 0 else 0
    return np.linspace(-opts.max_angle_deg, opts.max_angle_deg, 2 * count + 1) if count else np.zeros(1)


def _dense_stage(rgb_grays: list[np.ndarray], thermal_grays: list[np.ndarray], rgb_full: tuple[int, int],
                 thermal_full: tuple[int, int], start: np.ndarray, opts: TargetlessOptions,
                 tick: Callable[[int], None]) -> np.ndarray:
    """Search plus correlation refinement; returns the full-resolution map (a few px off)."""

    def make_level(rgb_width: int, homography: np.ndarray) -> dense.Level:
        # Thermal at the level's RGB pixel size, so both edge maps are equally blurred.
        scale = dense.linear_scale(homography, thermal_full)
        thermal_width = int(round(thermal_full[1] * rgb_width / rgb_full[1] / max(scale, 1e-3)))
        thermal_width = max(16, min(thermal_width, thermal_full[1], 2 * rgb_width))
        return dense.Level(rgb_grays, thermal_grays, rgb_full, thermal_full, min(rgb_width, rgb_full[1]),
                           thermal_width)

    hypotheses = [start]
    if opts.search:
        level = make_level(opts.search_width, start)
        # The most structured pairs carry the search (its cost grows with every pair).
        strength = [float(np.mean(np.abs(t))) * float(np.mean(np.abs(r))) for t, r in zip(level.thermal, level.rgb)]
        chosen = sorted(np.argsort(strength)[::-1][: opts.search_pairs].tolist())
        found = dense.search(level, chosen, start, thermal_full, _scales(opts), _angles(opts), opts.max_shift,
                             lambda: tick(1))
        hypotheses = [h for _, h in found[:4]]
    estimate = start
    for depth, rgb_width in enumerate(opts.levels):
        level = make_level(rgb_width, hypotheses[0] if depth == 0 else estimate)
        best = None
        for candidate in (hypotheses if depth == 0 else [estimate]):
            nccs = np.array([level.evaluate(level.to_level(candidate), i, gradients=False)[0]
                             for i in range(len(rgb_grays))])
            # Pairs weigh by how much they agree already: one that shares nothing drops out.
            refined, _ = dense.refine(level, candidate, np.maximum(nccs, 0.0), iterations=8 if depth == 0 else 12)
            mean = float(np.mean([level.evaluate(level.to_level(refined), i, gradients=False)[0]
                                  for i in range(len(rgb_grays))]))
            if best is None or mean > best[1]:
                best = (refined, mean)
        estimate = best[0]
        tick(1)
    return estimate


def _agreement(targets: list[ed.EdgeTarget], sources: list[ed.EdgePoints], homography: np.ndarray,
               radius: float = 2.0, shift: float = 6.0) -> np.ndarray:
    """Per pair and axis (N, 2): (points matched at ``homography`` - the most matched with the
    thermal image moved by ``shift`` px either way along x, resp. y) / edge points.

    Chance coincidences of edges cancel out; a pair that shows only horizontal edges (a
    horizon) agrees along y and not along x.
    """
    out = np.zeros((len(sources), 2))
    for k, (target, source) in enumerate(zip(targets, sources)):
        if len(source.points) == 0:
            continue
        here = int(ed.match(target, source, homography, radius)[3].sum())
        for axis in range(2):
            off = 0
            for sign in (1.0, -1.0):
                move = np.eye(3)
                move[axis, 2] = sign * shift
                off = max(off, int(ed.match(target, source, move @ homography, radius)[3].sum()))
            out[k, axis] = (here - off) / len(source.points)
    return out


def _corner_sigma(icp: ed.IcpResult, chosen: Sequence[int], thermal_size: Sequence[int]) -> float:
    """Largest corner standard deviation (work px) of the estimate.

    Covariance of the increment: H^-1 S H^-1 + a H^-1, with H the summed normal matrix of the
    supporting pairs, S the spread of their gradients at the joint optimum (cluster-robust:
    how much the pairs disagree) and a H^-1 the point-noise term, which grows without bound
    along a direction no edge constrains (only horizontal edges leave x free).
    """
    hessian = sum(icp.pair_hessians[k] for k in chosen)
    count = len(chosen)
    spread = sum(np.outer(icp.pair_gradients[k], icp.pair_gradients[k]) for k in chosen) * count / max(count - 1, 1)
    traces = np.array([np.trace(icp.pair_hessians[k]) for k in chosen])
    noise = float(np.sum(icp.pair_noise[list(chosen)] * traces) / max(traces.sum(), 1e-300))
    values, vectors = np.linalg.eigh(0.5 * (hessian + hessian.T))
    if values[-1] <= 0:
        return math.inf
    inverse = (vectors / np.maximum(values, values[-1] * 1e-15)) @ vectors.T
    covariance = inverse @ spread @ inverse + noise * inverse
    jac = ed.corner_jacobian(icp.homography, icp.rgb_normaliser, thermal_size)
    corners = jac @ covariance @ jac.T
    worst = 0.0
    for c in range(4):
        block = corners[2 * c:2 * c + 2, 2 * c:2 * c + 2]
        worst = max(worst, float(np.linalg.eigvalsh(0.5 * (block + block.T))[-1]))
    return math.sqrt(max(worst, 0.0))


def _check(result: TargetlessResult, rgb_full: Sequence[int], thermal_full: Sequence[int],
           opts: TargetlessOptions) -> None:
    supporting = result.pairs_supporting
    if supporting < opts.min_pairs:
        raise CalibrationRefused(
            f"no consistent alignment: only {supporting} of {result.pairs_with_structure} pairs with structure "
            f"agree on one homography (at least {opts.min_pairs} needed); the cameras may not see the same "
            "scene, the pairs may be mismatched, or the scenes share too little structure")
    for axis, name, other in ((0, "x", "vertical"), (1, "y", "horizontal")):
        if not any(p.supporting and p.agreement[axis] >= opts.min_agreement for p in result.pairs):
            raise CalibrationRefused(
                f"the shared structure does not fix the {name} direction: no pair has edges that line up only at "
                f"the estimate along {name} (all shared edges run one way, e.g. only a horizon); add scenes with "
                f"{other} edges (poles, walls, people, cars)")
    if not math.isfinite(result.corner_sigma_px) or result.corner_sigma_px > opts.max_corner_sigma_px:
        raise CalibrationRefused(
            f"the shared structure does not pin the homography down: the thermal image corners are uncertain by "
            f"{result.corner_sigma_px:.1f} px (limit {opts.max_corner_sigma_px:g} px); add pairs with structure in "
            "other places and orientations (horizontal and vertical edges, objects near the image borders)")
    footprint = ft.thermal_footprint(result.homography, thermal_full)
    area = 0.5 * abs(ft.cross2(footprint[2] - footprint[0], footprint[3] - footprint[1]))
    ratio = area / float(rgb_full[0] * rgb_full[1])
    hull = cv2.convexHull(footprint.astype(np.float32), returnPoints=False)
    if len(hull) != 4 or not 0.05 <= ratio <= 20.0 or np.linalg.det(result.homography[:2, :2]) <= 0:
        raise CalibrationRefused(
            f"the estimate is implausible (thermal footprint {ratio:.2f} times the RGB image area, or folded); "
            "the data do not determine the homography")
