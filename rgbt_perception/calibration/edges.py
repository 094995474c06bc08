"""Sub-pixel edge points and the edge-to-edge refinement of a homography (robust ICP).

Dense correlation of blurred edge maps finds the homography to a few pixels but its optimum
leans towards edges that only one camera sees (the inner edge of a curb is a colour edge,
not a temperature edge). The final stage therefore works on edge *points*: thermal edge
points are mapped into the RGB image and pulled onto the nearest RGB edge of the same
orientation along its normal (point-to-line ICP). Points with no compatible RGB edge within
a shrinking radius do not count, so edges seen by one camera only drop out instead of
biasing the estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from rgbt_perception.calibration import features as ft

# Points whose mapped normal and the RGB edge normal differ by more than this angle are not
# matched (the doubled angle makes contrast polarity irrelevant).
MAX_ANGLE_DEG = 25.0


@dataclass
class EdgePoints:
    """``points`` N,2 sub-pixel (x, y); ``normals`` N,2 unit gradient directions; ``weights``
    N how much each point counts (None: 1 each)."""

    points: np.ndarray
    normals: np.ndarray
    weights: np.ndarray | None = None

    def weight_of(self, mask: np.ndarray) -> np.ndarray:
        """Weights of the points selected by ``mask``."""
        return np.ones(int(mask.sum())) if self.weights is None else self.weights[mask]


def _gradients(gray: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blurred = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma > 0 else gray
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return gx, gy, cv2.magnitude(gx, gy)


def edge_points(gray: np.ndarray, sigma: float = 1.5, max_points: int | None = 20000,
                locate_sigma: float | None = None) -> tuple[EdgePoints, np.ndarray]:
    """Canny edges of an ``H, W`` float image, moved to the gradient maximum along the normal.

    Thresholds adapt to the image: the high one is the larger of the 90th percentile of the
    gradient magnitude and four times its median (a flat, noisy image yields few points).
    With ``locate_sigma`` below ``sigma`` the points found at ``sigma`` are placed at the
    gradient maximum at ``locate_sigma`` instead (:func:`_focus`, edge focusing).

    Returns:
        (points in raster order, thinned evenly to ``max_points`` (``None``: all, ``0``: none,
        only the map); edge map ``H, W`` uint8 with 255 at every edge pixel).
    """
    gx, gy, magnitude = _gradients(gray, sigma)
    sample = magnitude[:: max(1, magnitude.shape[0] // 128), :: max(1, magnitude.shape[1] // 128)]
    high = max(float(np.percentile(sample, 90)), 4.0 * float(np.median(sample)), 1e-4)
    # Canny takes 16-bit derivatives: scale so the high threshold sits at 1000.
    scale = 1000.0 / high
    dx = np.clip(gx * scale, -32767, 32767).astype(np.int16)
    dy = np.clip(gy * scale, -32767, 32767).astype(np.int16)
    edges = cv2.Canny(dx, dy, 400.0, 1000.0, L2gradient=True)
    ys, xs = np.nonzero(edges)
    if max_points == 0:
        return EdgePoints(np.zeros((0, 2)), np.zeros((0, 2))), edges
    if max_points is not None and len(xs) > max_points:
        keep = np.linspace(0, len(xs) - 1, max_points).astype(np.int64)
        ys, xs = ys[keep], xs[keep]
    if len(xs) == 0:
        return EdgePoints(np.zeros((0, 2)), np.zeros((0, 2))), edges
    normals = np.stack([gx[ys, xs], gy[ys, xs]], axis=1) / np.maximum(magnitude[ys, xs], 1e-12)[:, None]
    unit = normals.astype(np.float32)
    base = np.stack([xs, ys], axis=1).astype(np.float32)
    if locate_sigma is not None and locate_sigma < sigma:
        magnitude = _gradients(gray, locate_sigma)[2]
        base = _focus(magnitude, base, unit, sigma)
    points = base + _peak_offset(magnitude, base, unit)[:, None] * normals
    return EdgePoints(points.astype(np.float64), normals.astype(np.float64)), edges


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = points.astype(np.float32)
    return cv2.remap(image, points[:, 0:1], points[:, 1:2], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)[:, 0]


def _peak_offset(magnitude: np.ndarray, base: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Offsets (-0.5 to 0.5 px along the normal) of the gradient maximum: a parabola through
    the magnitude one pixel before, at and after ``base``."""
    m_plus, m_zero, m_minus = (_sample(magnitude, base + k * normals) for k in (1.0, 0.0, -1.0))
    curvature = m_plus - 2 * m_zero + m_minus
    offset = np.where(curvature < -1e-12, 0.5 * (m_minus - m_plus) / np.minimum(curvature, -1e-12), 0.0)
    return np.clip(offset, -0.5, 0.5)


