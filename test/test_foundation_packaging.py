"""Package manifests are valid and colcon finds both packages of the repository."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess

import pytest
from catkin_pkg.package import parse_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# rosdep keys a ROS 2 Jazzy machine resolves; the manifests must use these names exactly.
RUNTIME_KEYS = {
    "rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "message_filters", "cv_bridge",
    "launch_ros", "python3-numpy", "python3-opencv",
}


def test_rgbt_perception_manifest():
    package = parse_package(os.path.join(ROOT, "package.xml"))
    assert package.name == "rgbt_perception"
    assert package.get_build_type() == "ament_python"
    assert [lic for lic in package.licenses] == ["Apache-2.0"]
    exec_keys = {d.name for d in package.exec_depends} | {d.name for d in package.run_depends}
    assert RUNTIME_KEYS <= exec_keys, RUNTIME_KEYS - exec_keys
    assert "rgbt_msgs" in {d.name for d in package.build_depends}


def test_rgbt_msgs_manifest():
    package = parse_package(os.path.join(ROOT, "rgbt_msgs", "package.xml"))
    assert package.name == "rgbt_msgs"
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    assert "rosidl_default_generators" in {d.name for d in package.buildtool_depends}


def test_setup_version_matches_manifest():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    keywords = {
        kw.arg: kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
        for kw in node.keywords if kw.arg in ("version", "name")
    }
    package = parse_package(os.path.join(ROOT, "package.xml"))
    assert ast.literal_eval(keywords["version"]) == package.version


@pytest.mark.skipif(shutil.which("colcon") is None, reason="colcon is installed by make setup")
def test_colcon_lists_both_packages():
    out = subprocess.run(
        ["colcon", "--log-base", os.devnull, "list", "--base-paths", ".", "rgbt_msgs"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    rows = sorted(line.split("\t")[:3] for line in out.strip().splitlines())
    assert rows == [["rgbt_msgs", "rgbt_msgs", "(ros.ament_cmake)"], ["rgbt_perception", ".", "(ros.ament_python)"]]


def test_interface_definitions_start_with_the_required_fields():
    required = {
        "Detection2D": ["int32 class_id", "string label", "float32 score", "float32 x_min", "float32 y_min",
                        "float32 x_max", "float32 y_max"],
        "Detection2DArray": ["std_msgs/Header header", "Detection2D[] detections"],
        "PerceptionStatus": ["std_msgs/Header header", "bool rgb_ok", "bool thermal_ok", "float32 fps",
                             "float32 latency_ms_p50", "float32 latency_ms_p95", "float32 sync_skew_ms",
                             "uint64 frames_processed", "uint64 pairs_dropped", "uint64 inputs_rejected",
                             "string device"],
        "ClassList": ["std_msgs/Header header", "string[] names", "uint8[] palette"],
    }
    for name, fields in required.items():
        with open(os.path.join(ROOT, "rgbt_msgs", "msg", f"{name}.msg")) as f:
            lines = [ln.split("#")[0].strip() for ln in f]
        declared = [" ".join(ln.split()) for ln in lines if ln]
        assert declared[: len(fields)] == fields, name
