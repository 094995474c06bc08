"""config/vehicle.yaml and launch/vehicle.launch.py agree with the node they configure."""
from __future__ import annotations

import ast
import os

import pytest
import yaml

from rgbt_perception.node.parameters import PARAMETER_SPECS, check_parameter

NODE_KEY = "/**/rgbt_perception"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@pytest.fixture(scope="module")
def vehicle_parameters(repo_root) -> dict:
    with open(os.path.join(repo_root, "config", "vehicle.yaml"), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    assert list(config) == [NODE_KEY], "the file must address the node by its default name in any namespace"
    return _flatten(config[NODE_KEY]["ros__parameters"])


def test_vehicle_yaml_sets_only_declared_parameters(vehicle_parameters):
    unknown = sorted(set(vehicle_parameters) - set(PARAMETER_SPECS))
    assert unknown == []
    assert {"sync.slop", "sync.queue_size", "qos.reliability", "thermal_to_rgb"} <= set(vehicle_parameters)


def test_vehicle_yaml_values_pass_the_node_checks(vehicle_parameters):
    for name, value in vehicle_parameters.items():
        assert check_parameter(name, value) is None, name
        default = PARAMETER_SPECS[name].default
        # YAML types must match the declared types, or the node refuses the file.
        assert type(value) is type(default), name


def _launch_tree(repo_root: str) -> ast.Module:
    with open(os.path.join(repo_root, "launch", "vehicle.launch.py"), encoding="utf-8") as handle:
        return ast.parse(handle.read())


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_launch_arguments(repo_root):
    tree = _launch_tree(repo_root)
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == {"weights", "device", "rgb_topic", "thermal_topic", "namespace", "params_file",
                        "calibration_file", "fastdds_profile"}
    params_file = next(c for c in _calls(tree, "DeclareLaunchArgument") if c.args[0].value == "params_file")
    default = ast.unparse(next(k.value for k in params_file.keywords if k.arg == "default_value"))
    assert "share" in default and "'config'" in default and "'vehicle.yaml'" in default
    assert any(getattr(c.func, "id", None) == "get_package_share_directory" and c.args[0].value == "rgbt_perception"
               for c in ast.walk(tree) if isinstance(c, ast.Call))


def test_launch_remappings_name_the_node_topics(repo_root):
    from rgbt_perception.node.perception_node import (
        RGB_COMPRESSED_TOPIC,
        RGB_TOPIC,
        THERMAL_COMPRESSED_TOPIC,
        THERMAL_TOPIC,
    )

    tree = _launch_tree(repo_root)
    (node,) = _calls(tree, "Node")
    keywords = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(keywords["package"]) == "rgbt_perception"
    assert ast.literal_eval(keywords["executable"]) == "rgbt_node"
    assert ast.literal_eval(keywords["name"]) == "rgbt_perception"
    sources = [ast.literal_eval(pair.elts[0]) for pair in keywords["remappings"].elts]
    assert sorted(sources) == sorted([RGB_TOPIC, RGB_COMPRESSED_TOPIC, THERMAL_TOPIC, THERMAL_COMPRESSED_TOPIC])
    targets = {ast.literal_eval(p.elts[0]): ast.unparse(p.elts[1]) for p in keywords["remappings"].elts}
    assert "rgb_topic" in targets[RGB_TOPIC] and "thermal_topic" in targets[THERMAL_TOPIC]
    assert "thermal_topic" in targets[THERMAL_COMPRESSED_TOPIC] and "'/compressed'" in targets[THERMAL_COMPRESSED_TOPIC]
    # The node's parameters: the params file, then the calibration file when given, then the overrides.
    builder = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "perception_node")
    assert ast.unparse(keywords["parameters"]) == "parameters"
    steps = [ast.unparse(n) for n in builder.body
             if isinstance(n, (ast.AnnAssign, ast.If)) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call))]
    order = [next(k for k in ("params_file", "calibration", "'weights'") if k in step) for step in steps[:3]]
    assert order == ["params_file", "calibration", "'weights'"], steps
    assert "'device'" in steps[2]


