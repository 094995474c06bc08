"""What the synthetic scenes are painted with: the class ids, the canvas that paints reflectance,
temperature, label, instance and depth together, and the painters of the objects on the road."""
from __future__ import annotations

import cv2
import numpy as np

CAR, PERSON, BIKE, CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP = range(1, 9)


class Canvas:
    """Reflectance, temperature, label, instance and depth maps painted together."""

    def __init__(self, H: int, W: int) -> None:
        self.rgb = np.zeros((H, W, 3), np.float32)
        self.temp = np.zeros((H, W), np.float32)
        self.label = np.zeros((H, W), np.uint8)
        self.instance = np.zeros((H, W), np.uint16)
        self.depth = np.zeros((H, W), np.float32)
        self.instance_classes: list[int] = []

    def new_instance(self, class_id: int) -> int:
        self.instance_classes.append(class_id)
        return len(self.instance_classes)

    def poly(self, points, colour, temp: float, class_id: int, depth: float | None, instance: int = 0) -> None:
        """``depth=None`` keeps the ground's depth (flat things painted on the road)."""
        pts = [np.round(np.asarray(points, np.float64)).astype(np.int32)]
        cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in colour))
        cv2.fillPoly(self.temp, pts, float(temp))
        cv2.fillPoly(self.label, pts, int(class_id))
        cv2.fillPoly(self.instance, pts, int(instance))
        if depth is not None:
            cv2.fillPoly(self.depth, pts, float(depth))

    def ellipse(self, centre, axes, colour, temp: float, class_id: int, depth: float, instance: int = 0,
                thickness: int = -1) -> None:
        c = (int(round(centre[0])), int(round(centre[1])))
        a = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
        cv2.ellipse(self.rgb, c, a, 0, 0, 360, tuple(float(v) for v in colour), thickness)
        cv2.ellipse(self.temp, c, a, 0, 0, 360, float(temp), thickness)
        cv2.ellipse(self.label, c, a, 0, 0, 360, int(class_id), thickness)
        cv2.ellipse(self.instance, c, a, 0, 0, 360, int(instance), thickness)
        cv2.ellipse(self.depth, c, a, 0, 0, 360, float(depth), thickness)

    def rect(self, x0, y0, x1, y1, colour, temp, class_id, depth, instance=0) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, temp, class_id, depth, instance)


def paint_guardrail(canvas, rng, y0, y1, side, offset, road_edges, scale_at, surface_temp) -> None:
    x0, x1 = road_edges(y0)[side] + offset * scale_at(y0), road_edges(y1)[side] + offset * scale_at(y1)
    h0, h1 = 0.1 * canvas.rgb.shape[0] * scale_at(y0), 0.1 * canvas.rgb.shape[0] * scale_at(y1)
    metal = rng.uniform(0.6, 0.75)
    temp = surface_temp + rng.uniform(-0.3, 0.3)
    rail = [(x0, y0 - h0), (x1, y1 - h1), (x1, y1 - 0.55 * h1), (x0, y0 - 0.55 * h0)]
    canvas.poly(rail, (metal, metal, metal * 1.05), temp, GUARDRAIL, 1 / scale_at(y0))
    for k in range(7):
        f = k / 6
        x, y, hh = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, h0 + (h1 - h0) * f
        pw = max(1.0, 0.08 * hh)
        canvas.rect(x - pw, y - hh, x + pw, y, (metal * 0.8,) * 3, temp, GUARDRAIL, 1 / scale_at(y))


def paint_bump(canvas, yb, road_edges, scale_at, road_temp, W) -> None:
    t = scale_at(yb)
    thick = max(2.0, 0.035 * (canvas.rgb.shape[0]) * t)
    (l0, r0), (l1, r1) = road_edges(yb - thick), road_edges(yb)
    canvas.poly([(l0, yb - thick), (r0, yb - thick), (r1, yb), (l1, yb)], (0.95, 0.8, 0.1), road_temp + 0.2, BUMP, None)
    stripes = 10
    for k in range(0, stripes, 2):
        fa, fb = k / stripes, (k + 1) / stripes
        pts = [(l0 + (r0 - l0) * fa, yb - thick), (l0 + (r0 - l0) * fb, yb - thick),
               (l1 + (r1 - l1) * fb, yb), (l1 + (r1 - l1) * fa, yb)]
        cv2.fillPoly(canvas.rgb, [np.round(np.asarray(pts)).astype(np.int32)], (0.08, 0.08, 0.08))


def paint_car_stop(canvas, rng, y, road_edges, scale_at, surface_temp, W) -> None:
    t = scale_at(y)
    side = int(rng.integers(2))
    x = road_edges(y)[side] + (-1 if side == 0 else 1) * rng.uniform(0.02, 0.1) * W * t
    w, h = 0.09 * W * t, 0.018 * W * t + 1
    colour = (0.85, 0.8, 0.2) if rng.random() < 0.5 else (0.75, 0.75, 0.72)
    canvas.rect(x - w / 2, y - h, x + w / 2, y, colour, surface_temp + rng.uniform(-0.3, 0.3), CAR_STOP, 1 / t)


