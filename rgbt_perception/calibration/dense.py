"""Dense stage of targetless calibration: correlation of edge maps, coarse to fine.

* :func:`search`: for scale and roll hypotheses around a starting map, the translation comes
  from a masked normalised cross-correlation (FFT) of each warped thermal edge map against its
  RGB edge map; the pairs' correlation surfaces are averaged, so a pair that shows little adds
  a flat surface rather than a wrong peak.
* :func:`refine`: all 8 degrees of freedom by Gauss-Newton with a line search on the weighted
  mean of the pairs' normalised cross-correlations (ECC-like, forward-compositional).

The result is good to a few pixels; :mod:`rgbt_perception.calibration.edges` finishes it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import features as ft


class Level:
    """Edge maps of all pairs at one pyramid level and the normalised increment Jacobian.

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
        h, w = self.thermal_size
        self.centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        self.unit = max(h, w) / 2.0
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.grid = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w, np.float32)])
        u1 = (xs - self.centre[0]) / self.unit
        u2 = (ys - self.centre[1]) / self.unit
        zero, one = np.zeros_like(u1), np.ones_like(u1)
        s = np.float32(self.unit)
        # d(x', y') / d(increment) at zero increment, pixel units (8 parameters, perspective last).
        self.dx = s * np.stack([u1, u2, one, zero, zero, zero, -u1 * u1, -u1 * u2])
        self.dy = s * np.stack([zero, zero, zero, u1, u2, one, -u1 * u2, -u2 * u2])
        # Thermal border pixels carry blur artefacts of the image edge, not scene structure.
        border = np.zeros((h, w), bool)
        border[2:-2, 2:-2] = True
        self.inner = border

    def to_level(self, homography: np.ndarray) -> np.ndarray:
        return ft.level_homography(homography, self.thermal_scale, self.rgb_scale)

    def to_full(self, level: np.ndarray) -> np.ndarray:
        return ft.full_homography(level, self.thermal_scale, self.rgb_scale)

    def increment(self, delta: np.ndarray) -> np.ndarray:
        """3x3 pixel-space matrix of a normalised increment (applied on the thermal side)."""
        norm = np.array([[1 / self.unit, 0, -self.centre[0] / self.unit],
                         [0, 1 / self.unit, -self.centre[1] / self.unit], [0, 0, 1]])
        step = np.eye(3) + np.array([[delta[0], delta[1], delta[2]], [delta[3], delta[4], delta[5]],
                                     [delta[6], delta[7], 0.0]])
        return np.linalg.inv(norm) @ step @ norm

    def maps(self, level_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = self.thermal_size
        mapped = level_h.astype(np.float32) @ self.grid
        with np.errstate(divide="ignore", invalid="ignore"):
            mx = (mapped[0] / mapped[2]).reshape(h, w)
            my = (mapped[1] / mapped[2]).reshape(h, w)
        rh, rw = self.rgb_size
        valid = (mapped[2].reshape(h, w) > 0) & (mx >= 1) & (mx <= rw - 2) & (my >= 1) & (my <= rh - 2) & self.inner
        return mx, my, valid

    def evaluate(self, level_h: np.ndarray, index: int, maps=None, gradients: bool = True):
        """NCC of pair ``index`` at ``level_h`` and (with ``gradients``) its gradient ``b`` (8) and
        Gauss-Newton curvature ``A`` (8x8): ncc(delta) ~ ncc + b.delta - delta.A.delta / 2."""
        mx, my, valid = self.maps(level_h) if maps is None else maps
        mask = valid.astype(np.float32)
        count = float(mask.sum())
        if count < 64:
            return 0.0, None, None, count
        warped = [cv2.remap(channel, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                  for channel in self.rgb[index]]
        i_c = [(w - np.float32(np.vdot(w, mask) / count)) * mask for w in warped]
        t_c = [(t - np.float32(np.vdot(t, mask) / count)) * mask for t in self.thermal[index]]
        i_norm = math.sqrt(sum(float(np.vdot(c, c)) for c in i_c))
        t_norm = math.sqrt(sum(float(np.vdot(c, c)) for c in t_c))
        if i_norm < 1e-6 or t_norm < 1e-6:
            return 0.0, None, None, count
        ncc = sum(float(np.vdot(i, t)) for i, t in zip(i_c, t_c)) / (i_norm * t_norm)
        if not gradients:
            return ncc, None, None, count
        # Unit-norm vectors i and t: ncc = <i, t>. With sd = d(i)/d(delta) (normalisation held
        # fixed) projected off i (moving along i only rescales it, which NCC ignores):
        # A = sd.sd' - v.v' and b = sd.t - ncc.v with v = sd.i.
        inv_i, inv_t = np.float32(1.0 / i_norm), np.float32(1.0 / t_norm)
        n = mask.size
        gxx = np.zeros_like(mask)
        gxy = np.zeros_like(mask)
        gyy = np.zeros_like(mask)
        gx_i = np.zeros_like(mask)
        gy_i = np.zeros_like(mask)
        gx_t = np.zeros_like(mask)
        gy_t = np.zeros_like(mask)
        dx = self.dx.reshape(8, n)
        dy = self.dy.reshape(8, n)
        centring = np.zeros((8, 8))
        for w, ic, tc in zip(warped, i_c, t_c):
            gx = cv2.Sobel(w, cv2.CV_32F, 1, 0, ksize=1, scale=0.5) * mask
            gy = cv2.Sobel(w, cv2.CV_32F, 0, 1, ksize=1, scale=0.5) * mask
            # i is centred over the mask, so its derivative is too: remove sd's mean per channel.
            sd_sum = (dx @ gx.reshape(n) + dy @ gy.reshape(n)).astype(np.float64)
            centring += np.outer(sd_sum, sd_sum) / count
            gxx += gx * gx
            gxy += gx * gy
            gyy += gy * gy
            gx_i += gx * ic
            gy_i += gy * ic
            gx_t += gx * tc
            gy_t += gy * tc
        s2 = inv_i * inv_i
        dx_xx, dx_xy, dy_yy = dx * gxx.reshape(n), dx * gxy.reshape(n), dy * gyy.reshape(n)
        cross = dx_xy @ dy.T
        a = (dx_xx @ dx.T + cross + cross.T + dy_yy @ dy.T).astype(np.float64) * float(s2)
        v = (dx @ gx_i.reshape(n) + dy @ gy_i.reshape(n)).astype(np.float64) * float(s2)
        sd_t = (dx @ gx_t.reshape(n) + dy @ gy_t.reshape(n)).astype(np.float64) * float(inv_i * inv_t)
        a -= np.outer(v, v) + centring * float(s2)
        b = sd_t - ncc * v
        # The curvature of the normalised correlation is ncc times the Gauss-Newton matrix (the
        # normalisation flattens it): without the factor, steps fall short by 1/ncc.
        return ncc, a * max(ncc, 0.05), b, count


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


def masked_ncc_search(level: Level, indices: Sequence[int], level_h: np.ndarray, max_shift: float
                       ) -> tuple[float, tuple[float, float]]:
    """Best mean masked NCC over translations of the warped thermal maps, and that translation
    (RGB level px). Translations are limited to ``max_shift`` of the RGB size."""
    rh, rw = level.rgb_size
    pad_y, pad_x = int(math.ceil(max_shift * rh)), int(math.ceil(max_shift * rw))
    ch, cw = rh + 2 * pad_y, rw + 2 * pad_x
    shift = np.array([[1, 0, pad_x], [0, 1, pad_y], [0, 0, 1.0]])
    canvas_h = shift @ level_h
    fh, fw = cv2.getOptimalDFTSize(rh + ch), cv2.getOptimalDFTSize(rw + cw)
    th, tw = level.thermal_size
    mask_t = np.zeros((th, tw), np.float32)
    mask_t[2:-2, 2:-2] = 1
    mask_g = cv2.warpPerspective(mask_t, canvas_h, (cw, ch), flags=cv2.INTER_LINEAR)
    mask_g = (mask_g > 0.99).astype(np.float32)
    cache = level.search_cache
    key = (fh, fw, tuple(indices))
    if key not in cache:
        f = np.stack([level.rgb[i] for i in indices])        # N, C, rh, rw
        ff = np.fft.rfft2(f, (fh, fw))
        ff2 = np.fft.rfft2(f * f, (fh, fw))
        mr = np.fft.rfft2(np.ones((rh, rw), np.float32), (fh, fw))
        cache[key] = (np.conj(ff.sum(1)), np.conj(ff2.sum(1)), np.conj(ff), np.conj(mr), f.shape[1])
    f_sum, f2_sum, f_each, mr, channels = cache[key]
    g = np.stack([[cv2.warpPerspective(c, canvas_h, (cw, ch), flags=cv2.INTER_LINEAR) for c in level.thermal[i]]
                  for i in indices]) * mask_g
    fg = np.fft.rfft2(g, (fh, fw))
    fg2 = np.fft.rfft2(g * g, (fh, fw))
    fm = np.fft.rfft2(mask_g, (fh, fw))
    n = np.fft.irfft2(mr * fm, (fh, fw)) * channels
    s_f = np.fft.irfft2(f_sum * fm[None], (fh, fw))
    s_ff = np.fft.irfft2(f2_sum * fm[None], (fh, fw))
    s_g = np.fft.irfft2(mr[None] * fg.sum(1), (fh, fw))
    s_gg = np.fft.irfft2(mr[None] * fg2.sum(1), (fh, fw))
    s_fg = np.fft.irfft2((f_each * fg).sum(1), (fh, fw))
    n_safe = np.maximum(n, 1.0)
    num = s_fg - s_f * s_g / n_safe
    den = (s_ff - s_f * s_f / n_safe) * (s_gg - s_g * s_g / n_safe)
    ncc = num / np.sqrt(np.maximum(den, 1e-9))
    score = ncc.mean(0)
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
        ``[(mean masked NCC, full-resolution H)]``, best first.
    """
    found = []
    for scale in scales:
        for angle in angles:
            candidate = start @ about_centre(thermal_full, float(scale), float(angle))
            score, (dx, dy) = masked_ncc_search(level, indices, level.to_level(candidate), max_shift)
            moved = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ level.to_level(candidate)
            found.append((score, level.to_full(moved)))
            if progress is not None:
                progress()
    found.sort(key=lambda item: -item[0])
    return found


def refine(level: Level, homography: np.ndarray, weights: np.ndarray, iterations: int = 25
           ) -> tuple[np.ndarray, float]:
    """Maximise the weighted mean NCC over the 8 parameters of the normalised increment.

    Gauss-Newton steps with a line search that also tries longer steps: along weakly
    constrained directions (the keystone of an image whose upper half is sky) the
    Gauss-Newton matrix overstates the curvature and plain steps fall short.

    Returns:
        (full-resolution H, weighted mean NCC).
    """
    indices = [i for i in range(len(level.rgb)) if weights[i] > 0]
    total = float(sum(weights[i] for i in indices))
    if total <= 0:
        return homography, 0.0

    def joint(level_h: np.ndarray, gradients: bool = True):
        maps = level.maps(level_h)
        score, a_sum, b_sum = 0.0, np.zeros((8, 8)), np.zeros(8)
        for i in indices:
            ncc, a, b, _ = level.evaluate(level_h, i, maps, gradients)
            score += weights[i] * ncc
            if gradients and a is not None:
                a_sum += weights[i] * a
                b_sum += weights[i] * b
        return score / total, a_sum / total, b_sum / total

    def moved(delta: np.ndarray) -> np.ndarray:
        out = current @ level.increment(delta)
        return out / out[2, 2]

    current = level.to_level(homography)
    score, curvature, grad = joint(current)
    for _ in range(iterations):
        try:
            step = np.linalg.solve(curvature + 1e-9 * np.trace(curvature) * np.eye(8), grad)
        except np.linalg.LinAlgError:
            break
        best_score, best_alpha = score, 0.0
        for alpha in (1.0, 2.0, 4.0, 8.0):
            trial = joint(moved(alpha * step), gradients=False)[0]
            if trial <= best_score:
                break
            best_score, best_alpha = trial, alpha
        if best_alpha == 0:
            for alpha in (0.5, 0.25, 0.125):
                trial = joint(moved(alpha * step), gradients=False)[0]
                if trial > score:
                    best_score, best_alpha = trial, alpha
                    break
        if best_alpha == 0:
            break
        gain = best_score - score
        current = moved(best_alpha * step)
        score, curvature, grad = joint(current)
        if gain < 1e-4:
            break
    return level.to_full(current), score
