"""Global search of targetless calibration: correlation of dense edge maps.

:func:`search`: for scale and roll hypotheses around a starting map, the translation comes
from a masked normalised cross-correlation (FFT) of each warped thermal edge map against its
RGB edge map; the pairs' correlation surfaces are averaged, so a pair that shows little adds a
flat surface rather than a wrong peak. The hypotheses are good to a few percent of scale and
a few degrees of roll; :mod:`rgbt_perception.calibration.edges` (ICP on edge points) finishes
them.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import features as ft


class Level:
    """Edge maps of all pairs at one pyramid level.

    Args:
        rgb_grays / thermal_grays: ``H, W`` float32 images (any resolution of the full frames;
            resizing keeps pixel centres, so coordinates stay exact).
        rgb_full / thermal_full: ``(H, W)`` of the original frames; homographies passed in and
            out are in their pixel coordinates.
        rgb_width / thermal_width: widths of this level's images.
    """

    def __init__(self, rgb_grays: Sequence[np.ndarray], thermal_grays: Sequence[np.ndarray],
                 rgb_full: Sequence[int], thermal_full: Sequence[int], rgb_width: int, thermal_width: int,
                 sigma: float = 1.0, orientation: bool = True) -> None:
        self.rgb_size = ft.level_size(rgb_full, rgb_width)
        self.thermal_size = ft.level_size(thermal_full, thermal_width)
        self.rgb_scale = ft.resize_matrix(rgb_full, self.rgb_size)
        self.thermal_scale = ft.resize_matrix(thermal_full, self.thermal_size)
        # C, H, W per pair.
        self.rgb = [ft.edge_features(ft.resize_to(g, self.rgb_size), sigma, orientation) for g in rgb_grays]
        self.thermal = [ft.edge_features(ft.resize_to(g, self.thermal_size), sigma, orientation)
                        for g in thermal_grays]
        self.search_cache: dict = {}

    def to_level(self, homography: np.ndarray) -> np.ndarray:
        return ft.level_homography(homography, self.thermal_scale, self.rgb_scale)

    def moving_only(self) -> "Level":
        """A copy whose edge maps lose what most pairs show at the same place (each camera's
        per-pixel median over the pairs). In a drive the horizon, the road's edges and the lane
        lines stay put while the traffic moves; the static edges of the two cameras differ (lane
        paint is not seen in thermal, the road's edge is barely seen at night in RGB) and all
        run through the vanishing point, so they can outweigh the traffic and correlate best
        at a wrong zoom (measured on a 60 s night drive: every hypothesis 100 px or more off,
        the truth scoring 0.23 against 0.37; without the static edges the truth scored best
        and the nearest hypothesis lay 16 px off)."""
        moving = copy.copy(self)
        moving.rgb = _minus_median(self.rgb)
        moving.thermal = _minus_median(self.thermal)
        moving.search_cache = {}
        return moving

    def to_full(self, level: np.ndarray) -> np.ndarray:
        return ft.full_homography(level, self.thermal_scale, self.rgb_scale)


def _minus_median(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    static = np.median(np.stack(maps), axis=0)
    return [m - static for m in maps]


def linear_scale(homography: np.ndarray, thermal_size: Sequence[int]) -> float:
    """RGB pixels per thermal pixel at the thermal image centre."""
    h, w = thermal_size
    c = np.array([[(w - 1) / 2, (h - 1) / 2], [(w - 1) / 2 + 1, (h - 1) / 2], [(w - 1) / 2, (h - 1) / 2 + 1]])
    p = ft.project(homography, c)
    return float(math.sqrt(abs(ft.cross2(p[1] - p[0], p[2] - p[0]))))


def about_centre(thermal_size: Sequence[int], scale: float, angle_deg: float) -> np.ndarray:
    """3x3 zoom by ``scale`` and roll by ``angle_deg`` about the centre of a thermal image."""
    h, w = thermal_size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1.0]])


def _spectrum(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Packed real DFT (OpenCV CCS layout) of ``image`` zero-padded to ``size`` (H, W)."""
    padded = np.zeros((int(size[0]), int(size[1])), np.float32)
    padded[: image.shape[0], : image.shape[1]] = image
    return cv2.dft(padded)


def _correlate(spectrum_a: np.ndarray | Sequence[np.ndarray], spectrum_b: np.ndarray | Sequence[np.ndarray]
               ) -> np.ndarray:
    """Circular cross-correlation ``c[t] = sum_x b(x) a(x + t)`` of two packed spectra (or the
    sum over channels of lists of them), float64."""
    if isinstance(spectrum_a, np.ndarray):
        spectrum_a, spectrum_b = [spectrum_a], [spectrum_b]
    product = sum(cv2.mulSpectrums(a, b, 0, conjB=True) for a, b in zip(spectrum_a, spectrum_b))
    return cv2.dft(product, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE).astype(np.float64)


def _rgb_spectra(level: Level, indices: Sequence[int], size: tuple[int, int]) -> list[tuple]:
    """Per pair: spectra of the RGB feature channels, of their sum and of their sum of squares
    (cached on the level: every hypothesis of a search reuses them)."""
    key = (size, tuple(indices))
    if key not in level.search_cache:
        entries = []
        for i in indices:
            channels = level.rgb[i]
            entries.append(([_spectrum(c, size) for c in channels], _spectrum(channels.sum(0), size),
                            _spectrum((channels * channels).sum(0), size)))
        ones = np.ones(level.rgb_size, np.float32)
        level.search_cache[key] = (entries, _spectrum(ones, size))
    return level.search_cache[key]


def masked_ncc_search(level: Level, indices: Sequence[int], level_h: np.ndarray, max_shift: float
                      ) -> tuple[float, tuple[float, float]]:
    """Best mean masked NCC over translations of the warped thermal maps, and that translation
    (RGB level px). Translations are limited to ``max_shift`` of the RGB size.

    OpenCV's packed real DFT in float32 (several times faster than NumPy's complex one); the
    sums are combined in float64."""
    rh, rw = level.rgb_size
    pad_y, pad_x = int(math.ceil(max_shift * rh)), int(math.ceil(max_shift * rw))
    ch, cw = rh + 2 * pad_y, rw + 2 * pad_x
    canvas_h = np.array([[1, 0, pad_x], [0, 1, pad_y], [0, 0, 1.0]]) @ level_h
    # Shifts t in [0, 2 pad] pair RGB pixel x with canvas pixel x + t < the canvas size: a
    # transform of the canvas size never wraps for them.
    size = (cv2.getOptimalDFTSize(ch), cv2.getOptimalDFTSize(cw))
    th, tw = level.thermal_size
    mask_t = np.zeros((th, tw), np.float32)
    mask_t[2:-2, 2:-2] = 1
    mask_g = (cv2.warpPerspective(mask_t, canvas_h, (cw, ch), flags=cv2.INTER_LINEAR) > 0.99).astype(np.float32)
    entries, ones = _rgb_spectra(level, indices, size)
    mask_spec = _spectrum(mask_g, size)
    channels = len(level.rgb[indices[0]])
    n = _correlate(mask_spec, ones) * channels
    n_safe = np.maximum(n, 1.0)
    score = np.zeros(size)
    for i, (rgb_channels, rgb_sum, rgb_squares) in zip(indices, entries):
        g = [cv2.warpPerspective(c, canvas_h, (cw, ch), flags=cv2.INTER_LINEAR) * mask_g for c in level.thermal[i]]
        s_f, s_ff = _correlate(mask_spec, rgb_sum), _correlate(mask_spec, rgb_squares)
        s_g = _correlate(_spectrum(sum(g), size), ones)
        s_gg = _correlate(_spectrum(sum(c * c for c in g), size), ones)
        s_fg = _correlate([_spectrum(c, size) for c in g], rgb_channels)
        den = (s_ff - s_f * s_f / n_safe) * (s_gg - s_g * s_g / n_safe)
        score += (s_fg - s_f * s_g / n_safe) / np.sqrt(np.maximum(den, 1e-9))
    score /= len(indices)
    fh, fw = size
    # Correlation index (ty, tx) pairs RGB pixel y with canvas pixel y + t; t = pad is no shift.
    ty = np.arange(fh)
    tx = np.arange(fw)
    ty = np.where(ty > fh // 2, ty - fh, ty)
    tx = np.where(tx > fw // 2, tx - fw, tx)
    allowed = (np.abs(ty - pad_y)[:, None] <= pad_y) & (np.abs(tx - pad_x)[None, :] <= pad_x)
    allowed &= n >= 0.3 * rh * rw * channels
    score = np.where(allowed, score, -np.inf)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    # The thermal map moves by -(t - pad) in RGB level pixels to land where it matched.
    return float(score[best]), (float(pad_x - tx[best[1]]), float(pad_y - ty[best[0]]))


def search(level: Level, indices: Sequence[int], start: np.ndarray, thermal_full: Sequence[int],
           scales: Sequence[float], angles: Sequence[float], max_shift: float,
           progress: Callable[[], None] | None = None) -> list[tuple[float, np.ndarray]]:
    """Scale x roll grid around ``start`` (full resolution), translation by correlation.

    Returns:
        ``[(mean masked NCC, full-resolution H)]``: the best roll and translation of every
        scale, in the order of ``scales``. One per scale, not the overall best few: a road's
        horizon and edges all run through the vanishing point and look alike at any zoom about
        it, so the correlation may prefer a wrong scale; what tells scales apart (cars,
        people) is judged later, at higher resolution.
    """
    found = []
    for scale in scales:
        best = None
        for angle in angles:
            candidate = start @ about_centre(thermal_full, float(scale), float(angle))
            score, (dx, dy) = masked_ncc_search(level, indices, level.to_level(candidate), max_shift)
            if best is None or score > best[0]:
                moved = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ level.to_level(candidate)
                best = (score, level.to_full(moved))
            if progress is not None:
                progress()
        found.append(best)
    return found