def _focus(fine: np.ndarray, base: np.ndarray, normals: np.ndarray, sigma: float) -> np.ndarray:
    """Move edge points found at a coarse scale to the largest fine-scale gradient along their
    normal, within ``sigma`` px (edge focusing): blur moves the gradient maxima of thin and
    close-together outlines apart, the more the stronger it is, so the coarse scale finds
    the edges and the fine scale places them."""
    steps = np.arange(-math.floor(2 * sigma), math.floor(2 * sigma) + 1) * 0.5
    samples = np.stack([_sample(fine, base + s * normals) for s in steps], axis=1)
    return base + steps[np.argmax(samples, axis=1)][:, None].astype(np.float32) * normals


class EdgeTarget:
    """RGB edge points with a nearest-edge lookup (distance-transform labels)."""

    def __init__(self, gray: np.ndarray, sigma: float = 1.5, locate_sigma: float | None = None) -> None:
        found, edge_map = edge_points(gray, sigma, max_points=None, locate_sigma=locate_sigma)
        self.size = gray.shape[:2]
        # Labels number the edge pixels in raster order, which is the order of np.nonzero and
        # so of ``found``; label 0 (no edge at all) points at a dummy entry.
        _, self.labels = cv2.distanceTransformWithLabels(255 - edge_map, cv2.DIST_L2, 5,
                                                         labelType=cv2.DIST_LABEL_PIXEL)
        self.points = np.vstack([np.zeros((1, 2)), found.points])
        self.normals = np.vstack([np.zeros((1, 2)), found.normals])
        self.count = len(found.points)

    def nearest(self, mapped: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(edge points, their normals, found mask) nearest to ``mapped`` N,2 RGB positions."""
        h, w = self.size
        xi = np.rint(mapped[:, 0]).astype(np.int64)
        yi = np.rint(mapped[:, 1]).astype(np.int64)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        labels = np.zeros(len(mapped), np.int64)
        labels[inside] = self.labels[yi[inside], xi[inside]]
        return self.points[labels], self.normals[labels], inside & (labels > 0)


@dataclass
class IcpResult:
    """``homography`` refined (work resolution). Per pair: ``points`` thermal edge points,
    ``inliers`` matched ones, ``rms_px`` their point-to-edge RMS, ``shift_px`` (N, 2) the
    translation the pair alone would add, and at the optimum its ``pair_hessians`` (N, 8, 8)
    and ``pair_gradients`` (N, 8) in the normalised increment of ``rgb_normaliser``, and
    ``pair_noise`` (N): the factor a_k that makes a_k * hessian_k the pair's covariance of
    gradient from point noise alone."""

    homography: np.ndarray
    points: np.ndarray
    inliers: np.ndarray
    rms_px: np.ndarray
    shift_px: np.ndarray
    pair_hessians: np.ndarray
    pair_gradients: np.ndarray
    pair_noise: np.ndarray
    rgb_normaliser: np.ndarray


def normaliser(rgb_size) -> np.ndarray:
    """Pixel -> normalised coordinates (centre 0, half the longer side 1) of an image of ``rgb_size``."""
    h, w = rgb_size
    unit = max(h, w) / 2.0
    return np.array([[1 / unit, 0, -(w - 1) / 2.0 / unit], [0, 1 / unit, -(h - 1) / 2.0 / unit], [0, 0, 1.0]])


def match(target: EdgeTarget, source: EdgePoints, homography: np.ndarray, radius: float):
    """Map thermal edge points into the RGB image and pair each with the nearest RGB edge.

    Returns:
        (signed point-to-edge distances N, RGB edge normals N,2, mapped points N,2, inlier
        mask N: an RGB edge within ``radius`` px whose orientation agrees).
    """
    mapped = ft.project(homography, source.points)
    near, normal, ok = target.nearest(mapped)
    cos = np.abs(np.sum(map_normals(homography, source) * normal, axis=1))
    offset = mapped - near
    ok &= (cos >= math.cos(math.radians(MAX_ANGLE_DEG))) & (np.einsum("ni,ni->n", offset, offset) <= radius ** 2)
    return np.sum(offset * normal, axis=1), normal, mapped, ok


def map_normals(homography: np.ndarray, source: EdgePoints) -> np.ndarray:
    """N,2 unit normals of the thermal edge points after the homography (normals move with the
    inverse transpose of its local linear part)."""
    a = _local_linear(homography, source.points)
    mapped = np.einsum("nji,nj->ni", np.linalg.inv(a), source.normals)
    return mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)


def _local_linear(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """N,2,2 Jacobians of the homography at ``points``."""
    h = homography
    x, y = points[:, 0], points[:, 1]
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    jac = np.empty((len(points), 2, 2))
    jac[:, 0, 0] = (h[0, 0] - u * h[2, 0]) / w
    jac[:, 0, 1] = (h[0, 1] - u * h[2, 1]) / w
    jac[:, 1, 0] = (h[1, 0] - v * h[2, 0]) / w
    jac[:, 1, 1] = (h[1, 1] - v * h[2, 1]) / w
    return jac


def _design(normal: np.ndarray, mapped: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """N,8 derivative of the residual with respect to an RGB-side normalised increment."""
    unit = 1.0 / norm[0, 0]
    u = mapped @ norm[:2, :2].T + norm[:2, 2]
    u1, u2 = u[:, 0], u[:, 1]
    nx, ny = normal[:, 0], normal[:, 1]
    radial = nx * u1 + ny * u2
    return unit * np.stack([nx * u1, nx * u2, nx, ny * u1, ny * u2, ny, -radial * u1, -radial * u2], axis=1)


def apply_increment(homography: np.ndarray, delta: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """``homography`` followed by the RGB-side increment ``delta`` (8) in ``norm`` coordinates."""
    step = np.eye(3) + np.array([[delta[0], delta[1], delta[2]], [delta[3], delta[4], delta[5]],
                                 [delta[6], delta[7], 0.0]])
    out = np.linalg.inv(norm) @ step @ norm @ homography
    return out / out[2, 2]


def corner_jacobian(homography: np.ndarray, norm: np.ndarray, thermal_size) -> np.ndarray:
    """8x8 derivative of the thermal image's corner positions (RGB px) by the increment."""
    corners = ft.thermal_footprint(homography, thermal_size).ravel()
    jac = np.zeros((8, 8))
    eps = 1e-6
    for k in range(8):
        delta = np.zeros(8)
        delta[k] = eps
        jac[:, k] = (ft.thermal_footprint(apply_increment(homography, delta, norm), thermal_size).ravel()
                     - corners) / eps
    return jac


# Increments an ICP may make (columns: combinations of the 8 homography increment terms
# [a11, a12, tx, a21, a22, ty, p1, p2] of :func:`apply_increment`), by degrees of freedom:
# a similarity (zoom, roll, shift), an affine map, a full homography.
_INCREMENT_BASES = {
    4: np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0],
                 [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], np.float64),
    6: np.eye(8)[:, :6],
    8: np.eye(8),
}


