"""Synthetic traffic: road scenes whose only vertical structure is cars and people, and drives.

The hard case of targetless calibration on a vehicle: an open road under the sky, lane paint
that only the RGB camera sees (paint has the asphalt's temperature), a shoulder that may or
may not differ in temperature from the road, and traffic: cars (warm bodies, hot wheels and
exhausts, cold windows that mirror the sky, lights that only the RGB camera sees at night)
and people (warm skin and clothes, dark at night in RGB). Nothing else stands up from the
ground: no poles, walls or buildings.

The world is a ground plane seen by a pinhole RGB camera at ``camera_height`` above it
(x right, y up, z forward, metres); actors stand on the plane and move with their own speeds
while the ego vehicle drives along the road, so a sequence (:func:`drive_frames`) shows them
at changing places and sizes. Each frame is painted on a canvas padded beyond the RGB image
(the thermal camera may see more than the RGB one); the thermal camera sees the painted
temperature through the rig's homography (:class:`rgbt_perception.calibration.synthetic.SyntheticRig`),
at its own size, blurred to its own pixel footprint, as 16-bit counts with column offsets,
vignetting and temporal noise. Night RGB is dark and noisy, lit by the ego's headlights and
the traffic's own lights (with bloom).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration.synthetic import SyntheticRig, rig_homography

TRAFFIC_CONDITIONS = ("day", "night")
LANE_WIDTH_M = 3.5


@dataclass(frozen=True)
class TrafficOptions:
    """What a traffic scene may hold. ``cars`` and ``people``: ranges of how many (inclusive);
    ``edge_contrast``: |road - shoulder| temperature range (deg C; 0 hides the road edges in
    thermal, leaving the horizon and the traffic); ``ego_speed`` m/s range of a drive."""

    cars: tuple[int, int] = (1, 6)
    people: tuple[int, int] = (0, 3)
    edge_contrast: tuple[float, float] = (0.0, 1.5)
    ego_speed: tuple[float, float] = (8.0, 18.0)


@dataclass
class Actor:
    """A car or a person on the ground plane: lateral ``x`` and forward ``z`` (m) at time 0,
    velocity ``vx``, ``vz`` (m/s), ``size`` (width, height m), ``colours`` (reflectances) and
    ``temps`` (deg C) of its parts, ``facing`` +1 (seen from behind) or -1 (oncoming)."""

    kind: str
    x: float
    z: float
    vx: float
    vz: float
    size: tuple[float, float]
    colours: dict[str, np.ndarray]
    temps: dict[str, float]
    facing: int = 1


@dataclass
class World:
    """A road, its conditions and its traffic (see :func:`random_world`)."""

    condition: str
    focal: float
    horizon: float
    camera_height: float
    roll_rad: float
    ambient: float
    temps: dict[str, float]
    colours: dict[str, np.ndarray]
    road_edges: tuple[float, float]
    lane_lines: list[float]
    ego_speed: float
    light: float
    actors: list[Actor] = field(default_factory=list)


def random_traffic_rig(seed: int, rgb_size: Sequence[int] = (480, 640), thermal_size: Sequence[int] = (512, 640)
                       ) -> SyntheticRig:
    """A seeded rig: zoom 0.82-1.2, roll +-3 deg, an offset of 15-60 px (at 640 px width) in a
    random direction, perspective up to 4e-5 (at 640 px), square or resized pixels."""
    rng = np.random.default_rng([seed, 0x7AFF])
    width = rgb_size[1]
    angle = rng.uniform(0, 2 * math.pi)
    offset = rng.uniform(15, 60) * width / 640.0
    homography = rig_homography(tuple(rgb_size), tuple(thermal_size), zoom=rng.uniform(0.82, 1.2),
                                roll_deg=rng.uniform(-3, 3), shift_px=(offset * math.cos(angle),
                                                                       offset * math.sin(angle)),
                                perspective=tuple(rng.uniform(-4e-5, 4e-5, 2) * 640 / width),
                                square_pixels=bool(rng.integers(2)))
    return SyntheticRig(homography, tuple(rgb_size), tuple(thermal_size))


def _car(rng: np.random.Generator, x: float, z: float, facing: int, ambient: float, night: bool,
         ego_speed: float) -> Actor:
    sun = 0.0 if night else rng.uniform(2, 8)
    colours = {"body": rng.uniform(0.05, 0.9, 3), "glass": np.full(3, rng.uniform(0.05, 0.2)),
               "tyre": np.full(3, 0.05), "plate": np.array([0.85, 0.85, 0.8])}
    temps = {"body": ambient + sun + rng.uniform(1, 6), "glass": ambient - rng.uniform(2, 8),
             "tyre": ambient + rng.uniform(8, 20), "hot": ambient + rng.uniform(15, 40)}
    # Traffic in the ego's direction keeps about its speed; oncoming traffic passes by.
    speed = ego_speed + rng.uniform(-4, 4) if facing > 0 else -rng.uniform(8, 20)
    return Actor("car", x, z, 0.0, speed, (rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8)), colours, temps, facing)


def _person(rng: np.random.Generator, x: float, z: float, ambient: float) -> Actor:
    colours = {"top": rng.uniform(0.05, 0.8, 3), "legs": rng.uniform(0.05, 0.5, 3),
               "skin": np.array([0.8, 0.6, 0.5]) * rng.uniform(0.4, 1.0)}
    temps = {"top": max(ambient + 3, rng.uniform(22, 30)), "legs": max(ambient + 2, rng.uniform(20, 28)),
             "skin": rng.uniform(30, 34)}
    crossing = rng.random() < 0.3
    return Actor("person", x, z, rng.uniform(-1.3, 1.3) if crossing else 0.0,
                 0.0 if crossing else rng.uniform(-1.5, 1.5), (rng.uniform(0.45, 0.6), rng.uniform(1.55, 1.9)),
                 colours, temps)


def random_world(rng: np.random.Generator, rgb_size: Sequence[int], condition: str = "day",
                 options: TrafficOptions = TrafficOptions()) -> World:
    """A road with ``options.cars`` cars in its lanes and ``options.people`` people beside it."""
    if condition not in TRAFFIC_CONDITIONS:
        raise ValueError(f"condition must be one of {TRAFFIC_CONDITIONS}, got {condition!r}")
    height, width = rgb_size
    night = condition == "night"
    ambient = rng.uniform(0, 14) if night else rng.uniform(10, 30)
    road = ambient + (rng.uniform(1, 4) if night else rng.uniform(4, 15))
    contrast = rng.uniform(*options.edge_contrast) * rng.choice([-1, 1])
    temps = {"sky": ambient - rng.uniform(15, 30), "road": road, "shoulder": road + contrast}
    colours = {"sky": np.array([0.55, 0.7, 0.95]) * rng.uniform(0.7, 1.1), "road": np.full(3, rng.uniform(0.2, 0.35)),
               "shoulder": np.array([rng.uniform(0.25, 0.45), rng.uniform(0.35, 0.5), rng.uniform(0.15, 0.3)]),
               "paint": np.array([0.9, 0.9, 0.85]) if rng.random() < 0.7 else np.array([0.9, 0.75, 0.2])}
    left, right = int(rng.integers(0, 3)), int(rng.integers(0, 2))
    edges = (-LANE_WIDTH_M * (left + 0.5) - 0.3, LANE_WIDTH_M * (right + 0.5) + 0.3)
    lines = [LANE_WIDTH_M * (k + 0.5) for k in range(-left - 1, right + 1)]
    world = World(condition, width * rng.uniform(0.7, 1.0), height * rng.uniform(0.4, 0.55), rng.uniform(1.2, 1.6),
                  math.radians(rng.uniform(-1, 1)), ambient, temps, colours, edges, lines,
                  rng.uniform(*options.ego_speed), rng.uniform(0.06, 0.2) if night else 1.0)
    lanes = list(range(-left, right + 1))
    for _ in range(int(rng.integers(options.cars[0], options.cars[1] + 1))):
        z = 7 * math.exp(rng.uniform(0, 2.5))
        if rng.random() < 0.25:  # parked at the roadside: the ego passes it
            side = edges[0] if rng.random() < 0.5 else edges[1]
            car = _car(rng, side + math.copysign(1.2, side), z, 1, ambient, night, 0.0)
            car.vz = 0.0
        else:
            lane = int(rng.choice(lanes))
            car = _car(rng, lane * LANE_WIDTH_M + rng.uniform(-0.4, 0.4), z, -1 if lane < 0 else 1, ambient, night,
                       world.ego_speed)
        world.actors.append(car)
    for _ in range(int(rng.integers(options.people[0], options.people[1] + 1))):
        side = edges[0] if rng.random() < 0.5 else edges[1]
        x = side + math.copysign(rng.uniform(0.5, 4.0), side)
        world.actors.append(_person(rng, x, 5 * math.exp(rng.uniform(0, 2.2)), ambient))
    return world


class _Painter:
    """Reflectance, emitted light and temperature canvases of one frame, padded by ``pad``
    (x, y) pixels around the RGB image, and the camera projection onto them."""

    def __init__(self, world: World, rgb_size: Sequence[int], pad: Sequence[int], pitch_px: float) -> None:
        self.world = world
        self.height, self.width = int(rgb_size[0]) + 2 * pad[1], int(rgb_size[1]) + 2 * pad[0]
        self.centre = np.array([rgb_size[1] / 2.0 + pad[0], world.horizon + pad[1] + pitch_px])
        self.rgb = np.zeros((self.height, self.width, 3), np.float32)
        self.glow = np.zeros_like(self.rgb)
        self.temp = np.zeros((self.height, self.width), np.float32)
        c, s = math.cos(world.roll_rad), math.sin(world.roll_rad)
        self.rotation = np.array([[c, -s], [s, c]])

    def project(self, x, y, z) -> np.ndarray:
        """N, 2 canvas pixels of world points (x right, y up, z forward, m)."""
        x, y, z = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, z))
        z = np.maximum(z, 0.3)
        image = np.stack([self.world.focal * x / z, self.world.focal * (self.world.camera_height - y) / z], axis=1)
        return image @ self.rotation.T + self.centre

    def fill(self, points: np.ndarray, colour=None, temp: float | None = None, glow=None) -> None:
        pts = [np.round(np.asarray(points, np.float64) * 16).astype(np.int32)]
        # What is painted in front hides the light of what lies behind it.
        glow = glow if glow is not None or colour is None else 0.0
        for target, value in ((self.rgb, colour), (self.glow, glow)):
            if value is not None:
                cv2.fillPoly(target, pts, tuple(float(v) for v in np.broadcast_to(value, (3,))), cv2.LINE_AA, 4)
        if temp is not None:
            cv2.fillPoly(self.temp, pts, float(temp), cv2.LINE_AA, 4)

    def upright(self, x0: float, x1: float, y0: float, y1: float, z: float, colour=None, temp=None,
                glow=None) -> None:
        """A rectangle standing upright at distance ``z``, from ``x0`` to ``x1`` and ``y0`` to ``y1`` (m)."""
        self.fill(self.project([x0, x1, x1, x0], [y0, y0, y1, y1], [z] * 4), colour, temp, glow)

    def ground(self, x0: float, x1: float, z0: float, z1: float, colour=None, temp=None) -> None:
        """A rectangle on the ground plane, ``x0..x1`` across and ``z0..z1`` ahead (m)."""
        self.fill(self.project([x0, x1, x1, x0], [0.0] * 4, [z0, z0, z1, z1]), colour, temp)


def _paint_ground(p: _Painter, t: float) -> None:
    """Sky, shoulder, road and lane paint (paint only in RGB), lit for the condition."""
    w = p.world
    far = 2000.0
    horizon_line = p.project([-1e4, 1e4], [0.0, 0.0], [far, far])
    sky_rows = np.linspace(0.0, 1.0, p.height, dtype=np.float32)[:, None]
    p.rgb[:] = w.colours["sky"] * (0.85 + 0.15 * sky_rows[..., None])
    p.temp[:] = w.temps["sky"] + 6.0 * sky_rows
    below = np.vstack([horizon_line, [[horizon_line[1, 0], p.height * 4.0], [horizon_line[0, 0], p.height * 4.0]]])
    p.fill(below, w.colours["shoulder"], w.temps["shoulder"])
    p.ground(w.road_edges[0], w.road_edges[1], 0.5, far, w.colours["road"], w.temps["road"])
    travelled = w.ego_speed * t
    for k, line in enumerate(w.lane_lines):
        solid = k in (0, len(w.lane_lines) - 1)
        if solid:
            p.ground(line - 0.08, line + 0.08, 0.5, far, w.colours["paint"])
            continue
        first = math.floor((travelled + 1.0) / 12.0)
        for dash in range(first, first + 20):
            z0 = dash * 12.0 - travelled
            p.ground(line - 0.07, line + 0.07, max(z0, 0.5), z0 + 3.0, w.colours["paint"])
    if w.condition == "night":
        # Headlight beam: the ground ahead is lit, falling off with distance; the sky stays dark.
        # Smooth: computed on a grid 4 times coarser and enlarged.
        step = 4.0
        rows = np.arange(0, p.height, step, dtype=np.float32)[:, None] - np.float32(p.centre[1])
        z = w.focal * w.camera_height / np.maximum(rows, 1.0)
        cols = (np.arange(0, p.width, step, dtype=np.float32)[None, :] - np.float32(p.centre[0])) * z / w.focal
        beam = np.where(rows > 0, 0.8 * np.exp(-((cols / 4.0) ** 2)) / (1.0 + (z / 12.0) ** 2), 0.0)
        lit = (np.where(rows > 0, w.light, 0.25 * w.light) + beam).astype(np.float32)
        p.rgb *= cv2.resize(lit, (p.width, p.height), interpolation=cv2.INTER_LINEAR)[..., None]


def _illumination(w: World, z: float) -> float:
    return 1.0 if w.condition != "night" else w.light + 0.8 / (1.0 + (z / 12.0) ** 2)


def _paint_car(p: _Painter, a: Actor, x: float, z: float) -> None:
    w = p.world
    lit = _illumination(w, z)
    half, height = a.size[0] / 2, a.size[1]
    col, tmp = a.colours, a.temps
    if w.condition == "day":  # its shadow: darker and cooler road
        p.ground(x - half, x + half, z - 0.3, z + 1.5, w.colours["road"] * 0.35, w.temps["road"] - 3.0)
    else:  # the road under a car that has been running is warm
        p.ground(x - half, x + half, z - 0.1, z + 1.0, None, w.temps["road"] + 1.0)
    p.upright(x - half, x + half, 0.3, 0.55 * height, z, col["body"] * lit, tmp["body"])
    roof = 0.42 * a.size[0]
    p.fill(p.project([x - half, x + half, x + roof, x - roof], [0.55 * height, 0.55 * height, height, height],
                     [z] * 4), col["body"] * lit, tmp["body"] - 1.0)
    p.fill(p.project([x - half + 0.15, x + half - 0.15, x + roof - 0.1, x - roof + 0.1],
                     [0.6 * height, 0.6 * height, 0.93 * height, 0.93 * height], [z] * 4), col["glass"] * lit,
           tmp["glass"])
    for side in (-1, 1):
        p.upright(x + side * (half - 0.05), x + side * (half - 0.35), 0.0, 0.4, z, col["tyre"] * lit, tmp["tyre"])
        lamp = (np.array([1.0, 0.1, 0.05]) if a.facing > 0 else np.array([1.0, 1.0, 0.9])) * \
            (3.0 if w.condition == "night" else 0.0)
        p.upright(x + side * (half - 0.08), x + side * (half - 0.4), 0.42 * height, 0.5 * height, z,
                  np.array([0.8, 0.15, 0.1]) * lit if a.facing > 0 else np.array([0.85, 0.85, 0.8]) * lit,
                  tmp["body"] + 1.0, lamp if w.condition == "night" else None)
    p.upright(x - 0.26, x + 0.26, 0.3, 0.42, z, col["plate"] * lit, None)
    if a.facing > 0:  # the exhaust: a hot spot only thermal sees
        p.upright(x + 0.45, x + 0.6, 0.18, 0.3, z, None, tmp["hot"])
    else:  # the engine behind the grille
        p.upright(x - 0.5, x + 0.5, 0.32, 0.5, z, None, tmp["hot"] - 10.0)


def _paint_person(p: _Painter, a: Actor, x: float, z: float) -> None:
    lit = _illumination(p.world, z)
    half, height = a.size[0] / 2, a.size[1]
    col, tmp = a.colours, a.temps
    for side in (-1, 1):
        p.upright(x + side * 0.03, x + side * 0.45 * half, 0.0, 0.47 * height, z, col["legs"] * lit, tmp["legs"])
    p.upright(x - half, x + half, 0.45 * height, 0.82 * height, z, col["top"] * lit, tmp["top"])
    head = p.project([x], [0.91 * height], [z])[0]
    radius = 16 * p.world.focal * 0.11 * height / max(z, 0.3)
    centre = (int(round(head[0] * 16)), int(round(head[1] * 16)))
    axes = (max(16, int(round(0.8 * radius))), max(16, int(round(radius))))
    cv2.ellipse(p.rgb, centre, axes, 0, 0, 360, tuple(float(v) for v in col["skin"] * lit), -1, cv2.LINE_AA, 4)
    cv2.ellipse(p.temp, centre, axes, 0, 0, 360, float(tmp["skin"]), -1, cv2.LINE_AA, 4)


def _actor_position(a: Actor, t: float, ego_speed: float) -> tuple[float, float]:
    """Lateral position and distance ahead at time ``t``; an actor that leaves the stretch of
    road in view comes back at its other end (traffic keeps flowing)."""
    near, far = (7.0, 90.0) if a.kind == "car" else (3.0, 60.0)
    z = near + (a.z - near + (a.vz - ego_speed) * t) % (far - near)
    x = a.x + a.vx * t
    x = -12.0 + (x + 12.0) % 24.0
    return x, z


def paint_world(world: World, t: float, rgb_size: Sequence[int], pad: Sequence[int]) -> _Painter:
    """All canvases of ``world`` at time ``t`` (s)."""
    pitch = 2.0 * math.sin(2 * math.pi * 1.3 * t) + 1.0 * math.sin(2 * math.pi * 0.37 * t + 1.0)
    painter = _Painter(world, rgb_size, pad, pitch * rgb_size[0] / 480.0)
    _paint_ground(painter, t)
    placed = sorted(((_actor_position(a, t, world.ego_speed), a) for a in world.actors), key=lambda item: -item[0][1])
    for (x, z), actor in placed:
        (_paint_car if actor.kind == "car" else _paint_person)(painter, actor, x, z)
    return painter


def _padding(rig: SyntheticRig) -> tuple[int, int]:
    """Pixels the canvas needs beyond the RGB image for the thermal camera's view."""
    h, w = rig.thermal_size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64) @ rig.homography.T
    corners = corners[:, :2] / corners[:, 2:3]
    H, W = rig.rgb_size
    pad_x = max(0.0, -corners[:, 0].min(), corners[:, 0].max() - (W - 1))
    pad_y = max(0.0, -corners[:, 1].min(), corners[:, 1].max() - (H - 1))
    return int(math.ceil(pad_x)) + 8, int(math.ceil(pad_y)) + 8


