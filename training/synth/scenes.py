"""Synthetic RGB-thermal road scenes in the MFNet layout (``rgbt-synth``).

Each frame is a road plane in perspective with cars, people, bikes, colour cones, curbs,
guardrails, car stops and speed bumps. A scene is rendered once as reflectance (RGB) and
surface temperature (thermal) on the RGB grid; the thermal camera then sees that
temperature through a known misregistration homography at its own lower resolution, with
radiometric-like 16-bit counts, optical blur, temporal noise and fixed column pattern noise.

The two modalities complement each other by construction:
- warm bodies (people, running cars) stand out in thermal in every condition, while at night
  the RGB camera sees them dark and noisy, and in fog washed out;
- cones, curbs, bumps, guardrails and car stops sit at the temperature of their surroundings,
  so only the RGB camera separates them (by colour and brightness) by day;
- glare saturates part of the RGB image and leaves thermal untouched.

Written layout (readable by ``training.datasets.MFNetDataset``)::

    out/images/<stem>.png       4 channels (R, G, B, 8-bit thermal registered onto RGB)
    out/thermal16/<stem>.png    16-bit counts at the thermal resolution
    out/labels/<stem>.png       MFNet class indices
    out/{train,val,test}.txt    stems per split
    out/annotations/<split>.json  COCO boxes of the thing classes
    out/conditions.json         {stem: day | night | fog | glare}
    out/homography.txt          3x3 map from thermal pixels to RGB pixels
    out/synth.json              generator settings (seed, sizes, count model)
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from rgbt_perception.core.classes import SYNTHETIC
from rgbt_perception.core.preprocess import ThermalScaling, scale_thermal
from rgbt_perception.core.registration import warp_thermal_to_rgb
from training.synth.painting import (  # noqa: F401  (class ids: part of this module's API)
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    COLOR_CONE,
    CURVE,
    GUARDRAIL,
    PERSON,
    Canvas,
    paint_bike,
    paint_bump,
    paint_car,
    paint_car_stop,
    paint_cone,
    paint_guardrail,
    paint_person,
)

CONDITIONS = ("day", "night", "fog", "glare")


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings. Sizes are ``(H, W)``; counts = offset + gain * temperature (deg C)."""

    size: tuple[int, int] = (480, 640)
    thermal_size: tuple[int, int] = (240, 320)
    condition_weights: dict[str, float] = field(
        default_factory=lambda: {"day": 0.35, "night": 0.3, "fog": 0.2, "glare": 0.15}
    )
    counts_offset: float = 7000.0
    counts_per_degree: float = 60.0
    temporal_noise_counts: float = 6.0
    column_noise_counts: float = 4.0
    min_box_area: int = 16

    def __post_init__(self) -> None:
        for name in ("size", "thermal_size"):
            h, w = getattr(self, name)
            if h < 32 or w < 32:
                raise ValueError(f"{name} must be at least 32x32, got {h}x{w}")
        unknown = set(self.condition_weights) - set(CONDITIONS)
        if unknown or not any(v > 0 for v in self.condition_weights.values()):
            raise ValueError(f"condition weights must be positive weights of {CONDITIONS}, "
                             f"got {self.condition_weights}")


@dataclass(frozen=True)
class WorldStyle:
    """What a synthetic world looks like beyond the sensors: where the horizon sits, how many objects
    of each class a scene holds and how large they are drawn, and how night is rendered.

    ``counts``: ``{class: (low, high)}``, a scene draws ``integers(low, high)`` of that class
    (guardrail and bump: the chance of one). ``sizes``: ``{class: factor}`` on the perspective scale
    the object is drawn at. ``night``: ``"streetlight"`` (one dim lamp, world A) or ``"headlights"``
    (the ego car's low beams light the road ahead, other cars show lamps, sodium lamps tint the rest
    orange, stronger sensor noise). The defaults are world A (``rgbt-synth``); the same seed draws
    the same scenes with them as before the style existed.
    """

    horizon: tuple[float, float] = (0.38, 0.5)
    counts: dict[int, tuple[float, float]] = field(default_factory=lambda: {
        GUARDRAIL: (0.5, 0.5), BUMP: (0.45, 0.45), CAR_STOP: (0, 3), COLOR_CONE: (0, 5), CAR: (0, 4),
        PERSON: (0, 5), BIKE: (0, 3),
    })
    sizes: dict[int, float] = field(default_factory=dict)
    night: str = "streetlight"


