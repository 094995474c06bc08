"""Target mode: a heated checkerboard seen by both cameras.

Black squares warm up under a lamp (or in the sun) faster than white ones, so in thermal the
board shows with inverted or reduced contrast. Its inner corners are found in both images
(the thermal one stretched to 8 bit, tried as it is, inverted and contrast-equalised, and
enlarged when small), ordered consistently (the detector may start from another corner in
each camera), and all views' corners go into one RANSAC homography with a least-squares
finish on the inliers.

A board held near the cameras is a plane at that distance: with a baseline between the
cameras it gives that plane's homography, which differs from the one for distant scenes by
the parallax (baseline x focal length / distance, px). Hold it far enough away, or accept
the residual the report states.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import features as ft
from rgbt_perception.calibration.edges import corner_jacobian, normaliser
from rgbt_perception.calibration.targetless import CalibrationRefused


@dataclass(frozen=True)
class BoardOptions:
    """``pattern``: inner corners (columns, rows); ``ransac_px``: inlier distance in RGB px;
    ``min_pairs``: views with the board in both cameras needed; ``max_corner_sigma_px``: the
    largest standard deviation of the thermal image corners accepted (extrapolating from a
    board that covered only the middle of the image is uncertain)."""

    pattern: tuple[int, int] = (7, 5)
    ransac_px: float = 3.0
    min_pairs: int = 1
    max_corner_sigma_px: float = 2.0


@dataclass
class BoardView:
    """One pair: whether the board was found in each camera, how many of its corners are
    RANSAC inliers, and their RMS reprojection error (RGB px)."""

    name: str
    found_rgb: bool
    found_thermal: bool
    inliers: int = 0
    rms_px: float = math.nan

    @property
    def supporting(self) -> bool:
        return self.inliers > 0


@dataclass
class BoardResult:
    """``homography`` (3x3 thermal -> RGB); ``residual_px``: RMS reprojection error of the
    inlier corners; ``corner_sigma_px``: the thermal image corners' standard deviation from
    the fit; ``coverage``: fraction of the RGB image inside the hull of the used corners."""

    homography: np.ndarray
    start: np.ndarray
    views: list[BoardView]
    residual_px: float
    corner_sigma_px: float
    inliers: int
    corners: int
    coverage: float
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_total(self) -> int:
        return len(self.views)

    @property
    def pairs_supporting(self) -> int:
        return sum(v.supporting for v in self.views)


def _attempts(gray8: np.ndarray, thermal: bool) -> list[tuple[np.ndarray, float]]:
    """Versions of an 8-bit image worth trying, with the factor they were enlarged by. A
    thermal board may show inverted, with low contrast, or small (thermal sensors are coarse)."""
    out = [(gray8, 1.0)]
    if thermal:
        clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(gray8)
        out += [(255 - gray8, 1.0), (clahe, 1.0), (255 - clahe, 1.0)]
        if max(gray8.shape) < 800:
            big = cv2.resize(gray8, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
            out += [(big, 2.0), (255 - big, 2.0)]
    return out


def find_corners(image: np.ndarray, pattern: Sequence[int], thermal: bool | None = None) -> np.ndarray | None:
    """Inner corners (``cols * rows, 2``, row-major from the detector's first corner) of a
    checkerboard in an RGB or thermal (8/16-bit) image, or None.

    ``thermal`` (default: a single-channel image is thermal) tries the harder variants too.
    """
    thermal = (image.ndim == 2) if thermal is None else thermal
    gray8 = np.clip(ft.to_gray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    size = (int(pattern[0]), int(pattern[1]))
    attempts = _attempts(gray8, thermal)
    # CALIB_CB_NORMALIZE_IMAGE makes the sector-based detector miss low-contrast thermal boards.
    for flags in (0, cv2.CALIB_CB_EXHAUSTIVE) if thermal else (0,):
        for candidate, factor in attempts if flags == 0 else attempts[:1]:
            ok, corners = cv2.findChessboardCornersSB(candidate, size, flags=flags)
            if ok:
                return corners.reshape(-1, 2).astype(np.float64) / factor + (0.5 / factor - 0.5)
    for candidate, factor in attempts[:2]:
        ok, corners = cv2.findChessboardCorners(candidate, size, flags=cv2.CALIB_CB_ADAPTIVE_THRESH
                                                | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK)
        if ok:
            corners = cv2.cornerSubPix(candidate, corners, (5, 5), (-1, -1),
                                       (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 0.01))
            return corners.reshape(-1, 2).astype(np.float64) / factor + (0.5 / factor - 0.5)
    return None


def _orderings(points: np.ndarray, pattern: Sequence[int]) -> list[np.ndarray]:
    """The corner lists the same board may be reported as (start corner, and for square
    patterns the transposition)."""
    cols, rows = int(pattern[0]), int(pattern[1])
    grid = points.reshape(rows, cols, 2)
    out = [grid, grid[::-1, ::-1]]
    if cols == rows:
        out += [np.transpose(grid, (1, 0, 2))[::-1], np.transpose(grid, (1, 0, 2))[:, ::-1]]
    return [g.reshape(-1, 2) for g in out]


def _closest_ordering(thermal: np.ndarray, rgb: np.ndarray, pattern, prior: np.ndarray,
                      thermal_size: Sequence[int]) -> np.ndarray:
    """The ordering of the thermal corners whose homography lies nearest the prior map."""
    best, best_err = None, math.inf
    for candidate in _orderings(thermal, pattern):
        homography, _ = cv2.findHomography(candidate, rgb, 0)
        if homography is None:
            continue
        err = ft.corner_error(homography, prior, thermal_size)
        if err < best_err:
            best, best_err = candidate, err
    return thermal if best is None else best


def estimate_checkerboard(
    rgb_images: Sequence[np.ndarray],
    thermal_images: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    start: np.ndarray | None = None,
    options: BoardOptions = BoardOptions(),
    progress: Callable[[int], None] | None = None,
) -> BoardResult:
    """Homography from a checkerboard's inner corners found in both cameras.

    Args:
        rgb_images / thermal_images: as for :func:`targetless.estimate_targetless`.
        start: prior map, only used to order the corners (default: same field of view).
        progress: called with 1 per pair processed.

    Raises:
        CalibrationRefused: the board is not found in both cameras of enough pairs, too few
            corners agree, or the corners leave the image corners too uncertain.
    """
    clock = time.perf_counter()
    tick = progress if progress is not None else (lambda n: None)
    if len(rgb_images) != len(thermal_images):
        raise ValueError(f"{len(rgb_images)} RGB images but {len(thermal_images)} thermal images")
    if not rgb_images:
        raise CalibrationRefused("no image pairs to calibrate from")
    names = [str(i) for i in range(len(rgb_images))] if names is None else [str(n) for n in names]
    rgb_size, thermal_size = tuple(rgb_images[0].shape[:2]), tuple(thermal_images[0].shape[:2])
    prior = ft.same_view_homography(thermal_size, rgb_size) if start is None else np.asarray(start, np.float64)
    views, src, dst, owner = [], [], [], []
    for k, (rgb, thermal, name) in enumerate(zip(rgb_images, thermal_images, names)):
        if tuple(rgb.shape[:2]) != rgb_size or tuple(thermal.shape[:2]) != thermal_size:
            raise ValueError(f"pair {name}: image sizes differ from the first pair's; one calibration is for one "
                             "camera pair")
        rgb_corners = find_corners(rgb, options.pattern, thermal=False)
        thermal_corners = find_corners(thermal, options.pattern, thermal=True) if rgb_corners is not None else None
        views.append(BoardView(name, rgb_corners is not None, thermal_corners is not None))
        if rgb_corners is not None and thermal_corners is not None:
            ordered = _closest_ordering(thermal_corners, rgb_corners, options.pattern, prior, thermal_size)
            src.append(ordered)
            dst.append(rgb_corners)
            owner += [k] * len(ordered)
        tick(1)
    both = sum(v.found_rgb and v.found_thermal for v in views)
    if both < options.min_pairs:
        rgb_found = sum(v.found_rgb for v in views)
        raise CalibrationRefused(
            f"checkerboard {options.pattern[0]}x{options.pattern[1]} (inner corners) not found in both cameras: "
            f"found in RGB in {rgb_found} and in thermal in {sum(v.found_thermal for v in views)} of the "
            f"{len(views)} pairs' (thermal only searched where RGB found it); check --pattern (inner corners, "
            "columns x rows) and that the board is warm enough to show in thermal")
    src_all, dst_all, owner = np.vstack(src), np.vstack(dst), np.asarray(owner)
    homography, mask = cv2.findHomography(src_all, dst_all, cv2.RANSAC, options.ransac_px, maxIters=5000,
                                          confidence=0.999)
    if homography is None or mask is None or int(mask.sum()) < 8:
        raise CalibrationRefused("the checkerboard corners do not agree on one homography (RANSAC found fewer "
                                 "than 8 consistent corners)")
    inlier = mask.ravel().astype(bool)
    homography, _ = cv2.findHomography(src_all[inlier], dst_all[inlier], 0)
    homography = homography / homography[2, 2]
    residuals = np.linalg.norm(ft.project(homography, src_all[inlier]) - dst_all[inlier], axis=1)
    _score_views(views, homography, src_all, dst_all, owner, inlier)
    rms = float(np.sqrt(np.mean(residuals ** 2)))
    sigma = _corner_sigma(homography, src_all[inlier], dst_all[inlier], rms, thermal_size, rgb_size)
    hull = cv2.convexHull(dst_all[inlier].astype(np.float32))
    coverage = float(cv2.contourArea(hull)) / float(rgb_size[0] * rgb_size[1])
    result = BoardResult(homography, prior, views, rms, sigma, int(inlier.sum()), len(src_all), coverage,
                         {"total": time.perf_counter() - clock})
    if result.pairs_supporting < options.min_pairs:
        raise CalibrationRefused(f"only {result.pairs_supporting} board views agree on one homography "
                                 f"(at least {options.min_pairs} needed)")
    if not math.isfinite(sigma) or sigma > options.max_corner_sigma_px:
        raise CalibrationRefused(
            f"the board corners leave the thermal image corners uncertain by {sigma:.1f} px (limit "
            f"{options.max_corner_sigma_px:g} px; the boards covered {100 * coverage:.0f} % of the image): move "
            "the board towards the image corners in more views")
    return result


def _score_views(views: Sequence[BoardView], homography: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 owner: np.ndarray, inlier: np.ndarray) -> None:
    """Each view's inlier count and RMS corner error (RGB px) under the fitted ``homography``."""
    for k, view in enumerate(views):
        mine = owner == k
        if mine.any():
            used = inlier[mine]
            view.inliers = int(used.sum())
            if used.any():
                err = np.linalg.norm(ft.project(homography, src[mine][used]) - dst[mine][used], axis=1)
                view.rms_px = float(np.sqrt(np.mean(err ** 2)))


def _corner_sigma(homography: np.ndarray, src: np.ndarray, dst: np.ndarray, rms: float,
                  thermal_size: Sequence[int], rgb_size: Sequence[int]) -> float:
    """Largest standard deviation of the thermal image corners (RGB px) of a least-squares
    homography fit with per-corner noise ``rms`` (covariance sigma^2 (J'J)^-1)."""
    norm = normaliser(rgb_size)
    n = len(src)
    if n <= 4:
        return math.inf
    mapped = ft.project(homography, src)
    u = mapped @ norm[:2, :2].T + norm[:2, 2]
    unit = 1.0 / norm[0, 0]
    u1, u2 = u[:, 0], u[:, 1]
    zero, one = np.zeros(n), np.ones(n)
    jx = unit * np.stack([u1, u2, one, zero, zero, zero, -u1 * u1, -u1 * u2], axis=1)
    jy = unit * np.stack([zero, zero, zero, u1, u2, one, -u1 * u2, -u2 * u2], axis=1)
    jac = np.vstack([jx, jy])
    dof = max(2 * n - 8, 1)
    noise = max(rms * rms * 2 * n / dof, 0.05 ** 2)
    try:
        covariance = noise * np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        return math.inf
    cj = corner_jacobian(homography, norm, thermal_size)
    corners = cj @ covariance @ cj.T
    worst = max(float(np.linalg.eigvalsh(corners[2 * c:2 * c + 2, 2 * c:2 * c + 2])[-1]) for c in range(4))
    return math.sqrt(max(worst, 0.0))