def paint_cone(canvas, rng, y, road_edges, scale_at, surface_temp, W, H) -> None:
    t = scale_at(y)
    left, right = road_edges(y)
    x = left + (right - left) * rng.choice([rng.uniform(0.02, 0.25), rng.uniform(0.75, 0.98)])
    h = 0.1 * H * t + 3
    half = 0.3 * h
    inst = canvas.new_instance(COLOR_CONE)
    orange = (1.0, rng.uniform(0.35, 0.5), 0.05)
    temp = surface_temp + rng.uniform(-0.3, 0.3)
    canvas.poly([(x - half, y), (x + half, y), (x, y - h)], orange, temp, COLOR_CONE, 1 / t, inst)
    band = [(x - 0.55 * half, y - 0.45 * h), (x + 0.55 * half, y - 0.45 * h),
            (x + 0.35 * half, y - 0.65 * h), (x - 0.35 * half, y - 0.65 * h)]
    cv2.fillPoly(canvas.rgb, [np.round(np.asarray(band)).astype(np.int32)], (0.95, 0.95, 0.95))


def paint_car(canvas, rng, y, road_edges, scale_at, ambient, W) -> None:
    t = scale_at(y)
    left, right = road_edges(y)
    x = rng.uniform(left, right)
    w = rng.uniform(0.24, 0.34) * W * t + 4
    h = w * rng.uniform(0.55, 0.75)
    inst = canvas.new_instance(CAR)
    d = 1 / t
    paints = [[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.8, 0.8, 0.8], [0.15, 0.15, 0.15], [0.5, 0.5, 0.55], [0.9, 0.9, 0.2]]
    colour = tuple(rng.choice(paints) * rng.uniform(0.8, 1.1))
    body_temp = ambient + rng.uniform(8, 15)
    canvas.rect(x - w / 2, y - 0.6 * h, x + w / 2, y - 0.12 * h, colour, body_temp, CAR, d, inst)
    cabin = [(x - 0.38 * w, y - 0.6 * h), (x + 0.38 * w, y - 0.6 * h), (x + 0.28 * w, y - h), (x - 0.28 * w, y - h)]
    canvas.poly(cabin, colour, body_temp - 3, CAR, d, inst)
    canvas.rect(x - 0.25 * w, y - 0.95 * h, x + 0.25 * w, y - 0.65 * h, (0.1, 0.12, 0.15), body_temp - 5, CAR, d, inst)
    wheel = (0.2 * w, 0.13 * h)
    for wx in (x - 0.32 * w, x + 0.32 * w):
        canvas.ellipse((wx, y - 0.12 * h), wheel, (0.05, 0.05, 0.05), ambient + rng.uniform(15, 25), CAR, d, inst)
    # Exhaust and engine heat: the warmest parts of a running car.
    bumper = tuple(np.asarray(colour) * 0.7)
    canvas.rect(x - 0.45 * w, y - 0.35 * h, x + 0.45 * w, y - 0.15 * h, bumper, ambient + rng.uniform(20, 35), CAR, d,
                inst)


def paint_person(canvas, rng, y, road_edges, scale_at, W, H) -> None:
    t = scale_at(y)
    left, right = road_edges(y)
    x = rng.uniform(left - 0.15 * W * t, right + 0.15 * W * t)
    h = rng.uniform(0.26, 0.36) * H * t + 6
    w = 0.28 * h
    inst = canvas.new_instance(PERSON)
    d = 1 / t
    fabrics = [[0.1, 0.1, 0.12], [0.2, 0.25, 0.5], [0.6, 0.1, 0.1], [0.45, 0.4, 0.35], [0.85, 0.85, 0.8]]
    clothes = tuple(rng.choice(fabrics) * rng.uniform(0.8, 1.1))
    trousers = tuple(rng.choice([[0.1, 0.1, 0.15], [0.2, 0.2, 0.35], [0.4, 0.35, 0.3]]))
    skin = tuple(rng.choice([[0.9, 0.75, 0.6], [0.6, 0.45, 0.3], [0.4, 0.28, 0.2]]))
    clothes_temp = rng.uniform(28, 32)
    stride = rng.uniform(0.05, 0.2) * w
    for sign in (-1, 1):  # two legs, mid-stride
        leg = [(x + sign * 0.35 * w, y - 0.5 * h), (x + sign * 0.05 * w, y - 0.5 * h),
               (x + sign * (0.1 * w + stride), y), (x + sign * (0.4 * w + stride), y)]
        canvas.poly(leg, trousers, clothes_temp - 1, PERSON, d, inst)
    canvas.rect(x - 0.5 * w, y - 0.85 * h, x + 0.5 * w, y - 0.48 * h, clothes, clothes_temp, PERSON, d, inst)
    canvas.ellipse((x, y - 0.92 * h), (0.2 * w, 0.08 * h), skin, rng.uniform(33, 35), PERSON, d, inst)


def paint_bike(canvas, rng, y, road_edges, scale_at, ambient, W, H) -> None:
    t = scale_at(y)
    left, right = road_edges(y)
    x = rng.uniform(left, right)
    r = (0.045 * W * t + 2)
    inst = canvas.new_instance(BIKE)
    d = 1 / t
    colour = tuple(rng.choice([[0.1, 0.5, 0.8], [0.8, 0.2, 0.2], [0.15, 0.15, 0.15]]))
    temp = ambient + rng.uniform(1, 3)
    thick = max(1, int(round(0.25 * r)))
    for wx in (x - 1.2 * r, x + 1.2 * r):
        canvas.ellipse((wx, y - r), (r, r), (0.05, 0.05, 0.05), temp, BIKE, d, inst, thickness=thick)
    frame = [(x - 1.2 * r, y - r), (x, y - r), (x + 0.6 * r, y - 2.2 * r), (x - 0.4 * r, y - 2.2 * r)]
    canvas.poly(frame, colour, temp, BIKE, d, inst)
    if rng.random() < 0.5:
        paint_person(canvas, rng, y - 1.4 * r, lambda _y: (x - 1, x + 1), lambda _y: t, 0, H)
