"""``rgbt-calibrate``: find the thermal-to-RGB homography of a camera rig.

Reads RGB + thermal pairs from folder splits (``--pairs DIR``: ``DIR/rgb/<stem>.*`` and
``DIR/thermal/<stem>.*``) or rosbag2 recordings (``--bag BAG``: a drive; each thermal frame
with the RGB frame nearest in stamp, the best-synchronised pair of each stretch kept),
estimates ``thermal_to_rgb`` from the scenes themselves (default) or from a heated
checkerboard (``--target checkerboard --pattern COLSxROWS``), and writes a parameters file
the node loads as it is (``--out``) plus a report with pictures (``--report``). When the data
cannot determine the homography it says why, writes nothing and exits with status 3.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from typing import Any, Sequence

from rgbt_perception.core.defaults import SYNC_SLOP
from rgbt_perception.io.console import console_script

PROG = "rgbt-calibrate"
EXIT_ERROR = 2
EXIT_REFUSED = 3


def parse_pattern(text: str) -> tuple[int, int]:
    """``"7x5"`` -> ``(7, 5)``: inner corners, columns x rows."""
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"pattern must look like COLSxROWS (inner corners), got {text!r}") from None
    if cols < 2 or rows < 2:
        raise argparse.ArgumentTypeError(f"pattern needs at least 2x2 inner corners, got {text!r}")
    return cols, rows


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Estimate the thermal->RGB homography (the node's thermal_to_rgb) from RGB + thermal pairs: "
        "from the scenes themselves (edges both cameras see, many pairs at once) or from a heated checkerboard.",
        epilog="Exit status: 0 written, 2 bad input (named on stderr), 3 refused: the data cannot determine the "
        "homography (too little shared structure, board not found); nothing is written then. "
        "Example: rgbt-calibrate --pairs drive/ --out calib.yaml --report calib_report/ ; then "
        "rgbt_node --ros-args --params-file config/vehicle.yaml --params-file calib.yaml (the later file wins).",
    )
    source = parser.add_argument_group("input (one or more of each)")
    source.add_argument("--pairs", action="append", default=[], metavar="DIR",
                        help="folder with rgb/<stem>.* and thermal/<stem>.* (8- or 16-bit thermal)")
    source.add_argument("--bag", action="append", default=[], metavar="BAG", help="rosbag2 directory or file")
    source.add_argument("--rgb-topic", default="rgb/image", help="RGB topic in --bag (default: rgb/image)")
    source.add_argument("--thermal-topic", default="thermal/image", help="thermal topic in --bag (default: "
                        "thermal/image)")
    source.add_argument("--slop", type=_positive_float, default=SYNC_SLOP,
                        help=f"largest RGB/thermal stamp difference of a pair, s (default: {SYNC_SLOP}, as the node); "
                        "each thermal frame is paired with the RGB frame nearest in stamp")
    source.add_argument("--no-motion-compensation", dest="motion", action="store_false",
                        help="from a bag, use the nearest RGB frame as it is (default: move the RGB picture to the "
                        "thermal frame's stamp by optical flow between the RGB frames around it)")
    source.add_argument("--max-pairs", type=_count, default=60,
                        help="pairs used at most, spread evenly over the input (default: 60; 0 = all); from a bag, "
                        "the best-synchronised pair of each stretch")
    method = parser.add_argument_group("method")
    method.add_argument("--target", choices=("none", "checkerboard"), default="none",
                        help="none: targetless, from scene structure (default); checkerboard: a heated board")
    method.add_argument("--pattern", type=parse_pattern, metavar="COLSxROWS",
                        help="checkerboard inner corners, e.g. 7x5 (with --target checkerboard)")
    method.add_argument("--init", metavar="H|FILE",
                        help="prior homography to refine: 9 numbers (row-major), a text file of 9 numbers, or a "
                        "parameters YAML with thermal_to_rgb (e.g. the current one); the search then stays near it")
    method.add_argument("--no-search", action="store_true",
                        help="targetless: skip the global search, only refine the prior (or the same-view start)")
    method.add_argument("--min-pairs", type=_count,
                        help="pairs that must support the estimate (default: 3 targetless, 1 checkerboard)")
    method.add_argument("--max-corner-sigma", type=_positive_float, default=2.0,
                        help="refuse when the thermal image corners are more uncertain than this, px (default: 2)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="YAML", help="parameters file for the node (thermal_to_rgb)")
    output.add_argument("--report", metavar="DIR", help="folder for report.md, report.json and pictures")
    output.add_argument("--truth", metavar="H|FILE",
                        help="a known homography (synthetic rigs): report the estimate's corner error against it")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


class _Bar:
    """tqdm on stderr, or nothing."""

    def __init__(self, enabled: bool, desc: str, total: int | None, unit: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_args(args: argparse.Namespace) -> None:
    if not args.pairs and not args.bag:
        raise ValueError("give at least one --pairs DIR or --bag BAG")
    if args.target == "checkerboard" and args.pattern is None:
        raise ValueError("--target checkerboard needs --pattern COLSxROWS (inner corners, e.g. 7x5)")
    if args.target != "checkerboard" and args.pattern is not None:
        raise ValueError("--pattern is only used with --target checkerboard")
    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; it names the parameters file to write")
    if args.report and os.path.exists(args.report) and not os.path.isdir(args.report):
        raise ValueError(f"--report {args.report} is a file; it names a folder")


def _load(args: argparse.Namespace, progress: bool):
    from rgbt_perception.calibration.sources import PairSet, load_bags, load_folders

    pairs = PairSet()
    bar = _Bar(progress, "reading", None, "pair" if not args.bag else "msg")
    try:
        budget = args.max_pairs
        if args.pairs:
            load_folders(args.pairs, budget, pairs, bar)
        if args.bag:
            left = max(budget - len(pairs), 1) if budget else 0
            load_bags(args.bag, args.rgb_topic, args.thermal_topic, args.slop, left, pairs, bar, args.motion)
    finally:
        bar.close()
    return pairs


def summarise(mode: str, result: Any, pairs: Any, truth: Any, seconds: float, command: str) -> dict[str, Any]:
    """JSON-ready facts of a finished calibration (for report.json/report.md and stdout)."""
    import numpy as np

    from rgbt_perception.calibration import features as ft

    thermal_size = pairs.thermal[0].shape[:2]
    summary: dict[str, Any] = {
        "mode": mode,
        "thermal_to_rgb": np.asarray(result.homography).ravel().tolist(),
        "start": np.asarray(result.start).ravel().tolist(),
        "rgb_size": list(pairs.rgb[0].shape[:2]),
        "thermal_size": list(thermal_size),
        "pairs_available": pairs.available,
        "pairs_total": result.pairs_total,
        "pairs_supporting": result.pairs_supporting,
        "residual_px": result.residual_px,
        "corner_sigma_px": result.corner_sigma_px,
        # Targetless only: the corner move when the finish is repeated on edges of another scale.
        "edge_scale_shift_px": _finite_or_none(getattr(result, "edge_scale_shift_px", math.nan)),
        "change_px": ft.corner_error(result.homography, result.start, thermal_size),
        "thermal_corners_on_rgb": ft.thermal_footprint(result.homography, thermal_size).tolist(),
        "truth_error_px": None if truth is None else ft.corner_error(result.homography, truth, thermal_size),
        "seconds": seconds,
        "timings_s": result.timings_s,
        "sources": pairs.described,
        "command": command,
    }
    if mode == "checkerboard":
        summary["residual_meaning"] = "RMS reprojection error of the board corners, RGB px"
        summary["pairs_with_board"] = sum(v.found_rgb and v.found_thermal for v in result.views)
        summary["board_coverage"] = result.coverage
        summary["pairs"] = [{"pair": v.name, "board_rgb": v.found_rgb, "board_thermal": v.found_thermal,
                             "inliers": v.inliers, "rms_px": v.rms_px} for v in result.views]
    else:
        summary["residual_meaning"] = "RMS distance of matched thermal edge points to RGB edges, RGB px"
        summary["pairs_with_structure"] = result.pairs_with_structure
        summary["pairs"] = [{"pair": p.name, "supporting": p.supporting, "edge_points": p.points,
                             "matched": p.inliers, "agreement_xy": list(p.agreement), "rms_px": p.rms_px,
                             "shift_px": list(p.shift_px)} for p in result.pairs]
    return summary


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _shown(mode: str, result: Any, names: Sequence[str], count: int = 4) -> list[int]:
    """Indices of a few supporting pairs to draw (the best agreeing first)."""
    index = {n: k for k, n in enumerate(names)}
    if mode == "checkerboard":
        ranked = sorted((v for v in result.views if v.supporting), key=lambda v: -v.inliers)
    else:
        ranked = sorted((p for p in result.pairs if p.supporting), key=lambda p: -min(p.agreement))
    return [index[item.name] for item in ranked[:count]]


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    started = time.perf_counter()
    progress = not args.no_progress
    from rgbt_perception.calibration import (
        BoardOptions,
        CalibrationRefused,
        TargetlessOptions,
        estimate_checkerboard,
        estimate_targetless,
        work_units,
    )
    from rgbt_perception.calibration.report import write_report
    from rgbt_perception.calibration.sources import read_prior, write_parameters

    pairs = _load(args, progress)
    thermal_size, rgb_size = pairs.thermal[0].shape[:2], pairs.rgb[0].shape[:2]
    prior = read_prior(args.init, thermal_size, rgb_size) if args.init else None
    truth = read_prior(args.truth, thermal_size, rgb_size) if args.truth else None
    try:
        if args.target == "checkerboard":
            options = BoardOptions(pattern=args.pattern, min_pairs=args.min_pairs if args.min_pairs else 1,
                                   max_corner_sigma_px=args.max_corner_sigma)
            bar = _Bar(progress, "finding the board", len(pairs), "pair")
            try:
                result = estimate_checkerboard(pairs.rgb, pairs.thermal, pairs.names, prior, options, bar)
            finally:
                bar.close()
        else:
            narrow = {"scale_range": (0.9, 1.1), "max_angle_deg": 2.0, "angle_step_deg": 2.0, "max_shift": 0.1} \
                if prior is not None else {}
            options = TargetlessOptions(min_pairs=args.min_pairs if args.min_pairs else 3,
                                        max_corner_sigma_px=args.max_corner_sigma, search=not args.no_search,
                                        **narrow)
            bar = _Bar(progress, "calibrating", work_units(len(pairs), options), "step")
            try:
                result = estimate_targetless(pairs.rgb, pairs.thermal, pairs.names, prior, options, bar)
            finally:
                bar.close()
    except CalibrationRefused as exc:
        print(f"{PROG}: refused: {exc}; nothing written", file=sys.stderr)
        return EXIT_REFUSED
    mode = "checkerboard" if args.target == "checkerboard" else "targetless"
    command = " ".join(shlex.quote(a) for a in [PROG, *args.argv])
    summary = summarise(mode, result, pairs, truth, time.perf_counter() - started, command)
    if args.report:
        write_report(args.report, summary, pairs.rgb, pairs.thermal, pairs.names, _shown(mode, result, pairs.names),
                     result.start, result.homography)
    if args.out:
        note = (f"thermal_to_rgb by {PROG} ({mode}): {result.pairs_supporting} of {result.pairs_total} pairs, "
                f"residual {result.residual_px:.2f} px, corner uncertainty {result.corner_sigma_px:.2f} px\n"
                f"RGB {rgb_size[1]}x{rgb_size[0]}, thermal {thermal_size[1]}x{thermal_size[0]}")
        write_parameters(args.out, result.homography, note)
    numbers = ", ".join(f"{v:.10g}" for v in summary["thermal_to_rgb"])
    print(f"thermal_to_rgb: [{numbers}]")
    line = (f"{mode}: {result.pairs_supporting} of {result.pairs_total} pairs support it, residual "
            f"{result.residual_px:.2f} px, corner uncertainty {result.corner_sigma_px:.2f} px, "
            f"{summary['seconds']:.1f} s")
    if summary["truth_error_px"] is not None:
        line += f", error against --truth {summary['truth_error_px']:.2f} px"
    print(line)
    for path, what in ((args.out, "parameters"), (args.report, "report")):
        if path:
            print(f"{what}: {path}")
    return 0


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return run(args)
    # ValueError covers CalibrationInputError, DatasetError and bad homographies.
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