def refine_icp(targets: list[EdgeTarget], sources: list[EdgePoints], homography: np.ndarray,
               rgb_size, weights: np.ndarray | None = None,
               radii: tuple[float, ...] = (12.0, 6.0, 3.0, 2.0), iterations: int = 6, dof: int = 8) -> IcpResult:
    """Point-to-line ICP of thermal edge points onto RGB edges, all pairs at once.

    Each pair's matched points share a weight of ``weights[k] * sqrt(matched)`` (a pair with
    many edges counts more, but not in proportion, so one busy frame does not outvote the
    rest), times a Huber weight (1 px) on each residual and the point's own weight
    (:attr:`EdgePoints.weights`; "matched" then sums those). ``dof`` limits the change made
    to ``homography``: 4 (zoom, roll and shift), 6 (affine) or 8 (any homography); the
    result's per-pair hessians and gradients are those of all 8 terms either way.
    """
    if dof not in _INCREMENT_BASES:
        raise ValueError(f"dof must be one of {sorted(_INCREMENT_BASES)}, got {dof}")
    basis = _INCREMENT_BASES[dof]
    norm = normaliser(rgb_size)
    weights = np.ones(len(sources)) if weights is None else np.asarray(weights, np.float64)
    current = np.asarray(homography, np.float64) / homography[2, 2]
    for radius in radii:
        for _ in range(iterations):
            jtj = np.zeros((dof, dof))
            jtr = np.zeros(dof)
            for target, source, weight in zip(targets, sources, weights):
                if weight <= 0 or len(source.points) == 0:
                    continue
                residual, normal, mapped, ok = match(target, source, current, radius)
                if ok.sum() < 8:
                    continue
                jac = _design(normal[ok], mapped[ok], norm) @ basis
                r = residual[ok]
                w = _point_weights(r, source.weight_of(ok), weight)
                jtj += (jac * w[:, None]).T @ jac
                jtr += (jac * w[:, None]).T @ r
            if not np.any(jtj):
                break
            delta = -basis @ np.linalg.solve(jtj + 1e-6 * np.trace(jtj) * np.eye(dof), jtr)
            current = apply_increment(current, delta, norm)
            if np.max(np.abs(delta)) / norm[0, 0] < 1e-3:
                break
    return _summary(targets, sources, current, norm, weights, radii[-1])


