"""Targetless thermal-to-RGB homography from ordinary scenes, all pairs at once.

Both cameras agree on where object boundaries are (a warm car or person, a road edge, the
horizon), not on brightness, so everything here compares edges, blind to contrast polarity:

1. Pairs with too few edges in either camera are set aside (a night RGB frame of black sky,
   a thermal frame of one temperature).
2. Coarse search (:func:`dense.search`): scale and roll hypotheses around the starting map
   (the same field of view and, for different aspect ratios, square pixels), translation from
   a masked normalised cross-correlation of edge-orientation maps, averaged over pairs; with
   many pairs also on the maps less what most pairs show at the same place (a drive's road).
3. Selection: edge ICP (:func:`edges.refine_icp`: thermal edge points pulled onto RGB edges of
   the same orientation; zoom, roll and shift only) from the best hypothesis of every scale
   and start at 240 px width, the three best on at 320 px; ranked by edge points that line up
   only there, along the weaker of x and y. Thermal edges found at the same place in many
   pairs (the horizon and road edges of a drive, fixed-pattern column stripes) count as a
   small part of one pair (:mod:`~rgbt_perception.calibration.edge_level`), so the traffic,
   which moves, decides what the static road leaves loose.
4. Finish: the same ICP with all 8 terms at full resolution over all pairs, then over the
   supporting ones, on edges found at one scale and placed at a finer one (edge focusing);
   repeated with the static edges counted more, kept where that agrees with the traffic.
5. Evidence and refusal: a pair *supports* the estimate when clearly more of its edge points
   match at the estimate than with the thermal image shifted a few pixels; the corner
   uncertainty comes from how much the supporting pairs disagree (a cluster-robust
   covariance). Too few supporting pairs, an undetermined direction (for example only
   horizontal edges), an estimate that moves when the finish is repeated on edges found at
   another scale (an error all pairs share, which their disagreement cannot show) or an
   implausible map raise :class:`CalibrationRefused`, which says what to record to fix it.
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
from rgbt_perception.calibration.edge_level import (
    REPEATS,
    STATIC_WEIGHT,
    EdgeLevel,
    count_repeats_once,
    pyramid_level,
    work_size,
)


class CalibrationRefused(RuntimeError):
    """The data cannot determine the homography; the message says why."""


@dataclass(frozen=True)
class TargetlessOptions:
    """Settings of :func:`estimate_targetless` (defaults measured in docs/calibration.md).

    Search ranges are relative to the starting map: ``scale_range`` and ``max_angle_deg``
    (roll), ``max_shift`` a fraction of the RGB size; the search correlates edge maps
    ``search_width`` px wide over the ``search_pairs`` most structured pairs and keeps the best
    hypothesis of every scale. Each is refined by edge ICP over ``select_pairs`` pairs at the
    first ``pyramid`` width (with match radii in that level's px), the ``finalists`` best
    through the other widths; the best is finished at ``work_width`` (at most) with
    ``icp_radii`` over all pairs. A pair *has structure* with at
    least ``min_edge_fraction`` of its pixels on edges in both cameras and *supports* the
    estimate when its ``agreement`` reaches ``min_agreement`` along x or y. An axis is fixed
    when the supporting pairs' agreement along it adds up to ``min_axis_share`` of their edge
    points, or one pair reaches ``min_agreement`` alone. Fewer than ``min_pairs`` supporting
    pairs, an axis not fixed or a corner uncertainty above ``max_corner_sigma_px`` is a refusal,
    and so is an estimate whose corners move by more than that (mean over the 4) when the
    finish is repeated on edges found at ``check_sigma`` instead of ``edge_sigma`` (``None``
    skips this check). Edges are found at ``edge_sigma`` and placed at the gradient maximum at
    ``locate_sigma`` (edge focusing; ``None``: placed at ``edge_sigma``). With at least
    ``moving_min_pairs`` pairs the search also correlates the edge maps less their per-pixel
    median over the pairs (the static structure of a drive).
    """

    # At 96 px a night drive's RGB frames (headlight cones and lamps) left every hypothesis
    # 100 px or more off though the pairs fix the map to 0.6 px; 160 px finds it.
    search_width: int = 160
    scale_range: tuple[float, float] = (0.6, 1.6)
    scale_step: float = 0.08
    max_angle_deg: float = 4.0
    angle_step_deg: float = 2.0
    max_shift: float = 0.25
    search: bool = True
    search_pairs: int = 16
    select_pairs: int = 60
    finalists: int = 3
    pyramid: tuple[tuple[int, tuple[float, ...]], ...] = ((240, (8.0, 4.0, 2.0)), (320, (6.0, 3.0, 2.0)))
    work_width: int = 1280
    edge_sigma: float = 1.5
    locate_sigma: float | None = 0.5
    icp_radii: tuple[float, ...] = (8.0, 4.0, 2.0)
    min_edge_fraction: float = 0.002
    min_agreement: float = 0.1
    min_axis_share: float = 0.05
    min_pairs: int = 3
    max_corner_sigma_px: float = 2.0
    check_sigma: float | None = 1.0
    moving_min_pairs: int = 8


@dataclass
class PairScore:
    """One pair against the estimate: ``points`` thermal edge points, ``inliers`` matched
    within 2 px and 25 degrees, ``agreement`` along x and y (inliers minus the most with the
    thermal image shifted by 6 px along that axis, over points; points counted by their
    weight: edges repeated in many pairs count less; 2 and 6 thermal pixels where those are
    larger than RGB ones), ``rms_px`` point-to-edge RMS
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
    implied by the disagreement between supporting pairs; ``coarse``: the dense-stage map;
    ``edge_scale_shift_px``: how far (mean over the 4 corners, RGB px) the estimate moves when
    refined on edges found at ``TargetlessOptions.check_sigma`` (NaN: not checked).
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
    edge_scale_shift_px: float = math.nan

    @property
    def pairs_supporting(self) -> int:
        return sum(p.supporting for p in self.pairs)


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
        thermal_images: ``h, w`` uint8/uint16/float32 thermal, one size for all (may differ from RGB).
        names: pair names for the report (default: indices).
        start: prior homography; ``None`` starts from the same field of view (thermal
            resized onto the RGB grid) and, when the two aspect ratios differ, also from
            square pixels. The search covers ``options`` ranges around it.
        progress: called with a number of work units done (see :func:`work_units`).

    Raises:
        CalibrationRefused: too few pairs with structure in both cameras or supporting the
            estimate, a direction the data leave undetermined, or an implausible map.
        ValueError: image lists of different lengths or sizes.
    """
    tick = progress if progress is not None else (lambda n: None)
    clock = time.perf_counter()
    names = _check_inputs(rgb_images, thermal_images, names)
    rgb_full, thermal_full = tuple(rgb_images[0].shape[:2]), tuple(thermal_images[0].shape[:2])
    rgb_grays = [ft.to_gray(im) for im in rgb_images]
    thermal_grays = [ft.remove_column_offsets(ft.to_gray(im)) for im in thermal_images]
    work = EdgeLevel(rgb_grays, thermal_grays, (rgb_full, thermal_full, work_size(rgb_full, options.work_width),
                                                work_size(thermal_full, options.work_width)), options.edge_sigma,
                     options.locate_sigma)
    tick(len(rgb_images))
    usable = _with_structure(work, len(names), options)
    bases = _starts(start, rgb_full, thermal_full)
    timings = {"edges": time.perf_counter() - clock}

    clock = time.perf_counter()
    use_rgb, use_thermal = [rgb_grays[i] for i in usable], [thermal_grays[i] for i in usable]
    coarse = _coarse_stage(use_rgb, use_thermal, rgb_full, thermal_full, bases, options, tick)
    timings["search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    work.targets, work.sources = [work.targets[i] for i in usable], [work.sources[i] for i in usable]
    result, agreement, static_weight = _finish(work, coarse, options, thermal_full,
                                               ([names[i] for i in usable], len(names), (bases[0], coarse), timings))
    tick(1)
    timings["edges"] += time.perf_counter() - clock
    supporting = np.array([p.supporting for p in result.pairs])
    if options.check_sigma is not None and supporting.sum() >= options.min_pairs:
        clock = time.perf_counter()
        result.edge_scale_shift_px = _edge_scale_shift(work, use_rgb, use_thermal, (rgb_full, thermal_full),
                                                       result.homography, supporting, options, static_weight)
        timings["edges"] += time.perf_counter() - clock
    _check(result, agreement, work, rgb_full, thermal_full, options)
    return result


def _check_inputs(rgb_images: Sequence[np.ndarray], thermal_images: Sequence[np.ndarray],
                  names: Sequence[str] | None) -> list[str]:
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
    return names


def _with_structure(work: EdgeLevel, count: int, opts: TargetlessOptions) -> list[int]:
    """Indices of the pairs with edges in both cameras; refuses when fewer than ``min_pairs``."""
    rgb_min = opts.min_edge_fraction * work.rgb_size[0] * work.rgb_size[1]
    thermal_min = opts.min_edge_fraction * work.thermal_size[0] * work.thermal_size[1]
    usable = [i for i in range(count)
              if work.targets[i].count >= rgb_min and len(work.sources[i].points) >= thermal_min]
    if len(usable) < opts.min_pairs:
        raise CalibrationRefused(
            f"too little shared structure: {len(usable)} of {count} pairs show edges in both cameras "
            f"(at least {opts.min_pairs} needed); record scenes with warm objects (cars, people), road edges or a "
            "horizon in view, or use a heated checkerboard (--target checkerboard)")
    return usable


def _starts(start: np.ndarray | None, rgb_full: Sequence[int], thermal_full: Sequence[int]) -> list[np.ndarray]:
    """Maps the search starts from: the prior, or the same field of view and, when the aspect
    ratios differ by more than 1 %, square pixels (one scale for both axes, centred)."""
    if start is not None:
        start = np.asarray(start, np.float64)
        return [start / start[2, 2]]
    same = ft.same_view_homography(thermal_full, rgb_full)
    scale = rgb_full[1] / float(thermal_full[1])
    if abs(math.log(same[1, 1] / same[0, 0])) < 0.01:
        return [same]
    square = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, (rgb_full[0] - thermal_full[0] * scale) / 2.0],
                       [0, 0, 1.0]])
    return [same, square]


def work_units(pairs: int, options: TargetlessOptions = TargetlessOptions()) -> int:
    """How many units :func:`estimate_targetless` reports through ``progress`` (for a bar)."""
    searched = 4 * len(_scales(options)) * len(_angles(options)) if options.search else 0
    return pairs + searched + len(options.pyramid) + 1


def _scales(opts: TargetlessOptions) -> np.ndarray:
    low, high = opts.scale_range
    steps = max(1, int(round(math.log(high / low) / math.log1p(opts.scale_step))))
    return np.exp(np.linspace(math.log(low), math.log(high), steps + 1))


def _angles(opts: TargetlessOptions) -> np.ndarray:
    count = int(round(opts.max_angle_deg / opts.angle_step_deg)) if opts.angle_step_deg > 0 else 0
    return np.linspace(-opts.max_angle_deg, opts.max_angle_deg, 2 * count + 1) if count else np.zeros(1)


def _search(rgb_grays: list[np.ndarray], thermal_grays: list[np.ndarray], rgb_full: tuple[int, int],
            thermal_full: tuple[int, int], bases: list[np.ndarray], opts: TargetlessOptions,
            tick: Callable[[int], None]) -> list[np.ndarray]:
    """Scale x roll grid around every base, translation by correlation; returns the best
    hypothesis of every scale and base (over rolls), best first."""
    per_scale: list[list[tuple[float, np.ndarray]]] = [[] for _ in _scales(opts)]
    for base in bases:
        # Thermal at the level's RGB pixel size, so both edge maps are equally blurred.
        scale = dense.linear_scale(base, thermal_full)
        thermal_width = int(round(thermal_full[1] * opts.search_width * scale / rgb_full[1]))
        level = dense.Level(rgb_grays, thermal_grays, rgb_full, thermal_full, min(opts.search_width, rgb_full[1]),
                            max(16, min(thermal_width, thermal_full[1], 2 * opts.search_width)))
        levels = [level, level.moving_only()] if len(rgb_grays) >= opts.moving_min_pairs else [level]
        for searched in levels:
            # The most structured pairs carry the search (its cost grows with every pair).
            strength = [float(np.mean(np.abs(t))) * float(np.mean(np.abs(r)))
                        for t, r in zip(searched.thermal, searched.rgb)]
            chosen = sorted(np.argsort(strength)[::-1][: opts.search_pairs].tolist())
            found = dense.search(searched, chosen, base, thermal_full, _scales(opts), _angles(opts), opts.max_shift,
                                 lambda: tick(1))
            for bucket, item in zip(per_scale, found):
                bucket.append(item)
        tick((2 - len(levels)) * len(_scales(opts)) * len(_angles(opts)))
    tick((2 - len(bases)) * 2 * len(_scales(opts)) * len(_angles(opts)))  # work_units counts two of each
    # Every base keeps its own best of each scale: their correlations are not comparable (a
    # thermal image stretched onto the whole RGB frame overlaps more of it and correlates
    # better at every scale than the square-pixel one, though wrong), so taking the better of
    # the two per scale can leave the right base out of the selection altogether.
    best = sorted((item for bucket in per_scale for item in bucket), key=lambda item: -item[0])
    return [homography for _, homography in best]


def _coarse_stage(rgb_grays: list[np.ndarray], thermal_grays: list[np.ndarray], rgb_full: tuple[int, int],
                  thermal_full: tuple[int, int], bases: list[np.ndarray], opts: TargetlessOptions,
                  tick: Callable[[int], None]) -> np.ndarray:
    """Search, then edge ICP from every hypothesis at the first ``opts.pyramid`` width, the
    ``opts.finalists`` best of them on through the others. Hypotheses are ranked by edge points
    that match only there (:func:`_specificity`), not by all matched points: a thermal image
    squeezed onto the busy middle of the RGB one matches many edges at any shift. Returns a
    full-resolution map a pixel or two off."""
    hypotheses = _search(rgb_grays, thermal_grays, rgb_full, thermal_full, bases, opts, tick) if opts.search else bases
    # Every pair takes part from here on (up to select_pairs, spread evenly): the few that
    # carried the search may all show the same stretch of road, and a map they leave loose
    # (the scale about the vanishing point) drifts.
    chosen = np.linspace(0, len(rgb_grays) - 1, min(len(rgb_grays), opts.select_pairs)).round().astype(int)
    rgb_some, thermal_some = [rgb_grays[i] for i in chosen], [thermal_grays[i] for i in chosen]
    ranked = [(0.0, h) for h in hypotheses]
    for depth, (width, radii) in enumerate(opts.pyramid):
        level = pyramid_level(rgb_some, thermal_some, rgb_full, thermal_full, width, ranked[0][1])
        keep = ranked if depth == 0 else ranked[: opts.finalists]
        ranked = []
        for _, hypothesis in keep:
            # Zoom, roll and shift only: the hypotheses differ from the truth by those, and at
            # these widths the edges of a drive (the traffic in a band across the middle, the
            # road's lines through one vanishing point) leave shear and perspective loose, so a
            # full homography bends there, drags the scale along and lands in another basin
            # (a 384 px thermal camera beside a 640 px RGB one: from a hypothesis 36 px off to
            # 90 px off; with zoom, roll and shift to 6 px). The finish adds the other terms.
            icp = level.icp(hypothesis, radii, dof=4)
            ranked.append((_specificity(level, icp.homography), level.to_full(icp.homography)))
        ranked.sort(key=lambda item: -item[0])
        tick(1)
    return ranked[0][1]


def _specificity(level: EdgeLevel, level_h: np.ndarray) -> float:
    """How well a map is fixed along its weaker axis: the fewer, over x and y, of the edge
    points that match at ``level_h`` and not with the thermal image a few px off."""
    agreement = _agreement(level.targets, level.sources, level_h)
    return float(np.maximum(agreement, 0.0).sum(axis=0).min())


def _final_stage(work: EdgeLevel, coarse: np.ndarray, opts: TargetlessOptions
                 ) -> tuple[ed.IcpResult, np.ndarray, np.ndarray]:
    """ICP at the work resolution over all pairs, then again over the pairs that support it."""
    icp = work.icp(coarse, opts.icp_radii)
    # A thermal pixel larger than an RGB one (a 640 px thermal camera beside a 1280 px RGB one)
    # places its edges as well as its pixel size allows: match and shift in its units.
    pixel = max(1.0, dense.linear_scale(icp.homography, work.thermal_size))
    agreement = _agreement(work.targets, work.sources, icp.homography, 2.0 * pixel, 6.0 * pixel)
    supporting = _supports(agreement, work.sources, opts)
    if supporting.sum() >= opts.min_pairs and not supporting.all():
        icp = ed.refine_icp(work.targets, work.sources, icp.homography, work.rgb_size,
                            weights=supporting.astype(float), radii=opts.icp_radii[-2:])
        agreement = _agreement(work.targets, work.sources, icp.homography, 2.0 * pixel, 6.0 * pixel)
        supporting = _supports(agreement, work.sources, opts)
    return icp, agreement, supporting


def _finish(work: EdgeLevel, coarse: np.ndarray, opts: TargetlessOptions, thermal_full: Sequence[int],
            report: tuple[list[str], int, tuple[np.ndarray, np.ndarray], dict[str, float]]
            ) -> tuple[TargetlessResult, np.ndarray, float]:
    """The finish led by the traffic (static edges at ``STATIC_WEIGHT``), then again with the
    static edges at ``REPEATS`` pairs' worth, kept only when it lies within the first one's
    corner uncertainty of it (mean over the 4 corners) and states no larger one itself.
    Returns (result, agreement, the static weight used).

    Static edges that both cameras see at the same place (a day drive's road edges) fix the
    directions the traffic in a band leaves loose; where the cameras see different static
    boundaries (at night) they pull every pair the same way, and then the two estimates lie
    farther apart than the traffic's own uncertainty (a test in the spirit of Hausman's: the
    efficient estimate is taken only when the robust one cannot tell it apart). Measured on
    eight 60 s drives: with static edges every time, 3.2 and 9.8 px off at night; taken by
    this test, at most 1.9 px.
    """
    icp, agreement, supporting = _final_stage(work, coarse, opts)
    traffic = _result(icp, agreement, supporting, work, *report)
    if not math.isfinite(traffic.corner_sigma_px):
        return traffic, agreement, STATIC_WEIGHT
    traffic_weights = [source.weights for source in work.sources]
    count_repeats_once(work.sources, work.thermal_size, REPEATS)
    icp, static_agreement, supporting = _final_stage(work, traffic.homography, opts)
    with_static = _result(icp, static_agreement, supporting, work, *report)
    apart = float(np.mean(ft.corner_distances(with_static.homography, traffic.homography, thermal_full)))
    if apart <= traffic.corner_sigma_px and with_static.corner_sigma_px <= traffic.corner_sigma_px:
        return with_static, static_agreement, REPEATS
    for source, weights in zip(work.sources, traffic_weights):
        source.weights = weights
    return traffic, agreement, STATIC_WEIGHT


def _edge_scale_shift(work: EdgeLevel, rgb_grays: list[np.ndarray], thermal_grays: list[np.ndarray],
                      full_sizes: tuple[Sequence[int], Sequence[int]], homography: np.ndarray,
                      supporting: np.ndarray, opts: TargetlessOptions, static_weight: float = STATIC_WEIGHT
                      ) -> float:
    """Mean corner move (RGB px) of the estimate when the finish is repeated, over the
    supporting pairs, on edges found at ``opts.check_sigma``.

    The cluster-robust corner uncertainty sees how much pairs disagree, not an error they all
    share. The two cameras blur small and close-together outlines differently, so some edges
    lie a fraction of a pixel apart in the two images, the same way in every pair of a drive
    (one road, the same kinds of cars along it); where the matched structure fills only a band
    of the image (the traffic along the road), shear and perspective turn that into corner
    errors of many pixels, and how far depends on the edge scale (measured on a 60 s drive, a
    384 px thermal camera beside a 640 px RGB one, ICP started at the truth: 14.1 px off at
    sigma 1.5, 7.0 px at 1.0, with 1.6 px stated; the same drive rendered with both cameras
    exposed together: 11.6 px). Structure that pins the map down holds it at either scale.
    """
    other = EdgeLevel(rgb_grays, thermal_grays, (*full_sizes, work.rgb_size, work.thermal_size), opts.check_sigma,
                      opts.locate_sigma, static_weight)
    icp = other.icp(homography, opts.icp_radii[-2:], weights=supporting.astype(float))
    return float(np.mean(ft.corner_distances(other.to_full(icp.homography), homography, full_sizes[1])))


def _masses(sources: list[ed.EdgePoints]) -> np.ndarray:
    """Per pair: its thermal edge points counted by their weights (at least 1)."""
    return np.array([max(float(s.weight_of(np.ones(len(s.points), bool)).sum()), 1.0) for s in sources])


def _supports(agreement: np.ndarray, sources: list[ed.EdgePoints], opts: TargetlessOptions) -> np.ndarray:
    return agreement.max(axis=1) / _masses(sources) >= opts.min_agreement


def _result(icp: ed.IcpResult, agreement: np.ndarray, supporting: np.ndarray, work: EdgeLevel,
            names: list[str], total: int, maps: tuple[np.ndarray, np.ndarray], timings: dict[str, float]
            ) -> TargetlessResult:
    """The result at full resolution, with per-pair scores in full-resolution px."""
    work_to_full = 1.0 / work.rgb_scale[0, 0]
    pairs = []
    masses = _masses(work.sources)
    for k, name in enumerate(names):
        count = masses[k]
        shift = tuple(float(v) * work_to_full for v in icp.shift_px[k])
        pairs.append(PairScore(name, int(icp.points[k]), int(icp.inliers[k]),
                               (float(agreement[k, 0]) / count, float(agreement[k, 1]) / count),
                               float(icp.rms_px[k]) * work_to_full, shift, bool(supporting[k])))
    chosen = [k for k in range(len(names)) if supporting[k]]
    residual = float(math.sqrt(np.nansum([icp.rms_px[k] ** 2 * icp.inliers[k] for k in chosen])
                               / max(sum(icp.inliers[k] for k in chosen), 1))) * work_to_full if chosen else math.nan
    sigma = _corner_sigma(icp, chosen, work.thermal_size) * work_to_full if chosen else math.inf
    return TargetlessResult(work.to_full(icp.homography), maps[0], maps[1], total, len(names), pairs, residual,
                            sigma, timings)


def _agreement(targets: list[ed.EdgeTarget], sources: list[ed.EdgePoints], homography: np.ndarray,
               radius: float = 2.0, shift: float = 6.0) -> np.ndarray:
    """Per pair and axis (N, 2): points matched at ``homography`` minus the most matched with
    the thermal image moved by ``shift`` px either way along x, resp. y (points counted by
    their weights).

    Chance coincidences of edges cancel out; a pair that shows only horizontal edges (a
    horizon) agrees along y and not along x.
    """
    out = np.zeros((len(sources), 2))
    for k, (target, source) in enumerate(zip(targets, sources)):
        if len(source.points) == 0:
            continue
        here = float(source.weight_of(ed.match(target, source, homography, radius)[3]).sum())
        for axis in range(2):
            off = 0.0
            for sign in (1.0, -1.0):
                move = np.eye(3)
                move[axis, 2] = sign * shift
                off = max(off, float(source.weight_of(ed.match(target, source, move @ homography, radius)[3]).sum()))
            out[k, axis] = here - off
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


def _check(result: TargetlessResult, agreement: np.ndarray, work: EdgeLevel, rgb_full: Sequence[int],
           thermal_full: Sequence[int], opts: TargetlessOptions) -> None:
    """Refuse an estimate the data do not determine, saying what to record to fix that."""
    supporting = result.pairs_supporting
    if supporting < opts.min_pairs:
        raise CalibrationRefused(
            f"no consistent alignment: only {supporting} of {result.pairs_with_structure} pairs with structure "
            f"agree on one homography (at least {opts.min_pairs} needed); the cameras may not see the same "
            "scene, the pairs may be mismatched (wrong topics, a stamp offset larger than the slop), or the "
            "scenes share too little structure: add pairs with warm objects (cars, people) large in view")
    chosen = [k for k, p in enumerate(result.pairs) if p.supporting]
    _check_directions(result, agreement, work.sources, chosen, opts)
    if not math.isfinite(result.corner_sigma_px) or result.corner_sigma_px > opts.max_corner_sigma_px:
        empty = _empty_regions(work, ft.level_homography(result.homography, work.thermal_scale, work.rgb_scale),
                               chosen)
        apart = sorted(chosen, key=lambda k: -float(np.nan_to_num(np.hypot(*result.pairs[k].shift_px))))[:3]
        where = f"no matched edges in the {', '.join(empty)} of the thermal image; " if empty else ""
        raise CalibrationRefused(
            f"the shared structure does not pin the homography down: the thermal image corners are uncertain by "
            f"{result.corner_sigma_px:.1f} px (limit {opts.max_corner_sigma_px:g} px); {where}the pairs that "
            f"disagree most: {', '.join(result.pairs[k].name for k in apart)}; add pairs with structure both "
            "cameras see in other places and orientations (warm cars and people at different positions, "
            "horizontal and vertical outlines, objects near the image borders), or more pairs from other places")
    if result.edge_scale_shift_px > opts.max_corner_sigma_px:
        raise CalibrationRefused(
            f"the shared structure does not pin the homography down: refined on edges found at another scale "
            f"the thermal image corners move by {result.edge_scale_shift_px:.1f} px (limit "
            f"{opts.max_corner_sigma_px:g} px), though the pairs agree ({result.corner_sigma_px:.1f} px): the "
            "estimate rests on edges both cameras blur differently (small or close-together outlines) and the "
            "matched structure leaves the map's shear and perspective loose; add pairs with structure both "
            "cameras see in other parts of the image (warm cars and people near the top and bottom, at the "
            "sides, large in view), or more pairs from other places")
    footprint = ft.thermal_footprint(result.homography, thermal_full)
    area = 0.5 * abs(ft.cross2(footprint[2] - footprint[0], footprint[3] - footprint[1]))
    ratio = area / float(rgb_full[0] * rgb_full[1])
    hull = cv2.convexHull(footprint.astype(np.float32), returnPoints=False)
    if len(hull) != 4 or not 0.05 <= ratio <= 20.0 or np.linalg.det(result.homography[:2, :2]) <= 0:
        raise CalibrationRefused(
            f"the estimate is implausible (thermal footprint {ratio:.2f} times the RGB image area, or folded); "
            "the data do not determine the homography")


def _check_directions(result: TargetlessResult, agreement: np.ndarray, sources: list[ed.EdgePoints],
                      chosen: list[int], opts: TargetlessOptions) -> None:
    """Each axis needs edges that line up only at the estimate along it: a share of all the
    supporting pairs' edge points (many pairs with a few cars each) or of one pair's."""
    points = float(_masses(sources)[chosen].sum())
    for axis, name, other in ((0, "x", "vertical outlines (cars and people in traffic, day or night; poles, walls, "
                                        "tree trunks)"),
                              (1, "y", "horizontal outlines (a horizon, car roofs and bumpers, road edges)")):
        share = float(sum(max(agreement[k, axis], 0.0) for k in chosen)) / points
        ranked = sorted(chosen, key=lambda k: -result.pairs[k].agreement[axis])
        if share >= opts.min_axis_share or result.pairs[ranked[0]].agreement[axis] >= opts.min_agreement:
            continue
        best = ", ".join(f"{result.pairs[k].name} ({max(result.pairs[k].agreement[axis], 0.0):.0%})"
                         for k in ranked[:3])
        raise CalibrationRefused(
            f"the shared structure does not fix the {name} direction: edges that line up only at the estimate "
            f"along {name} are {share:.1%} of the supporting pairs' edge points (at least {opts.min_axis_share:.0%} "
            f"needed, or {opts.min_agreement:.0%} in one pair; most in {best}): all shared edges run one way, e.g. "
            f"only a horizon; add pairs with {other} seen by both cameras")


def _empty_regions(work: EdgeLevel, level_h: np.ndarray, chosen: list[int]) -> list[str]:
    """Ninths of the thermal image where (almost) none of the matched edge points lie."""
    counts = np.zeros((3, 3))
    h, w = work.thermal_size
    for k in chosen:
        points = work.sources[k].points[ed.match(work.targets[k], work.sources[k], level_h, 2.0)[3]]
        cols = np.clip((points[:, 0] * 3 / w).astype(int), 0, 2)
        rows = np.clip((points[:, 1] * 3 / h).astype(int), 0, 2)
        np.add.at(counts, (rows, cols), 1)
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    return [f"{rows[r]} {cols[c]}" for r in range(3) for c in range(3) if counts[r, c] < 0.01 * counts.sum()]
