"""Do faster engine settings change the masks? Pixel agreement with the fp32 torch engine on a data split.

``rgbt-bench --agreement DATA_ROOT --weights W`` runs the engine of ``W`` on every pair of a split
of an MFNet-layout folder (``<split>.txt``, ``images/<stem>.png``; raw 16-bit ``thermal16/<stem>.png``
with ``homography.txt`` when ``rgbt-synth`` wrote them, else the thermal channel of the image) with the
reference (torch, fp32) and each candidate (torch bf16 where the CPU has bf16, onnxruntime fp32), and
reports for each the share of mask pixels equal to the reference's, overall and for the worst frame.
bf16 is the CPU default candidate only where its agreement is at least :data:`BF16_MIN_AGREEMENT`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

BF16_MIN_AGREEMENT = 0.995


def read_split(root: str, split: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """``[(stem, rgb HxWx3 uint8, thermal HxW, thermal->RGB homography | None)]`` of a split."""
    from rgbt_perception.core.registration import read_homography_file
    from rgbt_perception.io.images import find_image, read_rgb, read_split_file, read_thermal

    stems = read_split_file(os.path.join(root, f"{split}.txt"))
    thermal16 = os.path.join(root, "thermal16")
    homography_path = os.path.join(root, "homography.txt")
    raw = os.path.isdir(thermal16) and os.path.isfile(homography_path)
    homography = read_homography_file(homography_path) if raw else None
    pairs = []
    for stem in stems:
        image_path = find_image(os.path.join(root, "images"), stem)
        rgb = read_rgb(image_path)
        thermal = read_thermal(find_image(thermal16, stem)) if raw else read_thermal(image_path, channel=3)
        pairs.append((stem, rgb, thermal, homography))
    return pairs


def measure_agreement(weights: str, root: str, split: str = "val",
                      candidates: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Agreement of each ``(backend, precision)`` candidate with torch fp32 on ``split`` of ``root``."""
    from rgbt_perception.backends.factory import create_engine
    from rgbt_perception.backends.selection import cpu_has_bf16

    if candidates is None:
        candidates = [("onnxruntime", "fp32")] + ([("torch", "bf16")] if cpu_has_bf16() else [])
    pairs = read_split(root, split)
    if not pairs:
        raise ValueError(f"split {split!r} of {root!r} is empty")
    reference = create_engine(weights, device="cpu")
    masks = [reference.infer(rgb, thermal, homography=h).mask for _, rgb, thermal, h in pairs]
    rows = []
    for backend, precision in candidates:
        engine = create_engine(weights, device="cpu", precision=precision, backend=backend)
        equal = total = 0
        worst = (2.0, None)
        started = time.perf_counter()
        for (stem, rgb, thermal, h), want in zip(pairs, masks):
            got = engine.infer(rgb, thermal, homography=h).mask
            same = int((got == want).sum())
            equal, total = equal + same, total + want.size
            worst = min(worst, (same / want.size, stem), key=lambda item: item[0])
        engine.release()
        rows.append({"backend": backend, "precision": precision, "frames": len(pairs),
                     "pixel_agreement": equal / total, "worst_frame_agreement": worst[0], "worst_frame": worst[1],
                     "seconds": round(time.perf_counter() - started, 1)})
    return {"weights": os.path.abspath(weights), "data_root": os.path.abspath(root), "split": split,
            "bf16_min_agreement": BF16_MIN_AGREEMENT, "candidates": rows}


def render_agreement(results: dict[str, Any]) -> str:
    lines = [f"Mask agreement with the torch fp32 engine, {results['candidates'][0]['frames']} frames of split "
             f"`{results['split']}` of `{results['data_root']}`, weights `{os.path.basename(results['weights'])}`.",
             "", "| backend | precision | pixels equal | worst frame |", "|---|---|---|---|"]
    for row in results["candidates"]:
        lines.append(f"| {row['backend']} | {row['precision']} | {100 * row['pixel_agreement']:.3f} % | "
                     f"{100 * row['worst_frame_agreement']:.2f} % ({row['worst_frame']}) |")
    return "\n".join(lines) + "\n"
