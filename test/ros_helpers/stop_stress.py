"""Stop the installed rgbt_node at many random moments and count the clean stops (a stress script, not a test).

Each run starts the node (demo weights, CPU) and a camera publisher (RGB 30 Hz + thermal 9 Hz), then
sends SIGINT or SIGTERM at a random moment between the node's start and a few seconds of full flow:
during start-up, the weights load, the first inference, or while frames flow. A stop is clean when
the node exits 0 within 5 s of the signal and its output has no traceback and no rcl error.

    python test/ros_helpers/stop_stress.py --runs 50 --out stop_stress.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from rgbt_perception.evaluation.node_process import signal_and_wait

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FORBIDDEN = ("Traceback", "RCLError", "context is invalid", "Failed to publish", "rcl error")


def one_stop(run: int, latest_s: float, rng: random.Random) -> dict:
    namespace = f"/stress_{run}"
    signum = rng.choice((signal.SIGINT, signal.SIGTERM))
    moment = rng.uniform(0.0, latest_s)
    executable = os.path.join(REPO, "install", "rgbt_perception", "lib", "rgbt_perception", "rgbt_node")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    with tempfile.TemporaryFile("w+") as log:
        # As a terminal or ros2 launch starts it: a shell running this script in the background
        # passes SIGINT on as ignored, and the node (rightly) keeps an ignored signal ignored.
        node = subprocess.Popen([executable, "--ros-args", "-r", f"__ns:={namespace}", "-p", "device:=cpu"],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        publisher = subprocess.Popen([sys.executable, os.path.join(HERE, "camera_publisher.py"), "--namespace",
                                      namespace, "--rgb-size", "480x640", "--thermal-size", "512x640",
                                      "--phases", f"live:{latest_s + 10:.0f}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        log.seek(0)
        phase = "flowing" if "active:" in log.read() else "start-up"
        sent = time.monotonic()
        code = signal_and_wait(node, signum, 30)
        elapsed = time.monotonic() - sent
        publisher.kill()
        publisher.wait()
        log.seek(0)
        output = log.read()
    found = [words for words in FORBIDDEN if words in output]
    clean = code == 0 and elapsed <= 5.0 and not found
    return {"run": run, "signal": signal.Signals(signum).name, "moment_s": round(moment, 2), "phase": phase,
            "exit": code, "stop_s": round(elapsed, 2), "found": found, "clean": clean,
            "output_tail": "" if clean else output[-2000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="stops to try (default 50)")
    parser.add_argument("--latest", type=float, default=12.0,
                        help="latest signal moment after the node's start, seconds (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments (default 0)")
    parser.add_argument("--out", default=None, help="write every run as JSON here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    runs = []
    for run in range(args.runs):
        result = one_stop(run, args.latest, rng)
        runs.append(result)
        print(f"{run + 1}/{args.runs}: {result['signal']} at {result['moment_s']} s ({result['phase']}): exit "
              f"{result['exit']} after {result['stop_s']} s, {'clean' if result['clean'] else 'NOT clean'}", flush=True)
    clean = sum(r["clean"] for r in runs)
    flowing = sum(r["phase"] == "flowing" for r in runs)
    print(f"{clean} of {len(runs)} stops clean ({flowing} while frames flowed, {len(runs) - flowing} during start-up)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"clean": clean, "runs": runs}, handle, indent=1)
    return 0 if clean == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
