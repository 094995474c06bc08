"""End-to-end latency of the installed rgbt_node: camera stamp -> semantic mask received.

Starts the node (``install/rgbt_perception/lib/rgbt_perception/rgbt_node``) and the camera
publisher (RGB 30 Hz, thermal 9 Hz arriving 150 ms late) as separate processes, listens to
``semantic`` and ``status`` here, and prints p50/p95 of (receipt time - RGB stamp) with the
node's own counters. Without ``--weights`` it writes a randomly initialised ``micro`` model
at the requested input size (latency does not depend on the weights' values).

    python test/ros_helpers/measure_latency.py --size 480x640 --seconds 40
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from rgbt_perception.evaluation.node_process import signal_and_wait

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def write_micro_weights(path: str, input_size: tuple[int, int]) -> None:
    import torch

    from rgbt_perception.core.classes import SYNTHETIC
    from rgbt_perception.io.weights import WeightsMetadata, save_weights
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

    torch.manual_seed(0)
    config = ModelConfig(variant="micro", num_classes=len(SYNTHETIC.names), input_size=input_size)
    save_weights(path, RGBTNet(config), WeightsMetadata.for_model(config, SYNTHETIC))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="node weights file; default: a fresh micro model at --size")
    parser.add_argument("--size", type=_size, default=(480, 640), help="RGB, thermal and model input size HxW")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the cameras publish")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="first masks left out of the statistics")
    parser.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort",
                        help="the node's qos.reliability (the publisher offers reliable)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the node")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rgbt_msgs.msg import PerceptionStatus
    from sensor_msgs.msg import Image

    workdir = tempfile.mkdtemp(prefix="rgbt_latency_")
    weights = args.weights or os.path.join(workdir, "micro.safetensors")
    if not args.weights:
        write_micro_weights(weights, args.size)
    namespace = "/latency"
    size = "x".join(map(str, args.size))
    node_log = open(os.path.join(workdir, "node.log"), "w")
    node = subprocess.Popen(
        [os.path.join(REPO, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node"), "--ros-args",
         "-r", f"__ns:={namespace}", "--params-file", os.path.join(REPO, "config", "vehicle.yaml"),
         "-p", f"weights:={weights}", "-p", f"device:={args.device}",
         "-p", f"qos.reliability:={args.reliability}"],
        stdout=node_log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
    )

    rclpy.init()
    listener = rclpy.create_node("latency_listener")
    latencies_ms: list[float] = []
    statuses: list = []
    lock = threading.Lock()

    def on_semantic(msg: Image) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            latencies_ms.append((time.time_ns() - stamp) / 1e6)

    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    listener.create_subscription(Image, f"{namespace}/semantic", on_semantic, qos)
    listener.create_subscription(PerceptionStatus, f"{namespace}/status",
                                 lambda m: statuses.append((time.time(), m)), qos)
    spinner = threading.Thread(target=rclpy.spin, args=(listener,), daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 300
        while not statuses:
            if node.poll() is not None or time.monotonic() > deadline:
                node_log.flush()
                print(open(node_log.name).read(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        publish_start = time.time()
        publisher = subprocess.run(
            [sys.executable, os.path.join(HERE, "camera_publisher.py"), "--namespace", namespace,
             "--rgb-size", size, "--thermal-size", size, "--phases", f"live:{args.seconds}"],
            capture_output=True, text=True,
        )
        if publisher.returncode != 0:
            print(publisher.stderr, file=sys.stderr)
            return 1
        time.sleep(5.0)
        with lock:
            measured = latencies_ms[args.warmup:]
        publish_end = time.time()
        status = statuses[-1][1]
        # The node's own rate while the cameras ran (its window empties once they stop).
        running = [m.fps for t, m in statuses if publish_start + args.seconds / 2 < t < publish_end]
        published = json.loads(publisher.stdout.splitlines()[-1])["published"]
        result = {
            "size": size,
            "qos_reliability": args.reliability,
            "device": status.device,
            "masks_received": len(latencies_ms),
            "published": published,
            "pairs_formed": status.pairs_formed,
            "frames_processed": status.frames_processed,
            "pairs_dropped": status.pairs_dropped,
            "latency_ms_p50": round(float(np.percentile(measured, 50)), 1) if measured else None,
            "latency_ms_p95": round(float(np.percentile(measured, 95)), 1) if measured else None,
            "node_latency_ms_p50": round(status.latency_ms_p50, 1),
            "node_latency_ms_p95": round(status.latency_ms_p95, 1),
            "fps": round(float(np.median(running)), 2) if running else None,
        }
        print(json.dumps(result, indent=2))
    finally:
        signal_and_wait(node, timeout_s=30)
        listener.destroy_node()
        rclpy.try_shutdown()
        node_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