WORLD_A = WorldStyle()


@dataclass(frozen=True)
class Rig:
    """The fixed camera pair: thermal->RGB homography and the thermal sensor's column offsets."""

    homography: np.ndarray
    column_offsets: np.ndarray


@dataclass
class SynthFrame:
    """One rendered frame: ``rgb`` HxWx3 uint8, ``thermal16`` hxw uint16, ``thermal8`` HxW uint8
    (registered onto RGB), ``label`` HxW uint8, ``boxes`` N,4 float32 xyxy, ``box_labels`` N int64."""

    rgb: np.ndarray
    thermal16: np.ndarray
    thermal8: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    condition: str


def make_rig(seed: int, cfg: SynthConfig) -> Rig:
    """A seeded thermal camera mounted beside the RGB one: a slightly wider view, a little shift,
    roll and perspective, on top of the resolution change."""
    rng = np.random.default_rng([seed, 0x5EED])
    H, W = cfg.size
    h, w = cfg.thermal_size
    # The thermal view is a little wider than the RGB one, so registration leaves no empty border.
    angle = np.deg2rad(rng.uniform(-1.0, 1.0))
    zoom = rng.uniform(1.08, 1.12)
    shift = rng.uniform(-0.015, 0.015, size=2) * (W, H)
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    cx, cy = W / 2, H / 2
    about_centre = np.array(
        [[cos, -sin, cx - cos * cx + sin * cy + shift[0]], [sin, cos, cy - sin * cx - cos * cy + shift[1]], [0, 0, 1]]
    )
    about_centre[2, :2] = rng.uniform(-1e-5, 1e-5, size=2) * 640 / W
    homography = about_centre @ np.diag([W / w, H / h, 1.0])
    homography /= homography[2, 2]
    column_offsets = rng.normal(0.0, cfg.column_noise_counts, size=w).astype(np.float32)
    return Rig(homography=homography, column_offsets=column_offsets)


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cell: int = 16) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]."""
    coarse = rng.standard_normal((max(2, H // cell), max(2, W // cell))).astype(np.float32)
    return cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)


def render_frame(rng: np.random.Generator, cfg: SynthConfig, rig: Rig, condition: str | None = None,
                 style: WorldStyle = WORLD_A) -> SynthFrame:
    """Render one scene; ``condition`` is drawn from ``cfg.condition_weights`` when not given."""
    H, W = cfg.size
    if condition is None:
        names = list(cfg.condition_weights)
        weights = np.asarray([cfg.condition_weights[n] for n in names], np.float64)
        condition = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    canvas = Canvas(H, W)

    # Every condition's draw is made so that the scene below does not depend on the condition.
    ambient_ranges = {"day": (18, 30), "glare": (15, 28), "night": (2, 14), "fog": (3, 12)}
    ambient = {name: rng.uniform(*limits) for name, limits in ambient_ranges.items()}[condition]
    sunny = condition in ("day", "glare")
    road_temp = ambient + (rng.uniform(4, 9) if sunny else rng.uniform(0.5, 2.0))
    ground_temp = ambient + (rng.uniform(1, 4) if sunny else rng.uniform(-1.0, 0.5))

    horizon = rng.uniform(*style.horizon) * H
    vanish_x = rng.uniform(0.4, 0.6) * W
    rows = np.arange(H, dtype=np.float32)[:, None]
    # Perspective: an object standing on row y is drawn at scale t(y) (1 at the bottom edge).
    def scale_at(y: float) -> float:
        return max(1e-3, (y - horizon) / (H - horizon))

    def sized(class_id: int):
        factor = style.sizes.get(class_id, 1.0)
        return scale_at if factor == 1.0 else (lambda y: scale_at(y) * factor)

    def count(class_id: int) -> int:
        low, high = style.counts[class_id]
        return int(rng.integers(int(low), int(high)))

    # Sky, ground and depth of the background.
    sky_top = np.array([0.35, 0.55, 0.9], np.float32) * rng.uniform(0.8, 1.0)
    sky = np.clip(sky_top + (rows / max(horizon, 1.0))[..., None] * np.float32(0.3), 0, 1)
    below = rows >= horizon
    ground_colour = np.array(rng.choice([[0.35, 0.42, 0.25], [0.45, 0.38, 0.3], [0.4, 0.4, 0.35]]), np.float32)
    canvas.rgb[:] = np.where(below[..., None], ground_colour, sky)
    canvas.temp[:] = np.where(below, ground_temp, ambient - rng.uniform(10, 20))
    canvas.depth[:] = np.where(below, 1.0 / np.maximum((rows - horizon) / (H - horizon), 0.02), 50.0)

    # Road: a trapezoid narrowing to the vanishing point.
    left_bottom = rng.uniform(-0.3, 0.15) * W
    right_bottom = rng.uniform(0.85, 1.3) * W
    top_half = rng.uniform(0.005, 0.02) * W
    y_top = horizon + 2

    def road_edges(y: float) -> tuple[float, float]:
        t = scale_at(y)
        left = vanish_x - top_half + (left_bottom - vanish_x + top_half) * t
        right = vanish_x + top_half + (right_bottom - vanish_x - top_half) * t
        return left, right

    road_grey = rng.uniform(0.22, 0.35)
    road = [(road_edges(y_top)[0], y_top), (road_edges(y_top)[1], y_top), (right_bottom, H), (left_bottom, H)]
    canvas.poly(road, (road_grey,) * 3, road_temp, 0, None)

    # Dashed centre line: paint only (no heat contrast).
    for k in range(8):
        y0 = horizon + (H - horizon) * (k / 8) ** 1.6 + 3
        y1 = horizon + (H - horizon) * ((k + 0.5) / 8) ** 1.6 + 3
        xs0, xs1 = np.mean(road_edges(y0)), np.mean(road_edges(y1))
        w0, w1 = 0.006 * W * scale_at(y0) + 0.5, 0.006 * W * scale_at(y1) + 0.5
        pts = [(xs0 - w0, y0), (xs0 + w0, y0), (xs1 + w1, y1), (xs1 - w1, y1)]
        cv2.fillPoly(canvas.rgb, [np.round(np.asarray(pts)).astype(np.int32)], (0.9, 0.9, 0.85))

    # Curbs along the road edges: bright concrete by day, the road's own temperature.
    for side in (0, 1):
        if rng.random() < 0.85:
            width = rng.uniform(0.025, 0.045) * W
            y0 = horizon + rng.uniform(0.05, 0.2) * (H - horizon)
            e0, e1 = road_edges(y0)[side], road_edges(H)[side]
            sign = -1 if side == 0 else 1
            pts = [(e0, y0), (e0 + sign * width * scale_at(y0), y0), (e1 + sign * width, H), (e1, H)]
            canvas.poly(pts, (rng.uniform(0.65, 0.8),) * 3, road_temp + rng.uniform(-0.3, 0.3), CURVE, None)

    objects = []  # (base row, draw function) painted far to near
    # Guardrail on one side: a metal band on posts, at the temperature of the ground around it.
    if rng.random() < style.counts[GUARDRAIL][0]:
        side = int(rng.integers(2))
        y0, y1 = horizon + 0.08 * (H - horizon), horizon + rng.uniform(0.6, 1.0) * (H - horizon)
        offset = rng.uniform(0.05, 0.12) * W * (-1 if side == 0 else 1)
        objects.append((y0, lambda y0=y0, y1=y1, side=side, offset=offset: paint_guardrail(
            canvas, rng, y0, y1, side, offset, road_edges, sized(GUARDRAIL), ground_temp)))
    # Speed bump across the road: yellow and black paint over a low hump, road temperature.
    if rng.random() < style.counts[BUMP][0]:
        yb = horizon + rng.uniform(0.25, 0.85) * (H - horizon)
        objects.append((yb, lambda yb=yb: paint_bump(canvas, yb, road_edges, sized(BUMP), road_temp, W)))
    for _ in range(count(CAR_STOP)):
        yc = horizon + rng.uniform(0.2, 1.0) * (H - horizon)
        objects.append((yc, lambda yc=yc: paint_car_stop(canvas, rng, yc, road_edges, sized(CAR_STOP), ground_temp, W)))
    for _ in range(count(COLOR_CONE)):
        y = horizon + rng.uniform(0.15, 1.0) * (H - horizon)
        objects.append((y, lambda y=y: paint_cone(canvas, rng, y, road_edges, sized(COLOR_CONE), road_temp, W, H)))
    for _ in range(count(CAR)):
        y = horizon + rng.uniform(0.12, 1.05) * (H - horizon)
        objects.append((y, lambda y=y: paint_car(canvas, rng, y, road_edges, sized(CAR), ambient, W)))
    for _ in range(count(PERSON)):
        y = horizon + rng.uniform(0.1, 1.05) * (H - horizon)
        objects.append((y, lambda y=y: paint_person(canvas, rng, y, road_edges, sized(PERSON), W, H)))
    for _ in range(count(BIKE)):
        y = horizon + rng.uniform(0.15, 1.05) * (H - horizon)
        objects.append((y, lambda y=y: paint_bike(canvas, rng, y, road_edges, sized(BIKE), ambient, W, H)))
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()

    rgb = _expose_rgb(rng, canvas, condition, H, W, style.night)
    thermal16 = _thermal_counts(rng, canvas, cfg, rig, condition)
    # The 8-bit channel is an automatic-gain image of the registered counts, like MFNet's.
    low, high = np.percentile(thermal16, (1.0, 99.0))
    registered = warp_thermal_to_rgb(thermal16, rig.homography, (H, W))
    gain = ThermalScaling(mode="fixed", low=float(low), high=float(max(high, low + 1)))
    thermal8 = np.round(scale_thermal(registered, gain) * 255.0).astype(np.uint8)
    boxes, box_labels = _instance_boxes(canvas, cfg.min_box_area)
    return SynthFrame(rgb, thermal16, thermal8, canvas.label, boxes, box_labels, condition)


def _fast_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean noise of standard deviation ``sigma`` (triangular: the sum of two uniform bytes),
    several times cheaper than Gaussian draws at full image size."""
    size = int(np.prod(shape))
    total = np.frombuffer(rng.bytes(size), np.uint8).astype(np.int16)
    total += np.frombuffer(rng.bytes(size), np.uint8)
    total -= 255
    return (total.astype(np.float32) * np.float32(sigma / 104.2)).reshape(shape)


