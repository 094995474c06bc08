"""Accuracy and run time of calibration on synthetic rigs with a known homography.

    python -m rgbt_perception.calibration.bench [--rigs 5] [--pairs 12] [--json out.json]

Rigs come from :func:`synthetic.random_rig` (thermal 640x512 16-bit, RGB 640x480; zoom
0.9-1.15, roll +-3 deg, shift +-5 % of the width, perspective, square or resized pixels).
The error of an estimate is the largest distance between where it and the truth put the
thermal image's corners on the RGB image (px). Prints a Markdown report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence


def _scenarios(pairs: int) -> list[tuple[str, Callable[..., Any]]]:
    import numpy as np

    from rgbt_perception.calibration import BoardOptions, TargetlessOptions, estimate_checkerboard, estimate_targetless
    from rgbt_perception.calibration import synthetic as sy

    def targetless(conditions, count, eight_bit=False, knocked=False):
        def run(rig, seed):
            data = sy.road_pairs(rig, count, conditions=conditions, seed=seed)
            thermal = [sy.to_8bit(d[1]) if eight_bit else d[1] for d in data]
            start, options = None, TargetlessOptions()
            if knocked:  # the current parameter, 8 px off: refine it without the global search
                start = np.array([[1, 0, 6.0], [0, 1, -5.0], [0, 0, 1]]) @ rig.homography
                options = TargetlessOptions(search=False)
            return estimate_targetless([d[0] for d in data], thermal, start=start, options=options)
        return run

    def board(views, eight_bit=False):
        def run(rig, seed):
            data = sy.board_pairs(rig, views, pattern=(7, 5), seed=seed)
            thermal = [sy.to_8bit(d[1]) if eight_bit else d[1] for d in data]
            return estimate_checkerboard([d[0] for d in data], thermal, options=BoardOptions(pattern=(7, 5)))
        return run

    return [
        (f"targetless, day/night/fog, {pairs} pairs", targetless(sy.ROAD_CONDITIONS, pairs)),
        ("targetless, night only, 8 pairs", targetless(("night",), 8)),
        (f"targetless, 8-bit AGC thermal, {pairs} pairs", targetless(sy.ROAD_CONDITIONS, pairs, eight_bit=True)),
        ("targetless, prior 8 px off, no search, 8 pairs", targetless(sy.ROAD_CONDITIONS, 8, knocked=True)),
        ("checkerboard 7x5, 5 views", board(5)),
        ("checkerboard 7x5, 8-bit thermal, 4 views", board(4, eight_bit=True)),
    ]


def _refusals() -> list[tuple[str, Callable[..., Any]]]:
    import numpy as np

    from rgbt_perception.calibration import BoardOptions, estimate_checkerboard, estimate_targetless
    from rgbt_perception.calibration import synthetic as sy

    def flat(rig, seed):
        rng = np.random.default_rng(seed)
        rgb = [d[0] for d in sy.road_pairs(rig, 6, seed=seed)]
        return estimate_targetless(rgb, [(7000 + rng.integers(0, 12, rig.thermal_size)).astype(np.uint16)] * 6)

    def shuffled(rig, seed):
        data = sy.road_pairs(rig, 8, seed=seed)
        return estimate_targetless([d[0] for d in data], [d[1] for d in data[1:] + data[:1]])

    def horizon(rig, seed):
        data = sy.horizon_pairs(rig, 6, seed=seed)
        return estimate_targetless([d[0] for d in data], [d[1] for d in data])

    def no_board(rig, seed):
        data = sy.road_pairs(rig, 4, seed=seed)
        return estimate_checkerboard([d[0] for d in data], [d[1] for d in data], options=BoardOptions())

    return [("no shared structure (flat thermal)", flat), ("mismatched pairs (thermal of other scenes)", shuffled),
            ("only a horizon (x undetermined)", horizon), ("checkerboard not in view", no_board)]


def run_bench(rigs: int = 5, pairs: int = 12, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every scenario on ``rigs`` rigs; returns the measurements (also printed via ``log``)."""
    import numpy as np

    from rgbt_perception.calibration import CalibrationRefused
    from rgbt_perception.calibration import synthetic as sy
    from rgbt_perception.calibration.alignment import alignment_score
    from rgbt_perception.calibration.dense import about_centre
    from rgbt_perception.calibration.features import corner_error

    rig_list = [sy.random_rig(seed + k) for k in range(rigs)]
    out: dict[str, Any] = {"rigs": rigs, "estimates": [], "refusals": [], "alignment": []}
    for name, run in _scenarios(pairs):
        errors, seconds, residuals, sigmas, support = [], [], [], [], []
        for k, rig in enumerate(rig_list):
            started = time.perf_counter()
            try:
                result = run(rig, seed + 100 + k)
            except CalibrationRefused as exc:
                log(f"  {name}, rig {k}: refused ({exc})")
                errors.append(float("inf"))
                continue
            seconds.append(time.perf_counter() - started)
            errors.append(corner_error(result.homography, rig.homography, rig.thermal_size))
            residuals.append(result.residual_px)
            sigmas.append(result.corner_sigma_px)
            support.append(f"{result.pairs_supporting}/{result.pairs_total}")
        row = {"scenario": name, "median_error_px": float(np.median(errors)), "max_error_px": float(np.max(errors)),
               "max_residual_px": float(np.max(residuals)) if residuals else None,
               "max_sigma_px": float(np.max(sigmas)) if sigmas else None,
               "mean_seconds": float(np.mean(seconds)) if seconds else None, "supporting": support}
        out["estimates"].append(row)
        log(f"  {name}: max error {row['max_error_px']:.2f} px")
    for name, run in _refusals():
        refused, seconds = 0, []
        for k, rig in enumerate(rig_list):
            started = time.perf_counter()
            try:
                run(rig, seed + 200 + k)
            except CalibrationRefused:
                refused += 1
            seconds.append(time.perf_counter() - started)
        out["refusals"].append({"case": name, "refused": refused, "of": rigs, "mean_seconds": float(np.mean(seconds))})
    thermal_size = rig_list[0].thermal_size
    cases = {"right": lambda h: h, "shifted 4 px": lambda h: _shift(h, 4, 0),
             "shifted 8 px": lambda h: _shift(h, 8, 0), "shifted 16 px": lambda h: _shift(h, 0, 16),
             "zoom +3 %": lambda h: h @ about_centre(thermal_size, 1.03, 0),
             "roll 2 deg": lambda h: h @ about_centre(thermal_size, 1.0, 2.0), "same field of view": lambda h: None}
    frames = [(rig, d) for k, rig in enumerate(rig_list) for d in sy.road_pairs(rig, 4, seed=seed + 300 + k)]
    for name, wrong in cases.items():
        samples = [alignment_score(d[0], d[1], wrong(rig.homography)) for rig, d in frames]
        scores = [s.score for s in samples if s.score is not None]
        out["alignment"].append({"homography": name, "mean_score": float(np.mean(scores)),
                                 "min_score": float(np.min(scores)), "max_score": float(np.max(scores)),
                                 "mean_ms": 1000.0 * float(np.mean([s.seconds for s in samples]))})
    return out


