"""The report of a bag replay: metrics.json, report.md, plots, overlay frames and video.

Scores are accumulated with ``rgbt_perception.evaluation.metrics`` (the accumulators and report tables of
``rgbt-eval``), so a bag replay and an offline evaluation of the same frames agree. This module
adds what only a replay has: pairing, drops, latency and camera sync skew.

Files written into the output directory:

* ``metrics.json``  segmentation and detection scores plus the ``replay`` block (mode, bag,
  weights, pairs formed, frames scored/dropped, latency and skew statistics, ``partial``)
* ``report.md``     the same for people, with the per-class IoU table
* ``confusion_matrix.png``, ``latency_histogram.png``, ``sync_skew.png``
* ``overlays/frame_*.png`` a few coloured masks with boxes over the RGB frame; ``overlay.mp4``
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from rgbt_perception.core.defaults import PUBLISH_SCORE_THRESHOLD
from rgbt_perception.core.frames import Detection
from rgbt_perception.core.overlay import blend_overlay, draw_detections, palette_lut
from rgbt_perception.evaluation.metrics import DetectionMetrics, SegmentationMetrics, format_report, write_report

VIDEO_NAME = "overlay.mp4"
LATENCY_PLOT = "latency_histogram.png"
SKEW_PLOT = "sync_skew.png"


@dataclass
class ReplayCounters:
    """How the frames of a replay were accounted for.

    ``pairs_formed == frames_scored + frames_unlabelled + frames_dropped`` once a replay
    finishes: every pair is either inferred (and then scored, or unlabelled) or dropped.
    """

    pairs_formed: int = 0
    frames_scored: int = 0
    frames_unlabelled: int = 0
    frames_dropped: int = 0


@dataclass
class BoxSet:
    """Boxes ``N, 4`` xyxy RGB pixels with scores and class ids (predictions or ground truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None

    @classmethod
    def from_detections(cls, detections: Iterable[Any]) -> "BoxSet":
        """From ``inference.Detection`` objects or Detection2D messages (the same fields)."""
        dets = list(detections)
        return cls(
            boxes=np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in dets], np.float32).reshape(-1, 4),
            labels=np.array([d.class_id for d in dets], np.int64),
            scores=np.array([d.score for d in dets], np.float32),
        )

    def as_prediction(self) -> dict[str, np.ndarray]:
        scores = self.scores if self.scores is not None else np.ones(len(self.labels), np.float32)
        return {"boxes": self.boxes, "scores": scores, "labels": self.labels}

    def as_ground_truth(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "labels": self.labels}


@dataclass
class ReportPictures:
    """The overlay PNGs and video of a report: how many, how often, which boxes are drawn.

    Boxes are drawn from the node's publish threshold: what a picture shows is what the node publishes.
    """

    max_overlay_frames: int = 4
    overlay_stride: int = 10
    video: bool = True
    video_fps: float = 10.0
    overlay_score_threshold: float = PUBLISH_SCORE_THRESHOLD


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    data = np.asarray(values, np.float64)
    return {"count": int(data.size), "mean": float(data.mean()), "p50": float(np.percentile(data, 50)),
            "p95": float(np.percentile(data, 95)), "max": float(data.max())}