@dataclass
class _Sensors:
    """Per-scene texture and noise of both cameras: ``grain`` ``H, W, 1`` multiplicative surface
    texture, ``rgb_noise`` / ``thermal_noise`` standard normal fields larger than the images
    (each frame takes a random window: fresh-looking noise without drawing millions of numbers
    per frame), ``columns`` the thermal camera's fixed column offsets (counts)."""

    grain: np.ndarray
    rgb_noise: np.ndarray
    thermal_noise: np.ndarray
    columns: np.ndarray

    def window(self, rng: np.random.Generator, field: np.ndarray, size: Sequence[int]) -> np.ndarray:
        y, x = (int(rng.integers(0, field.shape[i] - size[i] + 1)) for i in range(2))
        return field[y:y + size[0], x:x + size[1]]


def _sensors(rng: np.random.Generator, rig: SyntheticRig) -> _Sensors:
    margin = 48
    (H, W), (h, w) = rig.rgb_size, rig.thermal_size
    grain = cv2.GaussianBlur(1.0 + 0.04 * rng.standard_normal((H, W), dtype=np.float32), (0, 0), 0.8)[..., None]
    return _Sensors(grain, rng.standard_normal((H + margin, W + margin, 3), dtype=np.float32),
                    rng.standard_normal((h + margin, w + margin), dtype=np.float32), rng.normal(0, 4.0, w))


