"""Thermal-to-RGB calibration (``rgbt-calibrate``) and the run-time alignment check; no ROS import.

* :func:`estimate_targetless`: the homography from scene structure both cameras see.
* :func:`estimate_checkerboard`: the homography from a heated checkerboard.
* :class:`AlignmentMonitor` (:mod:`.alignment`): a cheap score of how well the configured
  homography still registers the live frames, for the node's /diagnostics.
"""
from rgbt_perception.calibration.target import BoardOptions, BoardResult, estimate_checkerboard
from rgbt_perception.calibration.targetless import (
    CalibrationRefused,
    TargetlessOptions,
    TargetlessResult,
    estimate_targetless,
    work_units,
)

__all__ = [
    "BoardOptions",
    "BoardResult",
    "CalibrationRefused",
    "TargetlessOptions",
    "TargetlessResult",
    "estimate_checkerboard",
    "estimate_targetless",
    "work_units",
]
