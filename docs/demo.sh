#!/usr/bin/env bash
# `make demo`: synthetic road scenes -> a rosbag2 recording -> live replay through the real
# rgbt_node with the shipped weights -> report. Runs inside the activated environment
# (the Makefile sources .venv and install/setup.bash). Everything goes to ./demo_out/.
#
# Knobs (environment): DEMO_OUT (default demo_out), DEMO_WEIGHTS (default the shipped
# micro_synthetic weights), DEMO_FRAMES (scenes, default 300), DEMO_RATE (playback speed, default 1),
# DEMO_DEVICE (auto, cpu, cuda; default auto), DEMO_SIZE / DEMO_THERMAL_SIZE (default 240x320 / 120x160),
# DEMO_FASTDDS_PROFILE (default config/fastdds_large_frames.xml; empty = Fast DDS defaults).
set -euo pipefail

OUT=${DEMO_OUT:-demo_out}
WEIGHTS=${DEMO_WEIGHTS:-rgbt_perception/data/micro_synthetic.safetensors}
FRAMES=${DEMO_FRAMES:-300}
RATE=${DEMO_RATE:-1.0}
DEVICE=${DEMO_DEVICE:-auto}
# A domain of its own, so the demo never talks to another graph on this machine.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 101 ))}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Camera-size frames over DDS (docs/node.md, "Large frames"): the bag player and the node share the
# project's Fast DDS profile. Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_..., Fast DDS 3 FASTDDS_...
PROFILE=${DEMO_FASTDDS_PROFILE-config/fastdds_large_frames.xml}
if [[ -n "$PROFILE" ]]; then
    if [[ ! -f "$PROFILE" ]]; then
        echo "demo: Fast DDS profile $PROFILE is missing (set DEMO_FASTDDS_PROFILE='' for Fast DDS defaults)" >&2
        exit 1
    fi
    case "${ROS_DISTRO:-}" in
        humble|iron|jazzy) export FASTRTPS_DEFAULT_PROFILES_FILE="$(realpath "$PROFILE")" ;;
        *) export FASTDDS_DEFAULT_PROFILES_FILE="$(realpath "$PROFILE")" ;;
    esac
fi

if [[ ! -f "$WEIGHTS" ]]; then
    echo "demo: weights file $WEIGHTS is missing (set DEMO_WEIGHTS to a .safetensors file made by rgbt-export)" >&2
    exit 1
fi
for tool in rgbt-synth rgbt-make-bag rgbt-eval-bag; do
    if ! command -v "$tool" >/dev/null; then
        echo "demo: $tool not found; run 'make setup' and source .venv/bin/activate and install/setup.bash" >&2
        exit 1
    fi
done

start=$(date +%s)
# Scenes rendered like the shipped weights' training data (docs/training.md): RGB 240x320,
# thermal at half of it, as on the rig.
SIZE=${DEMO_SIZE:-240x320}
THERMAL_SIZE=${DEMO_THERMAL_SIZE:-120x160}

rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/3 synthetic scenes: $FRAMES at $SIZE (thermal $THERMAL_SIZE)"
rgbt-synth --out "$OUT/synth" --num-train 0 --num-val "$FRAMES" --num-test 0 --seed 7 \
    --size "$SIZE" --thermal-size "$THERMAL_SIZE"
echo "== 2/3 recording: RGB 30 Hz, thermal 8.7 Hz arriving 150 ms late"
rgbt-make-bag --dataset synthetic --root "$OUT/synth" --split val --out "$OUT/drive_bag" \
    --rgb-rate 30 --thermal-rate 8.7 --thermal-delay 0.15 --jitter-ms 3
echo "== 3/3 live replay through rgbt_node (weights $WEIGHTS, device $DEVICE)"
rgbt-eval-bag "$OUT/drive_bag" --weights "$WEIGHTS" --out "$OUT/report" --live --rate "$RATE" --device "$DEVICE"

echo "demo finished in $(( $(date +%s) - start )) s"
echo "report: $(cd "$OUT/report" && pwd)/report.md"
