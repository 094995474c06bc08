"""(3) of the benchmark: the real ``rgbt_node`` in a child process, fed and read over DDS."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rgbt_perception.bench.settings import BenchError
from rgbt_perception.core.stamps import stamp_to_nanoseconds
from rgbt_perception.core.topics import DETECTIONS, RGB_IMAGE, SEMANTIC, THERMAL_IMAGE
from rgbt_perception.evaluation.node_process import NodeProcess, NodeProcessError

if TYPE_CHECKING:
    import numpy as np


def process_memory(pid: int) -> dict[str, Any]:
    """``{"rss_mb", "peak_mb", "torch_loaded"}`` of a running process, from /proc."""
    fields: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    fields[line.split(":")[0]] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/maps") as handle:
            torch_loaded = any("libtorch" in line for line in handle)
    except OSError:
        return {"rss_mb": None, "peak_mb": None, "torch_loaded": None}
    return {"rss_mb": fields.get("VmRSS"), "peak_mb": fields.get("VmHWM"), "torch_loaded": torch_loaded}

NODE_NAME = "rgbt_bench_target"
PROBE_NAME = "rgbt_bench_probe"


class NodeRoundTrip:
    """The real ``rgbt_node`` in a child process, fed and read over DDS by this process.

    ``round_trip()`` publishes one pair with a fresh stamp and returns the ms until both
    ``semantic`` and ``detections`` with that stamp have arrived (``None`` on time-out).
    The node runs with the same torch thread count as this process. Failures to start the node,
    or its death, raise :class:`BenchError` so the benchmark reports them and goes on.
    """

    def __init__(self, weights: str, device: str, precision: str, threads: int, timeout_s: float,
                 log_path: str, backend: str = "torch") -> None:
        self.timeout_s = timeout_s
        self.lost = 0
        self.received = 0
        self.node_process = NodeProcess(
            # Reliable both ways: a frame lost in transport would count as a time-out, not as latency.
            {"weights": weights, "device": device, "precision": precision, "qos.reliability": "reliable",
             "backend": backend},
            log_path, node_name=NODE_NAME, threads=threads,
        )
        self._arrivals: dict[tuple[str, int], float] = {}
        self._context: Any = None
        self._node: Any = None
        self._executor: Any = None

    @property
    def pid(self) -> int:
        """Process id of the running node."""
        if self.node_process.process is None:
            raise BenchError("the node is not running")
        return self.node_process.process.pid

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the node and a probe node of this process; return once they are connected."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rgbt_msgs.msg import Detection2DArray
        from sensor_msgs.msg import Image

        try:
            self.node_process.start()
        except NodeProcessError as exc:
            raise BenchError(str(exc)) from None

        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node(PROBE_NAME, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        images = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        outputs = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self._rgb_pub = self._node.create_publisher(Image, RGB_IMAGE, images)
        self._thermal_pub = self._node.create_publisher(Image, THERMAL_IMAGE, images)
        self._node.create_subscription(Image, SEMANTIC, lambda m: self._arrived(SEMANTIC, m), outputs)
        self._node.create_subscription(Detection2DArray, DETECTIONS, lambda m: self._arrived(DETECTIONS, m),
                                       outputs)
        try:
            self.node_process.wait_until(self._connected, self.timeout_s,
                                         "subscribed to both inputs and publishing both outputs",
                                         poll=lambda: self._executor.spin_once(timeout_sec=0.05))
        except NodeProcessError as exc:
            raise BenchError(str(exc)) from None

    def _connected(self) -> bool:
        node = self._node
        return (self._rgb_pub.get_subscription_count() > 0 and self._thermal_pub.get_subscription_count() > 0
                and node.count_publishers(SEMANTIC) > 0 and node.count_publishers(DETECTIONS) > 0)

    def stop(self) -> float | None:
        """Stop the probe and the node; returns the node's peak RSS in MiB (``None`` when unknown)."""
        if self._node is not None:
            self._executor.shutdown()
            self._node.destroy_node()
            self._node = None
        if self._context is not None:
            import rclpy

            rclpy.try_shutdown(context=self._context)
            self._context = None
        return self.node_process.stop()

    # -- measuring ----------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """The running node's resident memory (``VmRSS``, peak ``VmHWM``, MiB) and whether it has
        loaded torch (``libtorch`` mapped); read from /proc, since ``getrusage`` of a child keeps the
        forking parent's peak across exec."""
        return process_memory(self.pid)

    def soak(self, rgb: np.ndarray, thermal: np.ndarray, seconds: float, rgb_hz: float = 30.0,
             thermal_hz: float = 9.0, sample_s: float = 10.0) -> dict[str, Any]:
        """Publish RGB at ``rgb_hz`` and thermal at ``thermal_hz`` (fresh stamps, thermal stamped like
        the nearest RGB frame) for ``seconds``; sample the node's memory every ``sample_s``."""
        from rgbt_perception.core.image_codec import array_to_image

        rgb_msg, thermal_msg = array_to_image(rgb, "rgb8"), array_to_image(thermal, "mono16")
        for msg in (rgb_msg, thermal_msg):
            msg.header.frame_id = "camera"
        self._arrivals.clear()
        start = time.monotonic()
        next_rgb = next_thermal = next_sample = start
        samples = []
        while (now := time.monotonic()) < start + seconds:
            self.node_process.check_alive("during the soak")
            if now >= next_rgb:
                stamp = self._node.get_clock().now().to_msg()
                rgb_msg.header.stamp = stamp
                self._rgb_pub.publish(rgb_msg)
                next_rgb += 1.0 / rgb_hz
                if now >= next_thermal:
                    thermal_msg.header.stamp = stamp
                    self._thermal_pub.publish(thermal_msg)
                    next_thermal += 1.0 / thermal_hz
            if now >= next_sample:
                samples.append({"t_s": round(now - start, 1), **self.memory()})
                next_sample += sample_s
            self._executor.spin_once(timeout_sec=max(0.0, min(next_rgb, next_sample) - time.monotonic()))
        samples.append({"t_s": round(time.monotonic() - start, 1), **self.memory()})
        outputs = sum(1 for topic, _ in self._arrivals if topic == SEMANTIC)
        rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
        return {"seconds": seconds, "rgb_hz": rgb_hz, "thermal_hz": thermal_hz, "outputs": outputs,
                "output_fps": outputs / seconds if seconds else 0.0, "rss_mb_first": rss[0] if rss else None,
                "rss_mb_last": rss[-1] if rss else None, "rss_mb_max": max(rss) if rss else None,
                "torch_loaded": samples[-1]["torch_loaded"], "samples": samples}

    def _arrived(self, topic: str, msg: Any) -> None:
        self._arrivals[(topic, stamp_to_nanoseconds(msg.header.stamp))] = time.perf_counter()

    def round_trip(self, rgb: np.ndarray, thermal: np.ndarray) -> float | None:
        """Publish one pair (RGB ``HxWx3`` uint8, thermal ``HxW`` uint16), wait for both outputs of
        its stamp; ms, or ``None`` when they did not arrive within the time-out."""
        from rgbt_perception.core.image_codec import array_to_image

        stamp = self._node.get_clock().now().to_msg()
        key = stamp_to_nanoseconds(stamp)
        rgb_msg = array_to_image(rgb, "rgb8")
        thermal_msg = array_to_image(thermal, "mono16")
        for msg in (rgb_msg, thermal_msg):
            msg.header.stamp = stamp
            msg.header.frame_id = "camera"
        self._arrivals.clear()
        started = time.perf_counter()
        self._thermal_pub.publish(thermal_msg)
        self._rgb_pub.publish(rgb_msg)
        wanted = ((SEMANTIC, key), (DETECTIONS, key))
        try:
            self.node_process.wait_until(lambda: all(k in self._arrivals for k in wanted), self.timeout_s,
                                         "replied to the pair", poll=lambda: self._executor.spin_once(timeout_sec=0.01))
        except NodeProcessError as exc:
            if self.node_process.running:  # a time-out: the pair is lost, the node goes on
                self.lost += 1
                return None
            raise BenchError(str(exc)) from None
        self.received += 1
        return (max(self._arrivals[k] for k in wanted) - started) * 1e3
