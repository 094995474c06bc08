"""Accuracy and run time of calibration on synthetic rigs with a known homography.

    python -m rgbt_perception.calibration.bench [--rigs 5] [--pairs 12] [--drives 2] [--json out.json]

Rigs come from :func:`synthetic.random_rig` (thermal 640x512 16-bit, RGB 640x480; zoom
0.9-1.15, roll +-3 deg, shift +-5 % of the width, perspective, square or resized pixels) and,
for traffic (:mod:`traffic`: cars and people the only vertical structure), from
:func:`traffic.random_traffic_rig` with the sizes cycling through RGB 640x480 + thermal
640x512, RGB 1280x720 + thermal 640x512 and RGB 640x480 + thermal 384x288 (zoom 0.82-1.2,
roll +-3 deg, offset 15-60 px, perspective). Drives are recorded as rosbag2 files (60 s,
30 Hz RGB, 8.7 Hz thermal) in a temporary folder and read back as ``rgbt-calibrate --bag``
reads them (at most 60 pairs). The error of an estimate is the largest distance between
where it and the truth put the thermal image's corners on the RGB image (px). Prints a
Markdown report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

from rgbt_perception.io.console import console_script

#: (RGB, thermal) sizes the traffic rigs cycle through, (H, W).
TRAFFIC_SIZES = (((480, 640), (512, 640)), ((720, 1280), (512, 640)), ((480, 640), (288, 384)))

# A scenario: name and run(k, seed) -> (result, truth homography, thermal size).
Scenario = tuple[str, Callable[[int, int], tuple[Any, Any, Sequence[int]]]]


def traffic_rig(seed: int, index: int) -> Any:
    """The traffic rig of a seed, its sizes picked by ``index`` from :data:`TRAFFIC_SIZES`."""
    from rgbt_perception.calibration import traffic as tr

    rgb_size, thermal_size = TRAFFIC_SIZES[index % len(TRAFFIC_SIZES)]
    return tr.random_traffic_rig(seed, rgb_size, thermal_size)


def _scenarios(pairs: int, seed: int) -> list[Scenario]:
    import numpy as np

    from rgbt_perception.calibration import BoardOptions, TargetlessOptions, estimate_checkerboard, estimate_targetless
    from rgbt_perception.calibration import synthetic as sy
    from rgbt_perception.calibration import traffic as tr

    def targetless(conditions, count, eight_bit=False, knocked=False):
        def run(k, data_seed):
            rig = sy.random_rig(seed + k)
            data = sy.road_pairs(rig, count, conditions=conditions, seed=data_seed)
            thermal = [sy.to_8bit(d[1]) if eight_bit else d[1] for d in data]
            start, options = None, TargetlessOptions()
            if knocked:  # the current parameter, 8 px off: refine it without the global search
                start = np.array([[1, 0, 6.0], [0, 1, -5.0], [0, 0, 1]]) @ rig.homography
                options = TargetlessOptions(search=False)
            return (estimate_targetless([d[0] for d in data], thermal, start=start, options=options),
                    rig.homography, rig.thermal_size)
        return run

    def traffic(count, conditions, **ranges):
        def run(k, data_seed):
            rig = traffic_rig(seed + k, k)
            data = tr.traffic_pairs(rig, count, conditions, data_seed, tr.TrafficOptions(**ranges))
            return estimate_targetless([d[0] for d in data], [d[1] for d in data]), rig.homography, rig.thermal_size
        return run

    def board(views, eight_bit=False):
        def run(k, data_seed):
            rig = sy.random_rig(seed + k)
            data = sy.board_pairs(rig, views, pattern=(7, 5), seed=data_seed)
            thermal = [sy.to_8bit(d[1]) if eight_bit else d[1] for d in data]
            return (estimate_checkerboard([d[0] for d in data], thermal, options=BoardOptions(pattern=(7, 5))),
                    rig.homography, rig.thermal_size)
        return run

    return [
        (f"traffic only, half night, road edges invisible in thermal, {pairs} pairs",
         traffic(pairs, ("day", "night"), edge_contrast=(0.0, 0.0))),
        (f"traffic only, half night, {pairs} pairs", traffic(pairs, ("day", "night"))),
        (f"traffic only, night only, {pairs} pairs", traffic(pairs, ("night",))),
        (f"targetless, day/night/fog, {pairs} pairs", targetless(sy.ROAD_CONDITIONS, pairs)),
        ("targetless, night only, 8 pairs", targetless(("night",), 8)),
        (f"targetless, 8-bit AGC thermal, {pairs} pairs", targetless(sy.ROAD_CONDITIONS, pairs, eight_bit=True)),
        ("targetless, prior 8 px off, no search, 8 pairs", targetless(sy.ROAD_CONDITIONS, 8, knocked=True)),
        ("checkerboard 7x5, 5 views", board(5)),
        ("checkerboard 7x5, 8-bit thermal, 4 views", board(4, eight_bit=True)),
    ]


def _drive(condition: str, seed: int) -> Scenario:
    """A 60 s drive in ``condition``, recorded as a rosbag2 and calibrated from the bag."""
    def run(k, data_seed):
        import shutil
        import tempfile

        from rgbt_perception.calibration import estimate_targetless
        from rgbt_perception.calibration import traffic as tr
        from rgbt_perception.calibration.sources import load_bags

        rig = traffic_rig(seed + k, k)
        folder = tempfile.mkdtemp(prefix="rgbt_drive_")
        try:
            tr.write_drive_bag(f"{folder}/drive", rig, tr.DriveOptions(condition=condition), seed=data_seed)
            pairs = load_bags([f"{folder}/drive"], max_pairs=60)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return estimate_targetless(pairs.rgb, pairs.thermal, pairs.names), rig.homography, rig.thermal_size
    return f"traffic, 60 s {condition} drive from a rosbag2 (30 Hz RGB, 8.7 Hz thermal, 60 pairs)", run


def _refusals() -> list[tuple[str, Callable[..., Any]]]:
    import numpy as np

    from rgbt_perception.calibration import BoardOptions, estimate_checkerboard, estimate_targetless
    from rgbt_perception.calibration import synthetic as sy
    from rgbt_perception.calibration import traffic as tr

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

    def empty_road(rig, seed):
        data = tr.traffic_pairs(tr.random_traffic_rig(seed), 8, seed=seed,
                                options=tr.TrafficOptions(cars=(0, 0), people=(0, 0)))
        return estimate_targetless([d[0] for d in data], [d[1] for d in data])

    def no_board(rig, seed):
        data = sy.road_pairs(rig, 4, seed=seed)
        return estimate_checkerboard([d[0] for d in data], [d[1] for d in data], options=BoardOptions())

    return [("no shared structure (flat thermal)", flat), ("mismatched pairs (thermal of other scenes)", shuffled),
            ("only a horizon (x undetermined)", horizon), ("road without traffic (no vertical structure)", empty_road),
            ("checkerboard not in view", no_board)]


def _measure(name: str, run: Callable[[int, int], Any], count: int, seed: int, log: Callable[[str], None]
             ) -> dict[str, Any]:
    """Run a scenario ``count`` times (rig k, data seed ``seed + 100 + k``); one table row."""
    import numpy as np

    from rgbt_perception.calibration import CalibrationRefused
    from rgbt_perception.calibration.features import corner_error, mean_corner_error

    errors, means, seconds, residuals, sigmas, support = [], [], [], [], [], []
    refused = 0
    for k in range(count):
        started = time.perf_counter()
        try:
            result, truth, thermal_size = run(k, seed + 100 + k)
        except CalibrationRefused as exc:
            log(f"  {name}, rig {k}: refused ({exc})")
            refused += 1
            continue
        seconds.append(time.perf_counter() - started)
        errors.append(corner_error(result.homography, truth, thermal_size))
        means.append(mean_corner_error(result.homography, truth, thermal_size))
        residuals.append(result.residual_px)
        sigmas.append(result.corner_sigma_px)
        support.append(f"{result.pairs_supporting}/{result.pairs_total}")
        log(f"  {name}, rig {k}: worst corner {errors[-1]:.2f} px, mean corner {means[-1]:.2f} px, "
            f"{seconds[-1]:.1f} s")
    def stat(values, how):
        return float(how(values)) if values else None

    return {"scenario": name, "rigs": count, "refused": refused, "errors_px": errors, "mean_corner_errors_px": means,
            "mean_corner_error_px": stat(means, np.mean), "mean_error_px": stat(errors, np.mean),
            "median_error_px": stat(errors, np.median), "max_error_px": stat(errors, np.max),
            "max_residual_px": float(np.max(residuals)) if residuals else None,
            "max_sigma_px": float(np.max(sigmas)) if sigmas else None,
            "mean_seconds": float(np.mean(seconds)) if seconds else None, "supporting": support}


def run_bench(rigs: int = 5, pairs: int = 12, seed: int = 0, log: Callable[[str], None] = print,
              drives: int = 2) -> dict[str, Any]:
    """Run every scenario on ``rigs`` rigs and each drive on ``drives`` rigs; returns the
    measurements (also printed via ``log``)."""
    import numpy as np

    from rgbt_perception.calibration import CalibrationRefused
    from rgbt_perception.calibration import synthetic as sy
    from rgbt_perception.calibration.alignment import alignment_score
    from rgbt_perception.calibration.dense import about_centre

    out: dict[str, Any] = {"rigs": rigs, "drives": drives, "estimates": [], "refusals": [], "alignment": []}
    for name, run in _scenarios(pairs, seed):
        out["estimates"].append(_measure(name, run, rigs, seed, log))
    for condition in ("day", "night") if drives else ():
        name, run = _drive(condition, seed)
        out["estimates"].append(_measure(name, run, drives, seed, log))
    rig_list = [sy.random_rig(seed + k) for k in range(rigs)]
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

    lines = [f"Estimates ({results['rigs']} rigs each, drives on {results.get('drives', 0)}; mean corner error = "
             "distance averaged over the 4 thermal image corners, then over rigs; worst corner = the largest "
             "corner distance of a rig: its mean, median and max over rigs; all over the rigs not refused; px):", "",
             "| scenario | refused | mean corner error | worst corner: mean | median | max | max residual | "
             "max stated sigma | mean time (s) | supporting |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["estimates"]:
        lines.append(f"| {row['scenario']} | {row['refused']} of {row['rigs']} | {num(row['mean_corner_error_px'])} | "
                     f"{num(row['mean_error_px'])} | "
                     f"{num(row['median_error_px'])} | "
                     f"{num(row['max_error_px'])} | {num(row['max_residual_px'])} | {num(row['max_sigma_px'])} | "
                     f"{num(row['mean_seconds'], 1)} | {', '.join(row['supporting'])} |")
    lines += ["", "Refusals:", "", "| case | refused | mean time (s) |", "|---|---|---|"]
    for row in results["refusals"]:
        lines.append(f"| {row['case']} | {row['refused']} of {row['of']} | {num(row['mean_seconds'], 1)} |")
    lines += ["", "Run-time alignment score (mean, min-max over pairs; 1 = aligned):", "",
              "| homography | mean | min | max | mean time (ms) |", "|---|---|---|---|---|"]
    for row in results["alignment"]:
        lines.append(f"| {row['homography']} | {num(row['mean_score'])} | {num(row['min_score'])} | "
                     f"{num(row['max_score'])} | {num(row['mean_ms'], 0)} |")
    return "\n".join(lines) + "\n"


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgbt_perception.calibration.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rigs", type=int, default=5, help="synthetic rigs per scenario (default 5)")
    parser.add_argument("--pairs", type=int, default=12, help="pairs of the main targetless scenarios (default 12)")
    parser.add_argument("--drives", type=int, default=2,
                        help="rigs per 60 s drive scenario, day and night (default 2; 0 skips the drives)")
    parser.add_argument("--seed", type=int, default=0, help="first rig seed (default 0)")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.rigs < 1 or args.pairs < 3 or args.drives < 0:
        parser.error("--rigs must be at least 1, --pairs at least 3 and --drives at least 0")
    results = run_bench(args.rigs, args.pairs, args.seed, log=lambda line: print(line, file=sys.stderr),
                        drives=args.drives)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