def _point_weights(residuals: np.ndarray, own: np.ndarray, pair_weight: float) -> np.ndarray:
    """Huber (1 px) times the points' own weights times the pair's, shared over its matched points."""
    return np.minimum(1.0, 1.0 / np.maximum(np.abs(residuals), 1e-9)) * own * \
        (pair_weight / math.sqrt(max(float(own.sum()), 1e-9)))


def _summary(targets, sources, homography, norm, weights, radius) -> IcpResult:
    n = len(sources)
    inliers = np.zeros(n, np.int64)
    rms = np.full(n, np.nan)
    shift = np.full((n, 2), np.nan)
    hessians = np.zeros((n, 8, 8))
    grads = np.zeros((n, 8))
    noise = np.zeros(n)
    for k, (target, source) in enumerate(zip(targets, sources)):
        if len(source.points) == 0:
            continue
        residual, normal, mapped, ok = match(target, source, homography, radius)
        inliers[k] = int(ok.sum())
        if ok.sum() < 8:
            continue
        r = residual[ok]
        rms[k] = float(np.sqrt(np.mean(r * r)))
        nrm = normal[ok]
        m = nrm.T @ nrm
        if np.linalg.cond(m) < 1e6:
            shift[k] = -np.linalg.solve(m, nrm.T @ r)
        jac = _design(nrm, mapped[ok], norm)
        w = _point_weights(r, source.weight_of(ok), max(weights[k], 0.0))
        hessians[k] = (jac * w[:, None]).T @ jac
        grads[k] = (jac * w[:, None]).T @ r
        # sum w^2 s^2 J'J = s^2 * (w) * sum w J'J for the pair's common weight w; neighbouring
        # edge points see the same blurred edge, so their noise counts as shared by about 4.
        noise[k] = 4.0 * rms[k] ** 2 * float(np.median(w))
    return IcpResult(homography, np.array([len(s.points) for s in sources]), inliers, rms, shift, hessians, grads,
                     noise, norm)