class ReplayReport:
    """Collects the frames of one replay and writes the report directory.

    ``add_pair`` for every pair the synchroniser formed (its skew), ``add_frame`` for every
    inferred frame (scored when a label is given), ``add_dropped`` for pairs that never got an
    output; ``write()`` (also after a fault, with ``partial_reason``) writes everything.
    """

    def __init__(
        self,
        out_dir: str,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        mode: str,
        bag: str,
        weights: str,
        background_id: int | None = 0,
        pictures: ReportPictures | None = None,
    ) -> None:
        pictures = pictures or ReportPictures()
        self.out_dir = out_dir
        # Scoring keeps low-score boxes (mAP needs them); pictures show what the node would publish.
        self.overlay_score_threshold = pictures.overlay_score_threshold
        self.class_names = list(class_names)
        self.lut = palette_lut(palette)
        self.mode, self.bag, self.weights = mode, bag, weights
        self.segmentation = SegmentationMetrics(len(self.class_names), self.class_names, background_id)
        self.detection = DetectionMetrics(self.class_names)
        self.counters = ReplayCounters()
        self.latencies_ms: list[float] = []
        self.skews_ms: list[float] = []
        self.max_overlay_frames = pictures.max_overlay_frames
        self.overlay_stride = max(1, pictures.overlay_stride)
        self.overlay_paths: list[str] = []
        self.video_fps = pictures.video_fps
        self.video_enabled = pictures.video
        self._video: cv2.VideoWriter | None = None
        self._video_size: tuple[int, int] | None = None
        self.video_frames = 0
        self._inferred = 0
        # Mode-specific facts for the ``replay`` block of metrics.json (e.g. the live node's counters).
        self.extra: dict[str, Any] = {}
        os.makedirs(out_dir, exist_ok=True)

    def spread_overlays(self, expected_frames: int) -> None:
        """Space the overlay PNGs over a replay of about ``expected_frames`` inferred frames."""
        self.overlay_stride = max(1, expected_frames // max(1, self.max_overlay_frames))

    # ---- accumulation -------------------------------------------------------------------
    def add_pair(self, rgb_stamp_ns: int, thermal_stamp_ns: int) -> None:
        """A pair formed by the synchroniser; its skew goes into the sync plot."""
        self.counters.pairs_formed += 1
        self.add_skew(rgb_stamp_ns, thermal_stamp_ns)

    def add_skew(self, rgb_stamp_ns: int, thermal_stamp_ns: int) -> None:
        """A pair's skew for the sync plot, without counting the pair (live mode counts the node's)."""
        self.skews_ms.append(abs(rgb_stamp_ns - thermal_stamp_ns) / 1e6)

    def add_dropped(self, count: int = 1) -> None:
        self.counters.frames_dropped += count

    def add_frame(
        self,
        rgb: np.ndarray,
        mask: np.ndarray,
        predictions: BoxSet,
        label: np.ndarray | None,
        ground_truth: BoxSet | None,
        latency_ms: float | None = None,
    ) -> bool:
        """One inferred frame; scored when ``label`` is given. Returns whether it was scored."""
        if latency_ms is not None:
            self.latencies_ms.append(float(latency_ms))
        scored = label is not None
        if scored:
            if label.shape != mask.shape:
                raise ValueError(f"label size {label.shape[::-1]} differs from mask size {mask.shape[::-1]}")
            self.segmentation.update(mask, label)
            if ground_truth is not None:
                self.detection.update(predictions.as_prediction(), ground_truth.as_ground_truth())
            self.counters.frames_scored += 1
        else:
            self.counters.frames_unlabelled += 1
        self._draw(rgb, mask, predictions)
        self._inferred += 1
        return scored

    def _draw(self, rgb: np.ndarray, mask: np.ndarray, predictions: BoxSet) -> None:
        wants_png = len(self.overlay_paths) < self.max_overlay_frames and self._inferred % self.overlay_stride == 0
        if not (wants_png or self.video_enabled):
            return
        if mask.shape != rgb.shape[:2]:
            mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        scores = predictions.scores if predictions.scores is not None else np.ones(len(predictions.labels))
        boxes = [
            Detection(int(c), self.class_names[int(c)] if 0 <= int(c) < len(self.class_names) else str(int(c)),
                      float(s), *map(float, b))
            for b, c, s in zip(predictions.boxes, predictions.labels, scores)
            if s >= self.overlay_score_threshold
        ]
        frame = draw_detections(blend_overlay(np.ascontiguousarray(rgb), mask, self.lut), boxes, self.lut)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if wants_png:
            folder = os.path.join(self.out_dir, "overlays")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"frame_{self._inferred:05d}.png")
            cv2.imwrite(path, bgr)
            self.overlay_paths.append(path)
        if self.video_enabled:
            self._write_video_frame(bgr)

    def _write_video_frame(self, bgr: np.ndarray) -> None:
        if self._video is None:
            height, width = bgr.shape[:2]
            # mp4v wants even sizes.
            self._video_size = (width - width % 2, height - height % 2)
            self._video = cv2.VideoWriter(os.path.join(self.out_dir, VIDEO_NAME),
                                          cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps, self._video_size)
            if not self._video.isOpened():
                self.video_enabled = False
                self._video = None
                return
        if (bgr.shape[1], bgr.shape[0]) != self._video_size:
            bgr = cv2.resize(bgr, self._video_size, interpolation=cv2.INTER_AREA)
        self._video.write(bgr)
        self.video_frames += 1

    # ---- output -------------------------------------------------------------------------
    def summary(self, partial_reason: str | None = None) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "bag": self.bag,
            "weights": self.weights,
            **asdict(self.counters),
            "latency_ms": _percentiles(self.latencies_ms),
            "sync_skew_ms": _percentiles(self.skews_ms),
            "partial": partial_reason is not None,
            "partial_reason": partial_reason,
            "overlay_frames": [os.path.relpath(p, self.out_dir) for p in self.overlay_paths],
            "video": VIDEO_NAME if self.video_frames else None,
            "video_frames": self.video_frames,
            **self.extra,
        }

    def write(self, partial_reason: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write every report file; returns the metrics written to metrics.json."""
        if self._video is not None:
            self._video.release()
            self._video = None
        replay = self.summary(partial_reason)
        if extra:
            replay.update(extra)
        scored = self.counters.frames_scored > 0
        metrics = write_report(
            self.out_dir, self.segmentation if scored else None, self.detection if scored else None,
            split=self.mode, dataset=os.path.basename(os.path.normpath(self.bag)), weights=self.weights,
            extra={"replay": replay},
        )
        plot_latency(self.latencies_ms, os.path.join(self.out_dir, LATENCY_PLOT), self.mode)
        plot_sync_skew(self.skews_ms, os.path.join(self.out_dir, SKEW_PLOT))
        with open(os.path.join(self.out_dir, "report.md"), "w") as f:
            f.write(format_replay_report(metrics, replay))
        return metrics


def _ms(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def format_replay_report(metrics: dict[str, Any], replay: dict[str, Any]) -> str:
    """report.md: the replay's accounting and timing, then ``rgbt_perception.evaluation.metrics``' score tables."""
    lat, skew = replay["latency_ms"], replay["sync_skew_ms"]
    latency_meaning = ("receipt of the node's output - publication of its RGB frame" if replay["mode"] == "live"
                       else "engine time per frame (preprocess + forward + postprocess)")
    lines = ["# Bag replay evaluation", ""]
    if replay["partial"]:
        lines += [f"**PARTIAL REPORT**: {replay['partial_reason']}. Only the frames before the fault are scored.", ""]
    lines += [
        "| | |", "|---|---|",
        f"| mode | {replay['mode']} |",
        f"| bag | `{replay['bag']}` |",
        f"| weights | `{replay['weights']}` |",
        f"| pairs formed | {replay['pairs_formed']} |",
        f"| frames scored | {replay['frames_scored']} |",
        f"| frames inferred without label | {replay['frames_unlabelled']} |",
        f"| frames dropped | {replay['frames_dropped']} |",
        f"| latency p50 / p95 / max (ms) | {_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['max'])} |",
        f"| camera sync skew p50 / max (ms) | {_ms(skew['p50'])} / {_ms(skew['max'])} |",
        "",
        f"Latency: {latency_meaning}. Sync skew: |RGB stamp - thermal stamp| of each pair.",
        "",
        f"![latency]({LATENCY_PLOT}) ![sync skew]({SKEW_PLOT})",
        "",
    ]
    seg, det = metrics.get("segmentation"), metrics.get("detection")
    if seg is None:
        lines += ["No frame was scored (no labelled frame reached the end of the pipeline).", ""]
    else:
        body = format_report(seg, det, replay["mode"], os.path.basename(os.path.normpath(replay["bag"])))
        lines += body[body.index("## "):].splitlines() if "## " in body else body.splitlines()
        lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    if replay["overlay_frames"]:
        lines += ["## Overlays", ""] + [f"![{p}]({p})" for p in replay["overlay_frames"]] + [""]
    if replay["video"]:
        lines += [f"Overlay video: [{replay['video']}]({replay['video']}) ({replay['video_frames']} frames).", ""]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(latencies_ms: Sequence[float], path: str, mode: str) -> str:
    """Histogram of per-frame latency (ms) with p50/p95 marks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if latencies_ms:
        data = np.asarray(latencies_ms)
        ax.hist(data, bins=min(40, max(5, data.size // 2)), color="#4477aa")
        for q, style in ((50, "-"), (95, "--")):
            value = float(np.percentile(data, q))
            ax.axvline(value, color="k", linestyle=style, label=f"p{q} {value:.1f} ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no frames", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (ms)" if mode == "live" else "engine time per frame (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"{mode} replay: latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sync_skew(skews_ms: Sequence[float], path: str) -> str:
    """Skew of each pair over the replay and its histogram."""
    plt = _pyplot()
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(9, 3.5))
    if skews_ms:
        data = np.asarray(skews_ms)
        ax_t.plot(np.arange(data.size), data, ".", markersize=3, color="#aa3377")
        ax_h.hist(data, bins=min(40, max(5, data.size // 2)), color="#aa3377")
    else:
        for ax in (ax_t, ax_h):
            ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes)
    ax_t.set_xlabel("pair")
    ax_t.set_ylabel("|RGB - thermal stamp| (ms)")
    ax_h.set_xlabel("|RGB - thermal stamp| (ms)")
    ax_h.set_ylabel("pairs")
    fig.suptitle("camera sync skew of the formed pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
