"""A second synthetic world for confirming what was chosen on the first (``python -m training.synth.world_b``).

It differs from ``rgbt-synth``'s world in everything a recipe could have been fitted to:

- **layout on disk**: MFNet's own release layout only, ``images/<stem>.png`` (R, G, B + 8-bit
  thermal registered onto RGB), ``labels/``, ``{train,val,test}.txt``, stems ending in ``D``/``N``;
  no 16-bit thermal, no homography, no condition file and no COCO file (boxes come from the labels);
  read with ``--dataset mfnet``;
- **conditions**: day and night only (as MFNet), night lit by the ego car's low beams, other cars'
  lamps and sodium lamps, with three times the sensor noise (:data:`WORLD_B`);
- **thermal**: 8-bit only, an automatic-gain image with wider percentiles than world A's, from a
  quarter-resolution sensor with more temporal noise;
- **scene statistics**: a higher horizon, smaller people and cones, larger cars, more car stops and
  bumps, fewer guardrails (:data:`WORLD_B`), frames of 480x640 by default.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

from rgbt_perception.core.preprocess import ThermalScaling, scale_thermal
from rgbt_perception.core.registration import warp_thermal_to_rgb
from rgbt_perception.io.console import console_script
from training.synth.scenes import (
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    COLOR_CONE,
    GUARDRAIL,
    PERSON,
    SynthConfig,
    WorldStyle,
    frame_name,
    make_rig,
    render_frame,
)

WORLD_B = WorldStyle(
    horizon=(0.3, 0.42),
    counts={GUARDRAIL: (0.25, 0.25), BUMP: (0.7, 0.7), CAR_STOP: (1, 5), COLOR_CONE: (0, 4), CAR: (1, 5),
            PERSON: (0, 4), BIKE: (0, 2)},
    sizes={PERSON: 0.75, COLOR_CONE: 0.7, CAR: 1.2, CAR_STOP: 0.8},
    night="headlights",
)
WORLD_B_SENSORS = dict(condition_weights={"day": 0.55, "night": 0.45}, temporal_noise_counts=12.0,
                       counts_per_degree=45.0)
# The thermal camera's automatic gain: wider percentiles than world A's (1, 99).
AGC_PERCENTILES = (0.2, 99.8)
SPLITS = ("train", "val", "test")


def world_b_config(size: tuple[int, int]) -> SynthConfig:
    """World B's sensors at RGB ``size`` ``(H, W)``: a thermal camera of a quarter of the pixels."""
    return SynthConfig(size=size, thermal_size=(max(32, size[0] // 2), max(32, size[1] // 2)), **WORLD_B_SENSORS)


def render_world_b(seed: int, index: int, cfg: SynthConfig, rig) -> tuple[np.ndarray, np.ndarray, str]:
    """One frame: ``B,G,R,T`` uint8 ``H,W,4`` image, ``H,W`` uint8 label, condition (day | night)."""
    frame = render_frame(np.random.default_rng([seed, 0xB, index]), cfg, rig, style=WORLD_B)
    low, high = np.percentile(frame.thermal16, AGC_PERCENTILES)
    registered = warp_thermal_to_rgb(frame.thermal16, rig.homography, cfg.size)
    gain = ThermalScaling(mode="fixed", low=float(low), high=float(max(high, low + 1)))
    thermal8 = np.round(scale_thermal(registered, gain) * 255.0).astype(np.uint8)
    return np.dstack([frame.rgb[:, :, ::-1], thermal8]), frame.label, frame.condition


def generate_world_b(out: str, counts: dict[str, int], seed: int = 0, size: tuple[int, int] = (480, 640)) -> dict:
    """Write world B to ``out`` (MFNet layout, see the module docstring); ``counts``: frames per split.

    Returns ``{split: [stems]}``. ``ValueError`` for negative counts or a folder holding other data.
    """
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise ValueError(f"frame counts must be >= 0 and not all 0, got {counts}")
    images, labels = os.path.join(out, "images"), os.path.join(out, "labels")
    if os.path.isdir(images) and os.listdir(images) and not os.path.isfile(os.path.join(out, "world_b.txt")):
        raise ValueError(f"{out} already holds images that this generator did not write; choose another --out")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    cfg = world_b_config(size)
    rig = make_rig(seed + 1000, cfg)
    splits: dict[str, list[str]] = {}
    index = 0
    for split in SPLITS:
        stems = []
        for _ in range(counts.get(split, 0)):
            image, label, condition = render_world_b(seed, index, cfg, rig)
            stem = frame_name(index, condition)
            for folder, array in ((images, image), (labels, label)):
                path = os.path.join(folder, f"{stem}.png")
                if not cv2.imwrite(path, array):
                    raise OSError(f"could not write {path}")
            stems.append(stem)
            index += 1
        if stems:
            splits[split] = stems
            with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as f:
                f.write("".join(f"{stem}\n" for stem in stems))
    with open(os.path.join(out, "world_b.txt"), "w", encoding="utf-8") as f:
        f.write(f"synthetic world B, seed {seed}, size {size[0]}x{size[1]}, splits "
                f"{ {k: len(v) for k, v in splits.items()} }\n")
    return splits


@console_script
def main(argv: list[str] | None = None) -> int:
    from training.synth import parse_size

    parser = argparse.ArgumentParser(
        prog="python -m training.synth.world_b",
        description="Write synthetic world B (a second world with other statistics, MFNet's release layout, "
        "8-bit thermal, day and night) for confirming a recipe chosen on rgbt-synth's world.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=240, help="training frames (default 240)")
    parser.add_argument("--num-val", type=int, default=60, help="validation frames (default 60)")
    parser.add_argument("--num-test", type=int, default=60, help="test frames (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=parse_size, default=(480, 640), help="RGB size HxW (default 480x640)")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        splits = generate_world_b(args.out, {"train": args.num_train, "val": args.num_val, "test": args.num_test},
                                  seed=args.seed, size=args.size)
    except (ValueError, OSError) as err:
        print(f"world_b: error: {err}", file=sys.stderr)
        return 2
    listed = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {sum(len(v) for v in splits.values())} frames ({listed}) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
