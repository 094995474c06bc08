"""``rgbt_node``: the perception node. ``--help`` answers without loading ROS or torch."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rgbt_perception.core import topics
from rgbt_perception.node.parameters import PARAMETERS
from rgbt_perception.node.shutdown import GUARD


def strip_ros_args(argv: Sequence[str]) -> list[str]:
    """``argv`` without the ROS arguments: everything from ``--ros-args`` up to ``--`` or the end
    (as ``rclpy.utilities.remove_ros_args`` does)."""
    kept: list[str] = []
    in_ros_args = False
    for arg in argv:
        if arg == "--ros-args":
            in_ros_args = True
        elif in_ros_args and arg == "--":
            in_ros_args = False
        elif not in_ros_args:
            kept.append(arg)
    return kept


def build_parser() -> argparse.ArgumentParser:
    lines = [f"  {spec.name} (default {spec.default!r}): {spec.description}" for spec in PARAMETERS]
    return argparse.ArgumentParser(
        prog="rgbt_node",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="RGB-thermal semantic segmentation and detection node. Subscribes "
        f"{topics.RGB_IMAGE} (or {topics.RGB_COMPRESSED}) and {topics.THERMAL_IMAGE} (or "
        f"{topics.THERMAL_COMPRESSED}); publishes {', '.join(topics.OUTPUTS)}. Ctrl-C or SIGTERM stops it "
        "with status 0 at any moment.",
        epilog="ROS parameters (set with --ros-args -p NAME:=VALUE or --params-file FILE):\n" + "\n".join(lines)
        + "\n\nexample: rgbt_node --ros-args --params-file config/vehicle.yaml -p weights:=model.safetensors",
    )


def main(args: list[str] | None = None) -> int:
    argv = sys.argv if args is None else ["rgbt_node", *args]
    build_parser().parse_args(strip_ros_args(argv)[1:])
    # Before the heavy imports: Ctrl-C or SIGTERM while ROS, NumPy or torch load exits 0 too.
    GUARD.install()
    try:
        from rgbt_perception.node.perception_node import main as run_node

        return run_node(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