def _rgb_image(rng: np.random.Generator, painter: _Painter, rig: SyntheticRig, pad: Sequence[int],
               sensors: _Sensors) -> np.ndarray:
    H, W = rig.rgb_size
    night = painter.world.condition == "night"
    crop = (slice(pad[1], pad[1] + H), slice(pad[0], pad[0] + W))
    image = painter.rgb[crop] * sensors.grain
    if night:
        glow = painter.glow[crop]
        image = image + glow + 0.5 * cv2.GaussianBlur(glow, (0, 0), 4.0 * W / 640.0)
    image = cv2.GaussianBlur(image, (0, 0), 0.6 * W / 640.0) * 255.0
    image += np.float32(5.0 if night else 2.0) * sensors.window(rng, sensors.rgb_noise, (H, W))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _thermal_image(rng: np.random.Generator, painter: _Painter, rig: SyntheticRig, pad: Sequence[int],
                   sensors: _Sensors) -> np.ndarray:
    h, w = rig.thermal_size
    to_canvas = np.array([[1, 0, pad[0]], [0, 1, pad[1]], [0, 0, 1.0]]) @ rig.homography
    # Blur to the thermal pixel's footprint on the canvas before sampling (no aliasing).
    footprint = math.sqrt(abs(np.linalg.det(rig.homography[:2, :2]))) / rig.homography[2, 2]
    temp = painter.temp
    if footprint > 1.2:
        temp = cv2.GaussianBlur(temp, (0, 0), 0.5 * footprint)
    seen = cv2.warpPerspective(temp, to_canvas, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    seen = cv2.GaussianBlur(seen, (0, 0), 0.7)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = -1.5 * (((xs - w / 2) / w) ** 2 + ((ys - h / 2) / h) ** 2)
    counts = 7000.0 + 60.0 * (seen + vignette) + sensors.columns[None, :] + \
        5.0 * sensors.window(rng, sensors.thermal_noise, (h, w))
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def traffic_pairs(rig: SyntheticRig, count: int, conditions: Sequence[str] = TRAFFIC_CONDITIONS, seed: int = 0,
                  options: TrafficOptions = TrafficOptions()) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``[(rgb H, W, 3 uint8, thermal h, w uint16, condition)]``: ``count`` independent traffic
    scenes cycling through ``conditions`` (so half at night with the default)."""
    rng = np.random.default_rng([seed, 0x7A1C])
    pad = _padding(rig)
    out = []
    for k in range(count):
        condition = conditions[k % len(conditions)]
        painter = paint_world(random_world(rng, rig.rgb_size, condition, options), 0.0, rig.rgb_size, pad)
        sensors = _sensors(rng, rig)
        out.append((_rgb_image(rng, painter, rig, pad, sensors), _thermal_image(rng, painter, rig, pad, sensors),
                    condition))
    return out


@dataclass(frozen=True)
class DriveOptions:
    """A drive: ``seconds`` long, RGB at ``rgb_hz`` and thermal at ``thermal_hz`` (free-running
    clocks, thermal stamps jitter by ``jitter_s``), in ``condition``, with ``traffic``."""

    seconds: float = 60.0
    rgb_hz: float = 30.0
    thermal_hz: float = 8.7
    jitter_s: float = 0.002
    condition: str = "day"
    traffic: TrafficOptions = TrafficOptions(cars=(3, 8), people=(1, 4))


def _drive_setup(rig: SyntheticRig, options: DriveOptions, seed: int
                 ) -> tuple[np.random.Generator, World, tuple[int, int], _Sensors]:
    rng = np.random.default_rng([seed, 0xD417])
    world = random_world(rng, rig.rgb_size, options.condition, options.traffic)
    return rng, world, _padding(rig), _sensors(rng, rig)


def synchronised_drive_pairs(rig: SyntheticRig, times: Sequence[float], options: DriveOptions = DriveOptions(),
                             seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(rgb, thermal)]`` of the :func:`drive_frames` world (same ``seed``), both cameras exposed
    together at each of ``times`` (seconds): a drive with no motion between the two exposures."""
    rng, world, pad, sensors = _drive_setup(rig, options, seed)
    pairs = []
    for t in times:
        painter = paint_world(world, float(t), rig.rgb_size, pad)
        pairs.append((_rgb_image(rng, painter, rig, pad, sensors), _thermal_image(rng, painter, rig, pad, sensors)))
    return pairs


def drive_frames(rig: SyntheticRig, options: DriveOptions = DriveOptions(), seed: int = 0
                 ) -> Iterator[tuple[str, int, np.ndarray]]:
    """``("rgb" | "thermal", stamp ns, image)`` of one drive in stamp order; each frame shows the
    world at its own stamp (objects move between an RGB frame and the nearest thermal one)."""
    rng, world, pad, sensors = _drive_setup(rig, options, seed)
    rgb_times = np.arange(0.0, options.seconds, 1.0 / options.rgb_hz)
    thermal_times = np.arange(0.013, options.seconds, 1.0 / options.thermal_hz)
    thermal_times = thermal_times + rng.uniform(-options.jitter_s, options.jitter_s, len(thermal_times))
    events = sorted([(t, "rgb") for t in rgb_times] + [(t, "thermal") for t in thermal_times])
    for t, camera in events:
        painter = paint_world(world, float(t), rig.rgb_size, pad)
        image = _rgb_image(rng, painter, rig, pad, sensors) if camera == "rgb" else \
            _thermal_image(rng, painter, rig, pad, sensors)
        yield camera, int(round(1e9 + t * 1e9)), image


def write_drive_bag(path: str, rig: SyntheticRig, options: DriveOptions = DriveOptions(), seed: int = 0,
                    topics: tuple[str, str] = ("rgb/image", "thermal/image")) -> dict[str, int]:
    """Record :func:`drive_frames` as a rosbag2 (MCAP): ``rgb8`` and ``mono16`` images, each
    logged at its stamp. Returns the message count per topic."""
    from rgbt_perception.io.bag import BagWriter

    with BagWriter(path, storage="mcap") as writer:
        for camera, stamp, image in drive_frames(rig, options, seed):
            if camera == "rgb":
                writer.write_image(topics[0], image, "rgb8", stamp, "rgb_camera")
            else:
                writer.write_image(topics[1], image, "mono16", stamp, "thermal_camera")
        return dict(writer.counts)
