"""The layout holds: lint clean, import contracts kept, small modules, console scripts fast to answer."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

MAX_SOURCE_LINES = 600
HEAVY_MODULES = ("torch", "timm", "peft", "cv2", "rclpy", "matplotlib", "onnxruntime")


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _console_scripts(repo_root: str) -> dict[str, str]:
    """``{script name: "module:function"}`` as setup.py declares them."""
    tree = ast.parse(open(os.path.join(repo_root, "setup.py"), encoding="utf-8").read())
    scripts: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r"\s*([\w-]+)\s*=\s*([\w.]+:\w+)\s*", node.value)
            if match:
                scripts[match.group(1)] = match.group(2)
    return scripts


def test_ruff_finds_nothing(repo_root):
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=repo_root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept(repo_root):
    """pyproject.toml: runtime never imports training; core/model/io/inference/training never import rclpy;
    layers of the runtime package; no import cycles at any package level, function-level imports included."""
    result = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 4


def test_no_source_file_is_longer_than_the_limit(repo_root):
    too_long = {}
    for package in ("rgbt_perception", "training"):
        for folder, _, files in os.walk(os.path.join(repo_root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as handle:
                        count = sum(1 for _ in handle)
                    if count > MAX_SOURCE_LINES:
                        too_long[os.path.relpath(path, repo_root)] = count
    assert not too_long, too_long


def test_every_console_script_is_declared(repo_root):
    scripts = _console_scripts(repo_root)
    for name in ("rgbt_node", "rgbt-infer", "rgbt-eval-bag", "rgbt-bench", "rgbt-train", "rgbt-eval", "rgbt-export",
                 "rgbt-synth", "rgbt-text-embed", "rgbt-pretrain", "rgbt-make-bag"):
        assert name in scripts


@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]], ids=["help", "bad-option"])
def test_console_scripts_parse_before_loading_heavy_libraries(repo_root, argv):
    """``--help`` and argument errors answer before torch, OpenCV or ROS load."""
    probe = (
        "import importlib, json, sys\n"
        "module, function = sys.argv[1].split(':')\n"
        "main = getattr(importlib.import_module(module), function)\n"
        "try:\n"
        "    main(sys.argv[2:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 'returned'\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    failures = {}
    for name, target in _console_scripts(repo_root).items():
        result = subprocess.run([sys.executable, "-c", probe, target, *argv], cwd=repo_root, capture_output=True,
                                text=True, timeout=120)
        last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        expected_code = 0 if argv == ["--help"] else 2
        if f'"code": {expected_code}' not in last or '"heavy": []' not in last or "Traceback" in result.stderr:
            failures[name] = last or result.stderr[-500:]
    assert not failures, failures
