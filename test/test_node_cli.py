"""The installed rgbt_node executable as people start it: help, bad start-up input."""
from __future__ import annotations

import os
import subprocess

import pytest

from rgbt_perception.node.parameters import PARAMETER_SPECS

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def executable(repo_root) -> str:
    return os.path.join(repo_root, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node")


def test_help_lists_topics_and_parameters(executable):
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in PARAMETER_SPECS:
        assert name in result.stdout
    assert "thermal/image" in result.stdout and "semantic/color" in result.stdout
    result = subprocess.run([executable, "--no-such-option"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_fail_start_up_with_a_reason(executable, tmp_path):
    missing = tmp_path / "absent.safetensors"
    result = subprocess.run(
        [executable, "--ros-args", "-r", "__ns:=/cli_test", "-p", f"weights:={missing}", "-p", "device:=cpu"],
        capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "configure failed" in output and str(missing) in output
    assert "Traceback" not in output


def test_out_of_range_start_up_parameter_is_refused(executable):
    result = subprocess.run(
        [executable, "--ros-args", "-r", "__ns:=/cli_test", "-p", "sync.slop:=-1.0"],
        capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "sync.slop" in output and "Traceback" not in output