def _headlight_night(rng, canvas: Canvas, rgb: np.ndarray, H: int, W: int) -> np.ndarray:
    """Night lit by the ego car's low beams (a bright pool on the near road), other cars' lamps
    and orange sodium lamps: bright where the beams fall, almost black beside them."""
    yy = (np.arange(H, dtype=np.float32)[:, None] / H)
    xx = (np.arange(W, dtype=np.float32)[None, :] / W) - np.float32(rng.uniform(0.45, 0.55))
    beam = np.exp(-((xx / (0.12 + 0.5 * np.clip(yy - 0.5, 0, 1))) ** 2)) * np.clip((yy - 0.55) / 0.45, 0, 1) ** 0.7
    sodium = np.array([1.0, 0.62, 0.25], np.float32) * np.float32(rng.uniform(0.02, 0.05))
    light = np.float32(rng.uniform(0.5, 0.8)) * beam[..., None] + sodium
    rgb = rgb * light.astype(np.float32)
    # Lamps of other cars: saturated spots with a small bloom on the car's bumper row.
    for index, class_id in enumerate(canvas.instance_classes, start=1):
        if class_id != CAR or rng.random() < 0.3:
            continue
        ys, xs = np.nonzero(canvas.instance == index)
        if len(ys) < 20:
            continue
        y, r = float(np.percentile(ys, 80)), max(1.5, 0.04 * float(xs.max() - xs.min()))
        for x in (float(np.percentile(xs, 10)), float(np.percentile(xs, 90))):
            cv2.circle(rgb, (int(round(x)), int(round(y))), int(round(2 * r)), (1.2, 1.0, 0.8), -1)
    return rgb