def _shift(homography, dx: float, dy: float):
    import numpy as np

    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ homography


def markdown(results: dict[str, Any]) -> str:
    """The measurements as Markdown tables."""
    def num(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"Estimates ({results['rigs']} rigs each; error = worst thermal image corner, px):", "",
             "| scenario | median error | max error | max residual | max stated sigma | mean time (s) | supporting |",
             "|---|---|---|---|---|---|---|"]
    for row in results["estimates"]:
        lines.append(f"| {row['scenario']} | {num(row['median_error_px'])} | {num(row['max_error_px'])} | "
                     f"{num(row['max_residual_px'])} | {num(row['max_sigma_px'])} | {num(row['mean_seconds'], 1)} | "
                     f"{', '.join(row['supporting'])} |")
    lines += ["", "Refusals:", "", "| case | refused | mean time (s) |", "|---|---|---|"]
    for row in results["refusals"]:
        lines.append(f"| {row['case']} | {row['refused']} of {row['of']} | {num(row['mean_seconds'], 1)} |")
    lines += ["", "Run-time alignment score (mean, min-max over pairs; 1 = aligned):", "",
              "| homography | mean | min | max | mean time (ms) |", "|---|---|---|---|---|"]
    for row in results["alignment"]:
        lines.append(f"| {row['homography']} | {num(row['mean_score'])} | {num(row['min_score'])} | "
                     f"{num(row['max_score'])} | {num(row['mean_ms'], 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgbt_perception.calibration.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rigs", type=int, default=5, help="synthetic rigs per scenario (default 5)")
    parser.add_argument("--pairs", type=int, default=12, help="pairs of the main targetless scenarios (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="first rig seed (default 0)")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.rigs < 1 or args.pairs < 3:
        parser.error("--rigs must be at least 1 and --pairs at least 3")
    results = run_bench(args.rigs, args.pairs, args.seed, log=lambda line: print(line, file=sys.stderr))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
