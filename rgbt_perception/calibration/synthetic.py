"""Synthetic camera rigs with a known thermal-to-RGB homography, for tests and the benchmark.

A scene is painted once on the RGB grid as reflectance (what the RGB camera sees) and
temperature (what the thermal camera sees). The RGB image is the exposed reflectance; the
thermal camera sees the temperature through the rig's homography at its own resolution,
with optical blur, fixed column offsets and temporal noise, as 16-bit counts. Thermal pixel
``p`` sees scene point ``H @ p`` of the RGB grid, which is exactly the convention of
``thermal_to_rgb``.

Scenes: road scenes (``day``, ``night``, ``fog``) with a horizon, a road with curbs and
paint, buildings, poles, cars, people and trees, each with its own colour and temperature
(paint and curbs have no heat contrast, people are dark at night but warm), and heated
checkerboards (black squares warm under a lamp: bright in thermal, reduced contrast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

ROAD_CONDITIONS = ("day", "night", "fog")


@dataclass(frozen=True)
class SyntheticRig:
    """``homography``: 3x3 thermal -> RGB; sizes ``(H, W)``."""

    homography: np.ndarray
    rgb_size: tuple[int, int] = (480, 640)
    thermal_size: tuple[int, int] = (512, 640)


def rig_homography(rgb_size=(480, 640), thermal_size=(512, 640), zoom: float = 1.08, roll_deg: float = 1.0,
                   shift_px=(10.0, -8.0), perspective=(1e-5, -1e-5), square_pixels: bool = False) -> np.ndarray:
    """Thermal -> RGB map: the same-view resize (or, with ``square_pixels``, one scale for both
    axes, centred), then zoom and roll about the RGB centre, a shift and a perspective term."""
    H, W = rgb_size
    h, w = thermal_size
    if square_pixels:
        s = W / w
        base = np.array([[s, 0, 0], [0, s, (H - h * s) / 2.0], [0, 0, 1.0]])
    else:
        base = np.diag([W / w, H / h, 1.0])
    a = math.radians(roll_deg)
    c, s = zoom * math.cos(a), zoom * math.sin(a)
    cx, cy = W / 2.0, H / 2.0
    move = np.array([[c, -s, cx - c * cx + s * cy + shift_px[0]], [s, c, cy - s * cx - c * cy + shift_px[1]],
                     [perspective[0], perspective[1], 1.0]])
    out = move @ base
    return out / out[2, 2]


def random_rig(seed: int, rgb_size=(480, 640), thermal_size=(512, 640)) -> SyntheticRig:
    """A seeded rig: zoom 0.9-1.15, roll +-3 deg, shift +-5 % of the width, a little perspective."""
    rng = np.random.default_rng([seed, 0xCA1B])
    W = rgb_size[1]
    homography = rig_homography(rgb_size, thermal_size, zoom=rng.uniform(0.9, 1.15), roll_deg=rng.uniform(-3, 3),
                                shift_px=rng.uniform(-0.05, 0.05, 2) * W,
                                perspective=rng.uniform(-3e-5, 3e-5, 2) * 640 / W,
                                square_pixels=bool(rng.integers(2)))
    return SyntheticRig(homography, tuple(rgb_size), tuple(thermal_size))


class _Canvas:
    def __init__(self, H: int, W: int) -> None:
        self.rgb = np.zeros((H, W, 3), np.float32)
        self.temp = np.zeros((H, W), np.float32)

    def poly(self, points, colour, temp: float | None) -> None:
        pts = [np.round(np.asarray(points, np.float64) * 16).astype(np.int32)]
        cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)
        if temp is not None:
            cv2.fillPoly(self.temp, pts, float(temp), cv2.LINE_AA, shift=4)

    def rect(self, x0, y0, x1, y1, colour, temp) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, temp)

    def ellipse(self, centre, axes, colour, temp) -> None:
        c = (int(round(centre[0] * 16)), int(round(centre[1] * 16)))
        a = (max(16, int(round(axes[0] * 16))), max(16, int(round(axes[1] * 16))))
        cv2.ellipse(self.rgb, c, a, 0, 0, 360, tuple(float(v) for v in colour), -1, cv2.LINE_AA, 4)
        cv2.ellipse(self.temp, c, a, 0, 0, 360, float(temp), -1, cv2.LINE_AA, 4)


def road_scene(rng: np.random.Generator, rgb_size=(480, 640), condition: str = "day"):
    """Reflectance ``H, W, 3`` in [0, 1] and temperature ``H, W`` (deg C) of a road scene."""
    if condition not in ROAD_CONDITIONS:
        raise ValueError(f"condition must be one of {ROAD_CONDITIONS}, got {condition!r}")
    H, W = rgb_size
    cv = _Canvas(H, W)
    ambient = rng.uniform(15, 28) if condition == "day" else rng.uniform(2, 12)
    sun = 6.0 if condition == "day" else 1.0
    horizon = rng.uniform(0.36, 0.5) * H
    tilt = rng.uniform(-0.03, 0.03) * H
    cv.rect(-1, -1, W + 1, H + 1, (0.45, 0.6, 0.9), ambient - rng.uniform(12, 20))
    ground = (rng.uniform(0.3, 0.45), rng.uniform(0.35, 0.45), rng.uniform(0.2, 0.3))
    cv.poly([(-1, horizon - tilt), (W + 1, horizon + tilt), (W + 1, H + 1), (-1, H + 1)], ground,
            ambient + rng.uniform(0.5, 2) * sun / 3)

    def y_at(x: float) -> float:
        return horizon - tilt + 2 * tilt * x / W

    # Buildings and trees on the horizon, poles along the road.
    x = rng.uniform(-40, 20)
    while x < W:
        width = rng.uniform(0.08, 0.2) * W
        if rng.random() < 0.6:
            top = y_at(x) - rng.uniform(0.08, 0.3) * H
            grey = rng.uniform(0.35, 0.75)
            cv.rect(x, top, x + width, y_at(x) + 2, (grey, grey * 0.95, grey * 0.9), ambient + rng.uniform(1, 4))
            for wy in np.arange(top + 8, y_at(x) - 10, rng.uniform(16, 26)):
                for wx in np.arange(x + 6, x + width - 10, rng.uniform(14, 22)):
                    cv.rect(wx, wy, wx + 7, wy + 9, (0.15, 0.2, 0.3), ambient + rng.uniform(3, 8))
        elif rng.random() < 0.7:
            cv.ellipse((x + width / 2, y_at(x) - 0.06 * H), (width / 2, 0.08 * H), (0.15, 0.35, 0.12),
                       ambient - rng.uniform(1, 3))
        x += width + rng.uniform(5, 60)
    vanish = rng.uniform(0.4, 0.6) * W
    left, right = rng.uniform(-0.3, 0.15) * W, rng.uniform(0.85, 1.3) * W
    road_temp = ambient + sun * rng.uniform(0.8, 1.3)
    grey = rng.uniform(0.22, 0.32)
    top = y_at(vanish) + 2
    cv.poly([(vanish - 4, top), (vanish + 4, top), (right, H + 1), (left, H + 1)], (grey,) * 3, road_temp)
    for side, edge in ((-1, left), (1, right)):
        # Curbs: bright concrete at the road's temperature (visible in RGB only).
        width = rng.uniform(0.02, 0.04) * W
        cv.poly([(vanish + side * 4, top), (vanish + side * 5, top), (edge + side * width, H + 1), (edge, H + 1)],
                (0.75,) * 3, road_temp + rng.uniform(-0.2, 0.2))
        for k in range(int(rng.integers(1, 4))):
            t = rng.uniform(0.15, 1.0)
            px, py = vanish + (edge + side * 1.5 * width - vanish) * t, top + (H - top) * t
            cv.rect(px - 2 * t - 1, py - 0.5 * H * t, px + 2 * t + 1, py, (0.2, 0.2, 0.22), ambient + 1.5)
    for k in range(8):
        t0, t1 = (k / 8) ** 1.6, ((k + 0.5) / 8) ** 1.6
        y0, y1 = top + (H - top) * t0, top + (H - top) * t1
        x0 = vanish + ((left + right) / 2 - vanish) * t0
        x1 = vanish + ((left + right) / 2 - vanish) * t1
        cv.poly([(x0 - 1 - 4 * t0, y0), (x0 + 1 + 4 * t0, y0), (x1 + 1 + 4 * t1, y1), (x1 - 1 - 4 * t1, y1)],
                (0.9, 0.9, 0.85), None)
    things = sorted(rng.uniform(0.1, 1.0, int(rng.integers(2, 7))))
    for t in things:
        py = top + (H - top) * t
        px = vanish + (rng.uniform(left, right) - vanish) * t
        if rng.random() < 0.5:
            w, h = 0.28 * W * t, 0.16 * W * t
            colour = rng.uniform(0.05, 0.9, 3)
            cv.rect(px - w / 2, py - h, px + w / 2, py, colour, ambient + rng.uniform(4, 12))
            cv.rect(px - w / 2.5, py - h, px + w / 2.5, py - 0.6 * h, (0.1, 0.12, 0.15), ambient + 2)
        else:
            h = 0.3 * H * t
            cv.ellipse((px, py - 0.45 * h), (0.12 * h, 0.4 * h), rng.uniform(0.05, 0.6, 3), 30.0 + rng.uniform(-3, 3))
            cv.ellipse((px, py - 0.92 * h), (0.08 * h, 0.08 * h), (0.8, 0.6, 0.5), 33.0)
    return cv.rgb, cv.temp


def board_scene(rng: np.random.Generator, pattern=(7, 5), rgb_size=(480, 640), where=None):
    """A heated checkerboard (``pattern`` inner corners, cols x rows) on a plain scene.

    ``where``: board centre as fractions of the image size (random when None). Black squares
    are warm (bright in thermal), white ones barely: the thermal contrast is inverted and
    lower than the RGB one.
    """
    H, W = rgb_size
    cv = _Canvas(H, W)
    ambient = rng.uniform(15, 25)
    cv.rect(-1, -1, W + 1, H + 1, (0.55, 0.5, 0.45), ambient)
    cv.rect(-1, rng.uniform(0.55, 0.8) * H, W + 1, H + 1, (0.35, 0.33, 0.3), ambient + 1.5)
    cols, rows = pattern[0] + 1, pattern[1] + 1
    square = rng.uniform(0.045, 0.065) * W
    cx, cy = (rng.uniform(0.3, 0.7, 2) if where is None else np.asarray(where)) * (W, H)
    angle = math.radians(rng.uniform(-12, 12))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    keystone = rng.uniform(-0.0008, 0.0008, 2) / square

    def at(u: float, v: float) -> tuple[float, float]:
        p = np.array([(u - cols / 2) * square, (v - rows / 2) * square])
        w = 1.0 + keystone @ p
        q = rot @ p / w
        return float(cx + q[0]), float(cy + q[1])

    margin = 0.6
    cv.poly([at(-margin, -margin), at(cols + margin, -margin), at(cols + margin, rows + margin),
             at(-margin, rows + margin)], (0.92, 0.92, 0.9), ambient + 2.0)
    for i in range(cols):
        for j in range(rows):
            if (i + j) % 2 == 0:
                cv.poly([at(i, j), at(i + 1, j), at(i + 1, j + 1), at(i, j + 1)], (0.05, 0.05, 0.05), ambient + 9.0)
    return cv.rgb, cv.temp


def render_pair(rng: np.random.Generator, reflectance: np.ndarray, temperature: np.ndarray, rig: SyntheticRig,
                condition: str = "day") -> tuple[np.ndarray, np.ndarray]:
    """(RGB ``H, W, 3`` uint8, thermal ``h, w`` uint16 counts) of a painted scene."""
    H, W = rig.rgb_size
    texture = cv2.resize(rng.standard_normal((H // 16, W // 16)).astype(np.float32), (W, H))
    rgb = reflectance * (1.0 + 0.05 * texture)[..., None]
    if condition == "night":
        rgb, noise = rgb * rng.uniform(0.05, 0.1), 3.0
    elif condition == "fog":
        veil = rng.uniform(0.5, 0.7)
        rgb, noise = rgb * (1 - veil) + veil * 0.7, 2.0
    else:
        noise = 2.0
    rgb = cv2.GaussianBlur(rgb, (0, 0), 0.6) * 255.0 + rng.normal(0, noise, rgb.shape).astype(np.float32)
    h, w = rig.thermal_size
    temp = temperature + 0.25 * texture
    seen = cv2.warpPerspective(temp, rig.homography, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    seen = cv2.GaussianBlur(seen, (0, 0), 0.8)
    columns = np.random.default_rng(int(abs(rig.homography[0, 2]) * 1000) % 2**31).normal(0, 4.0, w)
    counts = 7000.0 + 60.0 * seen + columns[None, :] + rng.normal(0, 6.0, seen.shape)
    return (np.clip(rgb + 0.5, 0, 255).astype(np.uint8),
            np.clip(np.round(counts), 0, 65535).astype(np.uint16))


def to_8bit(thermal: np.ndarray) -> np.ndarray:
    """Automatic-gain 8-bit thermal (1st to 99th percentile), as many cameras export it."""
    low, high = np.percentile(thermal, (1, 99))
    return np.clip((thermal.astype(np.float32) - low) * (255.0 / max(high - low, 1.0)), 0, 255).astype(np.uint8)


def road_pairs(rig: SyntheticRig, count: int, conditions=ROAD_CONDITIONS, seed: int = 0):
    """``[(rgb, thermal16, condition)]``: ``count`` road scenes cycling through ``conditions``."""
    rng = np.random.default_rng([seed, 0x70AD])
    out = []
    for k in range(count):
        condition = conditions[k % len(conditions)]
        reflectance, temperature = road_scene(rng, rig.rgb_size, condition)
        rgb, thermal = render_pair(rng, reflectance, temperature, rig, condition)
        out.append((rgb, thermal, condition))
    return out


def board_pairs(rig: SyntheticRig, count: int, pattern=(7, 5), seed: int = 0):
    """``[(rgb, thermal16)]``: a heated board at ``count`` positions spread over the image."""
    rng = np.random.default_rng([seed, 0xB0A2])
    spots = [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.5, 0.5), (0.5, 0.3), (0.3, 0.5), (0.7, 0.5)]
    out = []
    for k in range(count):
        where = np.asarray(spots[k % len(spots)]) + rng.uniform(-0.05, 0.05, 2)
        reflectance, temperature = board_scene(rng, pattern, rig.rgb_size, where)
        out.append(render_pair(rng, reflectance, temperature, rig, "day"))
    return out


def horizon_pairs(rig: SyntheticRig, count: int, seed: int = 0):
    """``[(rgb, thermal16)]`` of scenes whose only structure is a level horizon (cold sky over
    warm ground) at a different height each time: nothing fixes the horizontal direction."""
    rng = np.random.default_rng([seed, 0x4012])
    H, W = rig.rgb_size
    out = []
    for k in range(count):
        horizon = (0.3 + 0.4 * k / max(count - 1, 1)) * H
        cv = _Canvas(H, W)
        cv.rect(-1, -1, W + 1, H + 1, (0.35, 0.55, 0.9), -10.0)
        cv.rect(-1, horizon, W + 1, H + 1, (0.3, 0.35, 0.25), 15.0)
        out.append(render_pair(rng, cv.rgb, cv.temp, rig, "day"))
    return out