def test_launch_description_builds_where_launch_ros_exists(repo_root):
    pytest.importorskip("launch_ros")
    import importlib.util

    path = os.path.join(repo_root, "launch", "vehicle.launch.py")
    spec = importlib.util.spec_from_file_location("vehicle_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert len(description.entities) == 10


def _profile(repo_root: str):
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(os.path.join(repo_root, "config", "fastdds_large_frames.xml"))
    return tree.getroot(), {"": "http://www.eprosima.com"}


def test_fastdds_profile_is_sized_for_1080p_rgb_and_16_bit_thermal_at_30_hz(repo_root):
    root, ns = _profile(repo_root)
    frame = 1920 * 1080 * 3 + 640 * 512 * 2  # one RGB and one thermal frame, bytes
    descriptors = {d.find("transport_id", ns).text: d for d in root.iterfind(".//transport_descriptor", ns)}
    shm = next(d for d in descriptors.values() if d.find("type", ns).text == "SHM")
    udp = next(d for d in descriptors.values() if d.find("type", ns).text == "UDPv4")
    # The sender keeps a keep-last-10 history in its segment; a reader's port queues ~64 KB fragments.
    assert int(shm.find("segment_size", ns).text) >= 10 * frame
    assert int(shm.find("port_queue_capacity", ns).text) >= 2 * frame // 65000
    for name in ("sendBufferSize", "receiveBufferSize"):
        assert int(udp.find(name, ns).text) >= 2 * frame
    (participant,) = root.iterfind(".//participant", ns)
    assert participant.get("is_default_profile") == "true"  # rmw_fastrtps's participants take it
    assert participant.find("rtps/useBuiltinTransports", ns).text == "false"
    used = [t.text for t in participant.iterfind("rtps/userTransports/transport_id", ns)]
    assert sorted(used) == sorted(descriptors)


def test_launch_and_demo_use_the_fastdds_profile(repo_root):
    tree = _launch_tree(repo_root)
    (setter,) = _calls(tree, "SetEnvironmentVariable")
    assert "fastdds_profile" in ast.unparse(setter)
    source = ast.unparse(tree)
    assert "FASTDDS_DEFAULT_PROFILES_FILE" in source and "FASTRTPS_DEFAULT_PROFILES_FILE" in source
    assert "fastdds_large_frames.xml" in source
    with open(os.path.join(repo_root, "docs", "demo.sh"), encoding="utf-8") as handle:
        demo = handle.read()
    assert "config/fastdds_large_frames.xml" in demo and "FASTDDS_DEFAULT_PROFILES_FILE" in demo


def test_launch_and_config_are_installed(repo_root):
    with open(os.path.join(repo_root, "setup.py"), encoding="utf-8") as handle:
        setup_text = handle.read()
    assert 'glob("launch/*.launch.py")' in setup_text and 'glob("config/*.yaml")' in setup_text



@pytest.mark.ros
def test_params_file_reaches_the_node_in_the_launch_namespace(repo_root, tmp_path):
    """The installed node, namespaced as the launch file does, takes its values from the file."""
    rclpy = pytest.importorskip("rclpy")
    import signal
    import subprocess
    import time

    from rcl_interfaces.srv import GetParameters

    from rgbt_perception.evaluation.node_process import signal_and_wait

    with open(os.path.join(repo_root, "config", "vehicle.yaml"), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    # Values that differ from the declared defaults, so only the file can have set them;
    # autostart off keeps the node from loading a model.
    config[NODE_KEY]["ros__parameters"].update(score_threshold=0.42, autostart=False)
    params_file = tmp_path / "vehicle.yaml"
    params_file.write_text(yaml.safe_dump(config))
    executable = os.path.join(repo_root, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node")
    node_process = subprocess.Popen(
        [executable, "--ros-args", "-r", "__ns:=/perception", "--params-file", str(params_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    rclpy.init()
    client_node = rclpy.create_node("params_file_probe")
    try:
        client = client_node.create_client(GetParameters, "/perception/rgbt_perception/get_parameters")
        assert client.wait_for_service(timeout_sec=30.0)
        future = client.call_async(GetParameters.Request(names=["score_threshold", "autostart"]))
        deadline = time.monotonic() + 30.0
        while not future.done() and time.monotonic() < deadline:
            rclpy.spin_once(client_node, timeout_sec=0.1)
        threshold, autostart = future.result().values
        assert threshold.double_value == pytest.approx(0.42)
        assert autostart.bool_value is False
    finally:
        client_node.destroy_node()
        rclpy.try_shutdown()
        assert signal_and_wait(node_process, signal.SIGTERM, 15) is not None, "the node outlived its SIGTERM"


@pytest.mark.ros
def test_fastdds_profile_delivers_frames_the_defaults_lose(repo_root, tmp_path):
    """A 480x640 rgb8 frame (900 KiB) exceeds Fast DDS's default shared-memory segment; with the
    profile a plain best-effort subscriber in another process gets (nearly) every frame."""
    import json
    import subprocess
    import sys

    out = tmp_path / "delivery.json"
    result = subprocess.run(
        [sys.executable, "-m", "rgbt_perception.bench.dds_delivery", "--no-node", "--sizes", "480x640",
         "--transports", "profile", "--seconds", "3", "--json", str(out), "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=180, cwd=repo_root)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["published"]["rgb"] == 90 and row["published"]["thermal"] == 27
    assert row["received"]["rgb"] >= 0.9 * 90 and row["received"]["thermal"] >= 0.9 * 27
    assert "| 480x640 | `config/fastdds_large_frames.xml` |" in result.stdout
    assert (tmp_path / "logs" / "listener_480x640_profile.log").is_file()
