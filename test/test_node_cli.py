"""The installed rgbt_node executable as people start it: help, bad start-up input, signals."""
from __future__ import annotations

import os
import signal
import subprocess
import time

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


@pytest.fixture(scope="module")
def micro_weights(tmp_path_factory) -> str:
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))
    path = tmp_path_factory.mktemp("signals") / "micro.safetensors"
    save_weights(path, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))
    return str(path)


def _interrupt_when(executable: str, weights: str, words: str, signum: int) -> tuple[int, str]:
    """Start the node, send ``signum`` as soon as a log line contains ``words``; (exit status, output)."""
    command = [executable, "--ros-args", "-r", "__ns:=/signal_test", "-p", f"weights:={weights}",
               "-p", "device:=cpu"]
    env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM="0", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if words in line:
                # A moment after the line: a signal racing the line's own rosout publication makes rcl
                # report that publication, which is not what this test is about.
                time.sleep(0.3)
                process.send_signal(signum)
                break
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(lines) + rest


@pytest.mark.parametrize("signum,when", [
    (signal.SIGINT, "pairing:"),    # logged just before configure: torch imports, the weights load
    (signal.SIGTERM, "pairing:"),
    (signal.SIGTERM, "active:"),    # running (SIGINT while running: test_node_pipeline)
])
def test_signal_at_start_up_or_while_running_exits_zero(executable, micro_weights, signum, when):
    code, output = _interrupt_when(executable, micro_weights, when, signum)
    assert code == 0, output
    assert when in output
    for words in ("Traceback", "Failed to publish log message", "context is invalid", "[ERROR]"):
        assert words not in output, output
    if when == "pairing:":
        assert "active:" not in output  # it really stopped during start-up
