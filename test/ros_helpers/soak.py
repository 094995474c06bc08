"""Soak the installed node for a long run with injected faults (a benchmark, not a test).

RGB 1280x720 at 30 Hz and 640x512 mono16 thermal at 9 Hz over DDS (Fast DDS large-frames
profile), in blocks of 60 s: live 40 s, thermal silent 5 s, live 5 s, stamps jumping back 5 s,
garbage messages 5 s. Every ``--stop-every`` seconds the node is frozen with SIGSTOP for 3 s. The
node's engine raises an injected fault on every ``--fault-every``-th frame. RSS of the node and its
latency (status p50/p95) are sampled over time; at the end the counters must add up:
``pairs_formed == frames_processed + pairs_dropped``, and every message published is accepted or
rejected by the node.

    python test/ros_helpers/soak.py --minutes 30 --out soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BLOCK = "live:40,thermal_off:5,live:5,jump:5,bad:5"  # 60 s
NAMESPACE = "/soak"


class InjectedFault(RuntimeError):
    """The soak's stand-in for a device fault."""


def serve_node(fault_every: int, ros_args: list[str]) -> int:
    """Child mode: the node, its engine raising :class:`InjectedFault` on every ``fault_every``-th frame."""
    import rgbt_perception.backends.factory as factory
    from rgbt_perception.node import perception_node

    make = factory.create_engine

    def create_engine(*args, **kwargs):
        engine = make(*args, **kwargs)
        infer = engine.infer
        calls = [0]

        def faulty_infer(*a, **k):
            calls[0] += 1
            if fault_every and calls[0] % fault_every == 0:
                raise InjectedFault(f"injected fault at frame {calls[0]}")
            return infer(*a, **k)

        engine.infer = faulty_infer
        return engine

    factory.create_engine = create_engine
    return perception_node.main(["rgbt_node", *ros_args])


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return None


def listen(samples: list, diagnostics: list, stop: threading.Event) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rgbt_msgs.msg import PerceptionStatus

    rclpy.init()
    node = rclpy.create_node("soak_listener")
    node.create_subscription(PerceptionStatus, f"{NAMESPACE}/status",
                             lambda m: samples.append((time.monotonic(), m)), 10)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diagnostics.append({kv.key: kv.value for kv in m.status[0].values}), 10)
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=0.2)
    node.destroy_node()
    rclpy.try_shutdown()


def windows(series: list[tuple[float, float]], start: float, minutes: float, width_min: float = 5.0) -> list:
    rows = []
    edge = 0.0
    while edge < minutes:
        values = [v for t, v in series if start + edge * 60 <= t < start + (edge + width_min) * 60 and v is not None]
        if values:
            values.sort()
            rows.append({"from_min": edge, "n": len(values), "median": values[len(values) // 2], "max": values[-1]})
        edge += width_min
    return rows


def run(args: argparse.Namespace) -> dict:
    profile = os.path.join(REPO, "config", "fastdds_large_frames.xml")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
               FASTRTPS_DEFAULT_PROFILES_FILE=profile, FASTDDS_DEFAULT_PROFILES_FILE=profile)
    log = open(args.log, "w")
    node = subprocess.Popen([sys.executable, __file__, "--serve-node", "--fault-every", str(args.fault_every), "--",
                             "--ros-args", "-r", f"__ns:={NAMESPACE}", "-p", "device:=cpu",
                             "-p", "qos.reliability:=reliable", "-p", "status_period:=1.0"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    samples: list = []
    diagnostics: list = []
    stop = threading.Event()
    listener = threading.Thread(target=listen, args=(samples, diagnostics, stop), daemon=True)
    listener.start()
    deadline = time.monotonic() + 120
    while "active:" not in open(args.log).read():
        if time.monotonic() > deadline or node.poll() is not None:
            raise SystemExit("the node did not start; see " + args.log)
        time.sleep(0.5)
    blocks = max(1, int(round(args.minutes)))
    publisher = subprocess.Popen([sys.executable, os.path.join(HERE, "camera_publisher.py"), "--namespace", NAMESPACE,
                                  "--rgb-size", "720x1280", "--thermal-size", "512x640",
                                  "--phases", ",".join([BLOCK] * blocks)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    start = time.monotonic()
    memory: list[tuple[float, float | None]] = []
    next_stop = start + args.stop_every
    while publisher.poll() is None:
        memory.append((time.monotonic(), rss_mb(node.pid)))
        if time.monotonic() >= next_stop:
            node.send_signal(signal.SIGSTOP)
            time.sleep(3.0)
            node.send_signal(signal.SIGCONT)
            next_stop += args.stop_every
        time.sleep(10.0)
    published = json.loads(publisher.stdout.read().strip().splitlines()[-1])["published"]
    time.sleep(15.0)  # the last frames drain and a status goes out
    node.send_signal(signal.SIGINT)
    code = node.wait(timeout=30)
    stop.set()
    listener.join(timeout=5)
    last = samples[-1][1] if samples else None
    output = open(args.log).read()
    counters = {} if last is None else {
        "pairs_formed": last.pairs_formed, "frames_processed": last.frames_processed,
        "pairs_dropped": last.pairs_dropped, "inputs_rejected": last.inputs_rejected}
    values = diagnostics[-1] if diagnostics else {}
    accepted = {camera: int(values.get(f"{camera}_frames_accepted", 0)) for camera in ("rgb", "thermal")}
    return {
        "minutes": args.minutes, "accepted": accepted,
        "failed_inferences": int(values.get("failed_inferences", 0)),
        "sync_restarts": int(values.get("sync_restarts", 0)), "fault_every": args.fault_every,
        "published": published, "counters": counters,
        "counters_add_up": bool(counters) and counters["pairs_formed"] == counters["frames_processed"]
        + counters["pairs_dropped"],
        "injected_faults_logged": output.count("InjectedFault"),
        "rss_mb": windows(memory, start, args.minutes),
        "latency_p95_ms": windows([(t, m.latency_ms_p95) for t, m in samples if m.frames_processed], start,
                                  args.minutes),
        "latency_p50_ms": windows([(t, m.latency_ms_p50) for t, m in samples if m.frames_processed], start,
                                  args.minutes),
        "exit": code, "traceback": "Traceback" in output,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve-node":
        split = argv.index("--")
        return serve_node(int(argv[argv.index("--fault-every") + 1]), argv[split + 1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length in minutes (blocks of 60 s)")
    parser.add_argument("--fault-every", type=int, default=500, help="an engine fault every N frames (0: none)")
    parser.add_argument("--stop-every", type=float, default=300.0, help="SIGSTOP the node for 3 s every N seconds")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of the node")
    parser.add_argument("--log", default="soak_node.log", help="the node's output")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    result = run(parser.parse_args(argv))
    print(json.dumps(result, indent=1))
    if parser.parse_args(argv).out:
        with open(parser.parse_args(argv).out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0 if result["counters_add_up"] and result["exit"] == 0 and not result["traceback"] else 1


if __name__ == "__main__":
    sys.exit(main())