def _expose_rgb(rng, canvas: Canvas, condition: str, H: int, W: int, night: str = "streetlight") -> np.ndarray:
    texture = _smooth_noise(rng, H, W)
    rgb = canvas.rgb * (1.0 + 0.06 * texture)[..., None]
    if condition == "night" and night == "headlights":
        rgb = _headlight_night(rng, canvas, rgb, H, W)
        noise = 0.03
    elif condition == "night":
        # Only a dim street light: a few percent of the daylight signal, shot noise on top.
        light = rng.uniform(0.04, 0.09) * (1.0 + 0.8 * np.exp(-(((np.arange(W) - rng.uniform(0, W))
                                                                 / (0.3 * W)) ** 2)))[None, :]
        rgb = rgb * light[..., None].astype(np.float32)
        noise = 0.015
    elif condition == "fog":
        density = rng.uniform(0.5, 0.9)
        veil = 1.0 - np.exp(-density * np.minimum(canvas.depth, 50.0) - 0.9)
        fog_colour = np.float32(rng.uniform(0.6, 0.75))
        rgb = rgb * rng.uniform(0.6, 0.8) * (1.0 - veil[..., None]) + fog_colour * veil[..., None]
        noise = 0.01
    else:
        rgb = rgb * rng.uniform(0.85, 1.1)
        noise = 0.01
    if condition == "glare":
        # Low sun or headlights: a saturated blob with a bloom and a streak.
        cx, cy = rng.uniform(0.15, 0.85) * W, rng.uniform(0.2, 0.7) * H
        radius = rng.uniform(0.12, 0.3) * W
        yy = np.arange(H, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(W, dtype=np.float32)[None, :] - np.float32(cx)
        bloom = 2.5 * np.exp(-(xx**2 + yy**2) / np.float32(radius**2))
        bloom += 0.6 * np.exp(-((yy / np.float32(0.02 * H)) ** 2)) * np.exp(-np.abs(xx) / np.float32(W))
        rgb = rgb + bloom[..., None]
    rgb = rgb * np.float32(255.0) + _fast_noise(rng, rgb.shape, 255.0 * noise)
    return np.clip(rgb + np.float32(0.5), 0, 255).astype(np.uint8)


def _thermal_counts(rng, canvas: Canvas, cfg: SynthConfig, rig: Rig, condition: str) -> np.ndarray:
    h, w = cfg.thermal_size
    H, W = cfg.size
    temp = canvas.temp + 0.3 * _smooth_noise(rng, H, W, cell=24)
    if condition == "fog":
        # Long-wave infrared passes fog far better than light: a mild pull towards the mean.
        temp = temp + 0.2 * (float(temp.mean()) - temp)
    # Pixel p of the thermal camera sees the scene point H @ p of the RGB grid.
    seen = cv2.warpPerspective(temp, rig.homography, (w, h), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    seen = cv2.GaussianBlur(seen, (0, 0), 0.7)
    counts = cfg.counts_offset + cfg.counts_per_degree * seen
    counts += rig.column_offsets[None, :]
    counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(cfg.temporal_noise_counts)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def _instance_boxes(canvas: Canvas, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, labels = [], []
    for index, class_id in enumerate(canvas.instance_classes, start=1):
        # Visible pixels only: nearer objects drawn later may hide part of this one.
        visible = (canvas.instance == index).view(np.uint8)
        if cv2.countNonZero(visible) < min_area:
            continue
        x, y, w, h = cv2.boundingRect(visible)
        boxes.append((x, y, x + w, y + h))
        labels.append(class_id)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def frame_name(index: int, condition: str) -> str:
    """MFNet-style stem: running number plus D (day light) or N (night)."""
    return f"{index:05d}{'N' if condition == 'night' else 'D'}"


def _coco(split: str, frames: list[tuple[str, SynthFrame]], size: tuple[int, int]) -> dict:
    images, annotations = [], []
    for image_id, (name, frame) in enumerate(frames, start=1):
        images.append({"id": image_id, "file_name": f"{name}.png", "height": size[0], "width": size[1],
                       "condition": frame.condition})
        for (x0, y0, x1, y1), class_id in zip(frame.boxes.tolist(), frame.box_labels.tolist()):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(class_id),
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )
    categories = [{"id": i, "name": SYNTHETIC.names[i]} for i in SYNTHETIC.thing_ids]
    return {"info": {"description": f"rgbt-synth {split}"}, "images": images, "annotations": annotations,
            "categories": categories}


def generate_dataset(
    out: str,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    cfg: SynthConfig = SynthConfig(),
    progress: bool = True,
) -> dict[str, list[str]]:
    """Write a synthetic data set to ``out`` (see the module docstring for the layout).

    The same seed and settings give byte-identical files. Returns ``{split: [stems]}`` for the
    splits that got frames (an empty split writes no split file).
    """
    from tqdm import tqdm

    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"number of {split} frames must be >= 0, got {n}")
    if sum(counts.values()) == 0:
        raise ValueError("nothing to generate: all split sizes are 0")
    _prepare_output(out)
    rig = make_rig(seed, cfg)
    splits: dict[str, list[str]] = {}
    conditions: dict[str, str] = {}
    index = 0
    bar = tqdm(total=sum(counts.values()), desc="rgbt-synth", unit="frame", disable=not progress)
    for split, n in counts.items():
        frames = []
        for _ in range(n):
            frame = render_frame(np.random.default_rng([seed, index]), cfg, rig)
            name = frame_name(index, frame.condition)
            bgrt = np.dstack([frame.rgb[:, :, ::-1], frame.thermal8])
            _write_png(os.path.join(out, "images", f"{name}.png"), bgrt)
            _write_png(os.path.join(out, "thermal16", f"{name}.png"), frame.thermal16)
            _write_png(os.path.join(out, "labels", f"{name}.png"), frame.label)
            conditions[name] = frame.condition
            frames.append((name, frame))
            index += 1
            bar.update(1)
        if not frames:
            continue
        splits[split] = [name for name, _ in frames]
        with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in splits[split]))
        with open(os.path.join(out, "annotations", f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(_coco(split, frames, cfg.size), f)
    bar.close()
    with open(os.path.join(out, "conditions.json"), "w", encoding="utf-8") as f:
        json.dump(conditions, f, indent=0, sort_keys=True)
    np.savetxt(os.path.join(out, "homography.txt"), rig.homography, fmt="%.12g",
               header="thermal pixel -> RGB pixel (row-major 3x3)")
    settings = asdict(cfg)
    settings.update(seed=seed, classes=list(SYNTHETIC.names), splits={k: len(v) for k, v in splits.items()},
                    temperature_from_counts="deg_C = (counts - counts_offset) / counts_per_degree")
    with open(os.path.join(out, "synth.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    return splits


OUTPUT_FOLDERS = ("images", "thermal16", "labels", "annotations")


def _prepare_output(out: str) -> None:
    """Create the folders; files of an earlier rgbt-synth run there are removed so no stale frame
    survives, while a folder holding other data is refused."""
    images = os.path.join(out, "images")
    if os.path.isdir(images) and os.listdir(images):
        if not os.path.isfile(os.path.join(out, "synth.json")):
            raise ValueError(f"{out} already holds images that rgbt-synth did not write; choose another --out")
        for sub in OUTPUT_FOLDERS:
            folder = os.path.join(out, sub)
            for entry in os.listdir(folder) if os.path.isdir(folder) else ():
                if entry.endswith((".png", ".json")):
                    os.remove(os.path.join(folder, entry))
        for split in ("train", "val", "test"):
            if os.path.isfile(os.path.join(out, f"{split}.txt")):
                os.remove(os.path.join(out, f"{split}.txt"))
    for sub in OUTPUT_FOLDERS:
        os.makedirs(os.path.join(out, sub), exist_ok=True)


def _write_png(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")
