"""The calibration report: pictures to check by eye, numbers to keep.

``DIR/report.json`` (everything, machine-readable), ``DIR/report.md`` (summary and per-pair
table) and, for a few supporting pairs, ``<pair>_blend.png`` (thermal in false colour over
RGB) and ``<pair>_edges.png`` (RGB edges green, thermal edges magenta: white where they
coincide), each with the starting map on the left and the estimate on the right.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import cv2
import numpy as np

from rgbt_perception.calibration import features as ft
from rgbt_perception.calibration.edges import edge_points
from rgbt_perception.core.registration import warp_thermal_to_rgb


def _thermal8(thermal: np.ndarray) -> np.ndarray:
    return np.clip(ft.to_gray(thermal) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def blend(rgb: np.ndarray, thermal: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``H, W, 3`` uint8 RGB: the RGB image half-blended with the warped thermal in false colour."""
    warped = warp_thermal_to_rgb(_thermal8(thermal), homography, rgb.shape[:2])
    colour = cv2.applyColorMap(warped, cv2.COLORMAP_INFERNO)[:, :, ::-1]
    return cv2.addWeighted(rgb, 0.5, colour, 0.5, 0.0)


def edge_overlay(rgb: np.ndarray, thermal: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``H, W, 3`` uint8 RGB: dimmed RGB with its edges in green and the warped thermal edges in
    magenta (edges of both coincide in white)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    warped = warp_thermal_to_rgb(_thermal8(thermal), homography, rgb.shape[:2])
    inside = warp_thermal_to_rgb(np.full(thermal.shape[:2], 255, np.uint8), homography, rgb.shape[:2]) > 0
    rgb_edges = _edges(gray)
    thermal_edges = _edges(warped) & cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    out = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    out[rgb_edges] = (0, 255, 0)
    out[thermal_edges] = (255, 0, 255)
    out[rgb_edges & thermal_edges] = (255, 255, 255)
    return out


def _edges(gray8: np.ndarray) -> np.ndarray:
    """The edge pixels calibration itself uses (adaptive Canny)."""
    return edge_points(ft.to_gray(gray8), 1.5, max_points=0)[1] > 0


def _side_by_side(left: np.ndarray, right: np.ndarray, labels=("before", "after")) -> np.ndarray:
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    out = np.hstack([left, gap, right])
    scale = max(0.5, left.shape[1] / 640.0)
    for x, text in ((8, labels[0]), (left.shape[1] + 16, labels[1])):
        cv2.putText(out, text, (x, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(out, text, (x, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "pair"


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"cannot write {path}")


def write_report(directory: str, summary: dict[str, Any], rgb_images: Sequence[np.ndarray],
                 thermal_images: Sequence[np.ndarray], names: Sequence[str], show: Sequence[int],
                 start: np.ndarray, estimate: np.ndarray) -> list[str]:
    """Write the report for a finished calibration; returns the files written.

    Args:
        summary: JSON-ready facts (see :func:`rgbt_perception.cli.calibrate.summarise`).
        show: indices of the pairs to draw (a few of the supporting ones).
    """
    os.makedirs(directory, exist_ok=True)
    written = []
    pictures = []
    for index in show:
        stem = _safe(names[index])
        rgb, thermal = rgb_images[index], thermal_images[index]
        files = {}
        for kind, draw in (("blend", blend), ("edges", edge_overlay)):
            path = os.path.join(directory, f"{stem}_{kind}.png")
            _write_png(path, _side_by_side(draw(rgb, thermal, start), draw(rgb, thermal, estimate)))
            files[kind] = os.path.basename(path)
            written.append(path)
        pictures.append((names[index], files))
    summary = dict(summary, pictures=[{"pair": n, **f} for n, f in pictures])
    json_path = os.path.join(directory, "report.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=_json_default)
        handle.write("\n")
    md_path = os.path.join(directory, "report.md")
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write(markdown(summary))
    return written + [json_path, md_path]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    """Human-readable report of a :func:`write_report` summary."""
    lines = [f"# Thermal-to-RGB calibration ({summary['mode']})", ""]
    lines += [f"- pairs: {summary['pairs_total']} loaded, {summary['pairs_supporting']} supported the estimate",
              f"- residual: {_fmt(summary['residual_px'])} px ({summary['residual_meaning']})",
              f"- corner uncertainty: {_fmt(summary['corner_sigma_px'])} px (1 sigma, worst thermal image corner)",
              *([f"- edge-scale check: the corners move {_fmt(summary['edge_scale_shift_px'])} px when the finish is "
                 "repeated on edges found at another scale"] if summary.get("edge_scale_shift_px") is not None else []),
              f"- change from the start: {_fmt(summary['change_px'])} px (largest thermal corner move)",
              f"- RGB {summary['rgb_size'][1]}x{summary['rgb_size'][0]}, thermal "
              f"{summary['thermal_size'][1]}x{summary['thermal_size'][0]}; run time {_fmt(summary['seconds'], 1)} s"]
    if summary.get("truth_error_px") is not None:
        lines.append(f"- error against the given truth: {_fmt(summary['truth_error_px'])} px (largest corner)")
    numbers = ", ".join(f"{v:.8g}" for v in np.asarray(summary["thermal_to_rgb"]).ravel())
    lines += ["", "thermal_to_rgb (row-major, thermal pixels -> RGB pixels):", "", f"    [{numbers}]", ""]
    lines += ["Thermal image corners on the RGB image (x, y): " + ", ".join(
        f"({x:.1f}, {y:.1f})" for x, y in summary["thermal_corners_on_rgb"]), ""]
    rows = summary.get("pairs", [])
    if rows:
        keys = [k for k in rows[0] if k != "pair"]
        lines += ["| pair | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for row in rows:
            cells = [_fmt(row[k]) if not isinstance(row[k], (list, tuple)) else
                     ", ".join(_fmt(v) for v in row[k]) for k in keys]
            lines.append(f"| {row['pair']} | " + " | ".join(cells) + " |")
        lines.append("")
    for picture in summary.get("pictures", []):
        lines += [f"## {picture['pair']}", "", f"![blend]({picture['blend']})", "", f"![edges]({picture['edges']})", ""]
    if summary.get("command"):
        lines += ["Command:", "", f"    {summary['command']}", ""]
    return "\n".join(lines)
