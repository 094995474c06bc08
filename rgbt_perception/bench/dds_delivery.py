"""How many camera frames DDS delivers at camera sizes, with and without the project's Fast DDS profile.

Per case (RGB size x transport setting) three processes share one DDS domain on this machine:

* a camera publisher: ``rgb8`` RGB at ``--rgb-hz`` and ``mono16`` 640x512 thermal at ``--thermal-hz``
  on ``rgb/image`` / ``thermal/image``, sensor-data QoS (best effort, keep last 5), as drivers publish;
* a plain subscriber that only counts what arrives (best effort, keep last 5);
* the real ``rgbt_node`` (unless ``--no-node``), whose ``/diagnostics`` say how many frames it
  accepted and how many pairs it formed and processed.

Transport settings: ``default`` (Fast DDS as installed), ``profile`` (``config/fastdds_large_frames.xml``
for every process, through :func:`profile_variable`), ``large_data``
(``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``). Prints a Markdown table with the command.

    python -m rgbt_perception.bench.dds_delivery --seconds 12
    rgbt-bench --dds-delivery --sizes 1080x1920 --transports default,profile

The module imports only the standard library until a role runs, so ``--help`` is immediate.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rgbt_perception.core.stamps import split_nanoseconds
from rgbt_perception.io.console import console_script

PROFILE_NAME = "fastdds_large_frames.xml"
THERMAL_SIZE = (512, 640)
TRANSPORTS = ("default", "profile", "large_data")
NAMESPACE = "/dds_bench"


def profile_path() -> Path:
    """The Fast DDS profile: installed share directory first, then the source tree."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "share" / "rgbt_perception" / "config" / PROFILE_NAME
        if prefix and candidate.is_file():
            return candidate
    return Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME


#: ROS 2 distributions whose Fast DDS (2.x) reads FASTRTPS_DEFAULT_PROFILES_FILE; later ones (Fast DDS 3)
#: read FASTDDS_DEFAULT_PROFILES_FILE and warn that the old name is deprecated.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def profile_variable() -> str:
    """The environment variable that hands Fast DDS an XML profile on this ROS 2 installation."""
    if os.environ.get("ROS_DISTRO", "") in FAST_DDS_2_DISTROS:
        return "FASTRTPS_DEFAULT_PROFILES_FILE"
    return "FASTDDS_DEFAULT_PROFILES_FILE"


def transport_env(transport: str) -> dict[str, str]:
    """Environment of every process of a case for transport setting ``transport``."""
    if transport == "profile":
        return {profile_variable(): str(profile_path())}
    if transport == "large_data":
        return {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    return {}


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 1080x1920; got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


# --------------------------------------------------------------------------------------------
# Roles (each runs in its own process)


def _sensor_qos() -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def run_publisher(rgb_size: tuple[int, int], seconds: float, rgb_hz: float, thermal_hz: float,
                  subscribers: int) -> dict[str, int]:
    """Publish for ``seconds`` once ``subscribers`` readers matched each topic; returns the counts."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("camera_driver", namespace=NAMESPACE)
    publishers = {"rgb": node.create_publisher(Image, "rgb/image", _sensor_qos()),
                  "thermal": node.create_publisher(Image, "thermal/image", _sensor_qos())}

    def frames(kind: str) -> list[Image]:
        # A few pre-built frames: the publisher stays on schedule, as a driver with its own buffers does.
        out = []
        for variant in range(4):
            if kind == "rgb":
                height, width = rgb_size
                pixels = np.full((height, width, 3), 40 + 50 * variant, np.uint8)
                msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=pixels.tobytes())
                msg.header.frame_id = "rgb_camera"
            else:
                height, width = THERMAL_SIZE
                counts = np.full((height, width), 20000 + 500 * variant, "<u2")
                msg = Image(height=height, width=width, encoding="mono16", step=width * 2, data=counts.tobytes())
                msg.header.frame_id = "thermal_camera"
            out.append(msg)
        return out

    messages = {"rgb": frames("rgb"), "thermal": frames("thermal")}
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and any(p.get_subscription_count() < subscribers for p in publishers.values()):
        time.sleep(0.05)
    time.sleep(1.0)  # discovery of the remaining endpoints
    events = sorted([(k / rgb_hz, "rgb") for k in range(int(seconds * rgb_hz))]
                    + [(k / thermal_hz, "thermal") for k in range(int(seconds * thermal_hz))])
    counts = {"rgb": 0, "thermal": 0}
    start = time.monotonic()
    try:
        for when, kind in events:
            delay = start + when - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = messages[kind][counts[kind] % 4]
            msg.header.stamp.sec, msg.header.stamp.nanosec = split_nanoseconds(time.time_ns())
            publishers[kind].publish(msg)
            counts[kind] += 1
        counts["late_s"] = round(max(0.0, time.monotonic() - start - seconds), 2)
        time.sleep(1.0)  # let the last frames leave before the writers go
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return counts


def run_listener(with_node: bool) -> dict[str, Any]:
    """Count frames until SIGINT/SIGTERM; with the node, also keep its last diagnostics. Prints
    ``{"ready": true}`` once it listens (and, with the node, has heard the node's status)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("plain_subscriber", namespace=NAMESPACE)
    counts = {"rgb": 0, "thermal": 0}
    diagnostics: dict[str, str] = {}

    def count(kind: str) -> Any:
        def callback(msg: Image) -> None:
            counts[kind] += 1
        return callback

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            # The pipeline's status (the node also reports its registration check in the same array).
            if status.name.startswith(f"{NAMESPACE}/") and status.name.endswith(": pipeline"):
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})

    latencies_ms: list[float] = []

    def on_mask(msg: Image) -> None:  # RGB publish (its stamp) to mask receipt, same clock on this machine
        latencies_ms.append((time.time_ns() - msg.header.stamp.sec * 10**9 - msg.header.stamp.nanosec) / 1e6)

    node.create_subscription(Image, "semantic", on_mask, 10)
    node.create_subscription(Image, "rgb/image", count("rgb"), _sensor_qos())
    node.create_subscription(Image, "thermal/image", count("thermal"), _sensor_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    announced = False
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if not announced and (diagnostics or not with_node):
                print(json.dumps({"ready": True}), flush=True)
                announced = True
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return {"received": counts, "node": dict(diagnostics), "mask_latencies_ms": latencies_ms}


# --------------------------------------------------------------------------------------------
# One case, all cases


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _stop(process: subprocess.Popen, timeout: float = 30.0) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""


@dataclass
class DeliveryRun:
    """What every case of a run shares: publishing time and rates, the node (if any) and the log folder."""

    seconds: float
    rgb_hz: float
    thermal_hz: float
    weights: str
    device: str
    with_node: bool
    log_dir: Path
    node_params: tuple[str, ...] = ()  # further ``name:=value`` node parameters (backend, precision ...)


def run_case(rgb_size: tuple[int, int], transport: str, run: DeliveryRun) -> dict[str, Any]:
    """Run one case (publisher, plain subscriber, node) and return its counts."""
    from rgbt_perception.bench.stats import process_cpu_s

    seconds, rgb_hz, thermal_hz = run.seconds, run.rgb_hz, run.thermal_hz
    weights, device, with_node, log_dir = run.weights, run.device, run.with_node, run.log_dir
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(120, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1", **transport_env(transport))
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"):
        if name not in transport_env(transport):
            env.pop(name, None)
    me = [sys.executable, "-m", "rgbt_perception.bench.dds_delivery"]
    listener = subprocess.Popen([*me, "--role", "listener", *(["--no-node"] if not with_node else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    node = None
    tag = f"{rgb_size[0]}x{rgb_size[1]}_{transport}"
    try:
        if with_node:
            command = [sys.executable, "-m", "rgbt_perception.cli.node", "--ros-args", "-r", f"__ns:={NAMESPACE}",
                       "-p", f"device:={device}", "-p", "status_period:=0.5"]
            if weights:
                command += ["-p", f"weights:={weights}"]
            for param in run.node_params:
                command += ["-p", param]
            log = open(log_dir / f"node_{tag}.log", "w")
            node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        line = ""
        while '"ready"' not in line:
            if time.monotonic() > deadline or listener.poll() is not None or (node and node.poll() is not None):
                raise RuntimeError(f"{tag}: the node or the listener did not come up (see {log_dir})")
            if select.select([listener.stdout], [], [], 1.0)[0]:
                line = listener.stdout.readline()
        cpu_before = process_cpu_s(node.pid) if node is not None else float("nan")
        published = subprocess.run(
            [*me, "--role", "publisher", "--sizes", f"{rgb_size[0]}x{rgb_size[1]}", "--seconds", str(seconds),
             "--rgb-hz", str(rgb_hz), "--thermal-hz", str(thermal_hz), "--subscribers", "2" if with_node else "1"],
            capture_output=True, text=True, env=env, timeout=seconds + 120)
        (log_dir / f"publisher_{tag}.log").write_text(published.stdout + published.stderr)
        if published.returncode != 0:
            raise RuntimeError(f"{tag}: publisher failed: {published.stderr.strip().splitlines()[-1:]}")
        time.sleep(3.0)  # the node drains its last pair and publishes diagnostics
        node_cpu_s = (process_cpu_s(node.pid) if node is not None else float("nan")) - cpu_before
    finally:
        out = _stop(listener)
        if node is not None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
    (log_dir / f"listener_{tag}.log").write_text(out)
    result = _json_lines(out)[-1]
    return {"rgb_size": list(rgb_size), "transport": transport, "published": _json_lines(published.stdout)[-1],
            "node_cpu_s": node_cpu_s, **result}


def _random_weights(folder: Path) -> Path:
    """A randomly initialised micro model (input 128x160, the demo weights' size) saved in ``folder``."""
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=SYNTHETIC.num_classes, input_size=(128, 160))
    path = folder / "micro_random.safetensors"
    save_weights(path, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))
    return path


def render(rows: list[dict[str, Any]], command: str, rgb_hz: float, thermal_hz: float, seconds: float) -> str:
    """Markdown table of the cases."""
    lines = [
        f"RGB rgb8 at {rgb_hz:g} Hz + thermal mono16 {THERMAL_SIZE[0]}x{THERMAL_SIZE[1]} at {thermal_hz:g} Hz, "
        f"{seconds:g} s per case; published / received by a plain subscriber / accepted by the node; "
        "pairs formed / processed by the node.",
        "",
        "| RGB | transport | RGB frames | thermal frames | pairs formed / processed |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        pub, got, node = row["published"], row["received"], row["node"]

        def triple(kind: str) -> str:
            accepted = node.get(f"{kind}_frames_accepted", "-")
            return f"{pub[kind]} / {got[kind]} / {accepted}"

        pairs = f"{node.get('pairs_formed', '-')} / {node.get('frames_processed', '-')}"
        label = {"default": "Fast DDS defaults", "profile": f"`config/{PROFILE_NAME}`",
                 "large_data": "`FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`"}[row["transport"]]
        lines.append(f"| {row['rgb_size'][0]}x{row['rgb_size'][1]} | {label} | {triple('rgb')} | "
                     f"{triple('thermal')} | {pairs} |")
    lines += ["", "```bash", command, "```", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rgbt_perception.bench.dds_delivery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1080x1920,720x1280", help="RGB sizes HxW, comma separated")
    parser.add_argument("--transports", default="default,profile",
                        help=f"comma separated, of: {', '.join(TRANSPORTS)}")
    parser.add_argument("--seconds", type=float, default=12.0, help="publishing time per case")
    parser.add_argument("--rgb-hz", type=float, default=30.0)
    parser.add_argument("--thermal-hz", type=float, default=9.0)
    parser.add_argument("--weights", default="", help="node weights (default: the shipped demo weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run the node on a randomly initialised micro model (input 128x160, as the demo "
                        "weights): delivery does not depend on what the model learned")
    parser.add_argument("--device", default="cpu", help="node device")
    parser.add_argument("--no-node", action="store_true", help="publisher and plain subscriber only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--logs", help="folder for the processes' logs (default: a new temporary folder)")
    parser.add_argument("--role", choices=("publisher", "listener"), help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=1, help=argparse.SUPPRESS)
    return parser


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sizes = [_size(s) for s in args.sizes.split(",") if s]
    except argparse.ArgumentTypeError as exc:
        print(f"dds_delivery: {exc}", file=sys.stderr)
        return 2
    transports = [t for t in args.transports.split(",") if t]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not sizes or not transports or args.seconds <= 0 or args.rgb_hz <= 0 or args.thermal_hz <= 0:
        print(f"dds_delivery: choose sizes, transports among {', '.join(TRANSPORTS)} (got {unknown or transports}) "
              "and positive --seconds/--rgb-hz/--thermal-hz", file=sys.stderr)
        return 2
    if args.role == "publisher":
        print(json.dumps(run_publisher(sizes[0], args.seconds, args.rgb_hz, args.thermal_hz, args.subscribers)))
        return 0
    if args.role == "listener":
        print(json.dumps(run_listener(not args.no_node)), flush=True)
        return 0
    if "profile" in transports and not profile_path().is_file():
        print(f"dds_delivery: Fast DDS profile {profile_path()} not found", file=sys.stderr)
        return 1
    command = "python -m rgbt_perception.bench.dds_delivery " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log_dir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="dds_delivery_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    weights = str(_random_weights(log_dir)) if args.random_weights else args.weights
    run = DeliveryRun(args.seconds, args.rgb_hz, args.thermal_hz, weights, args.device, not args.no_node, log_dir)
    rows = []
    for size in sizes:
        for transport in transports:
            print(f"{size[0]}x{size[1]} {transport} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run_case(size, transport, run))
            except RuntimeError as exc:
                print(f"dds_delivery: {exc}", file=sys.stderr)
                return 1
    print(render(rows, command.strip(), args.rgb_hz, args.thermal_hz, args.seconds))
    print(f"logs: {log_dir}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
