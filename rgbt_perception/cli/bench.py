"""rgbt-bench: how close the inference engine and the node come to the bare network's cost.

One run measures, per model variant and on the same inputs,

1. the bare fused network forward (both modalities, already preprocessed tensors on the device),
2. the inference engine end to end (registration, preprocessing, forward, post-processing),
3. the node end to end over DDS (the real ``rgbt_node`` executable in a child process: publish
   an RGB + thermal pair, wait for ``semantic`` and ``detections`` of that stamp),

with the iterations of (1), (2) and (3) interleaved so machine noise affects them alike. It
prints and stores the ratios (2)/(1) and (3)/(1), frames per second, latency p50/p95, peak RSS
and peak GPU memory, a scaling table (resolution x model size), the gain of each speed-up step
(channels_last, autocast, torch.compile, CUDA graphs, batching the modalities) and, on request,
an ONNX export with its onnxruntime parity.

The results are written between two marker lines of a Markdown file (``--out``), so the prose
around them survives re-runs, and as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from rgbt_perception.bench.settings import DEFAULT_VARIANTS, STEP_NAMES, BenchError, BenchSettings, settings_from_args

# Standard library only: the measuring parts load inside main, once the options are valid.
from rgbt_perception.core.defaults import BACKEND_CHOICES
from rgbt_perception.io.console import console_script


def build_parser() -> argparse.ArgumentParser:
    """The options of ``rgbt-bench`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="rgbt-bench",
        description=(
            "Measure the bare network, the inference engine and the node end to end in one run "
            "(interleaved), a resolution/model-size scaling table and the gain of each speed-up; "
            "write the results to a Markdown file and JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated model variants (micro, tiny, small, base_plus, large)")
    parser.add_argument("--weights", help="measure this node weights file instead of randomly initialised variants")
    parser.add_argument("--size", default="480x640", help="frame size HEIGHTxWIDTH of the main measurement")
    parser.add_argument("--iters", type=int, default=20, help="measured iterations per variant")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured iterations first")
    parser.add_argument("--variant-budget", type=float, default=120.0, dest="variant_budget_s",
                        help="seconds of measuring per variant after which fewer iterations are taken (at least 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),  # explicit: measured as asked
                        help="compute precision (autocast) of network and engine")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the harness and the node (0: torch's default)")
    parser.add_argument("--channels-last", action="store_true", help="network in channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (slow start)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the forward as a CUDA graph (cuda only)")
    parser.add_argument("--node", action="store_true",
                        help="also measure the rgbt_node executable end to end over DDS (needs ROS 2)")
    parser.add_argument("--node-variant", default="micro", help="variant whose weights the node runs")
    parser.add_argument("--node-timeout", type=float, default=30.0, dest="node_timeout_s",
                        help="seconds to wait for the node's start and for each reply")
    parser.add_argument("--scaling", action="store_true",
                        help="network cost against resolution (240x320, 480x640, 720x1280) and variant")
    parser.add_argument("--scaling-iters", type=int, default=3, help="measured iterations per scaling cell")
    parser.add_argument("--steps", nargs="?", const=",".join(STEP_NAMES), default="",
                        help="measure the gain of each speed-up step in turn (comma-separated subset of "
                        f"{','.join(STEP_NAMES)}; steps that do not apply to the device are skipped)")
    parser.add_argument("--steps-variant", default="micro", help="variant of the speed-up steps")
    parser.add_argument("--export-onnx", metavar="FILE",
                        help="export the first variant at --size to ONNX, check parity and time onnxruntime")
    parser.add_argument("--out", help="Markdown file whose results section is (re)written, e.g. docs/benchmarks.md")
    parser.add_argument("--json", help="write all numbers to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and frames")
    parser.add_argument("--flops", action="store_true",
                        help="only count FLOPs of one fused forward per variant at --size (trunk and the rest), "
                        "print them as a Markdown table (and --json), no timing")
    parser.add_argument("--smoke", action="store_true",
                        help="quick check of the harness: micro, 64x96, 2 iterations, no node, no scaling")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                        help="inference backend of the engine (2) and the node (3); (1) is then that backend's "
                        "bare network run")
    parser.add_argument("--ladder", action="store_true",
                        help="instead of the measurements above: the engine end to end of the first variant for "
                        "each speed-up step in turn (unmerged LoRA, merged, one trunk pass, onnxruntime, bf16), "
                        "each in its own process, interleaved; with --baseline-tree an older engine first")
    parser.add_argument("--baseline-tree", metavar="DIR",
                        help="with --ladder: a source tree (e.g. `git archive COMMIT | tar -x -C DIR`) whose engine "
                        "is measured as the first step")
    parser.add_argument("--agreement", metavar="DATA_ROOT",
                        help="instead of timing: run --weights on a split of an MFNet-layout data set with the torch "
                        "fp32 engine and with onnxruntime (and bf16 where the CPU has it); print the share of equal "
                        "mask pixels")
    parser.add_argument("--agreement-split", default="val", help="split of --agreement (default val)")
    parser.add_argument("--soak", type=float, default=0.0, dest="soak_s", metavar="SECONDS",
                        help="with --node: afterwards feed the node 30 Hz RGB + 9 Hz thermal for SECONDS and "
                        "sample its resident memory")
    parser.add_argument("--dds-delivery", action="store_true",
                        help="instead of the measurements above: frames DDS delivers at camera sizes with and without "
                        "config/fastdds_large_frames.xml; the other options go to python -m "
                        "rgbt_perception.bench.dds_delivery (see its --help)")
    return parser


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    """``rgbt-bench``: 0 on success, 2 for a bad option, 1 for a failed run, 130 when interrupted."""
    given = list(sys.argv[1:] if argv is None else argv)
    if "--dds-delivery" in given:
        from rgbt_perception.bench.dds_delivery import main as dds_delivery

        return dds_delivery([a for a in given if a != "--dds-delivery"])
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "rgbt-bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from_args(args)
        if args.flops:
            return _flops(settings, command.strip(), args.json)
        if args.agreement:
            return _agreement(args, command.strip())
        if settings.ladder:
            from rgbt_perception.bench.ladder import run_ladder_command

            return run_ladder_command(settings, command.strip(), args.json)
        # Loaded only now, so --help and bad options answer without torch.
        from rgbt_perception.bench.render import print_summary
        from rgbt_perception.bench.run import run, write_outputs

        results = run(settings, command.strip(), lambda partial: write_outputs(partial, args.out, args.json))
        write_outputs(results, args.out, args.json)
    except BenchError as exc:
        print(f"rgbt-bench: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"rgbt-bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rgbt-bench: interrupted (finished phases are written)", file=sys.stderr)
        return 130
    print_summary(results)
    for path in (args.out, args.json):
        if path:
            print(f"results written to {path}")
    return 0


def _agreement(args: argparse.Namespace, command: str) -> int:
    """``--agreement``: mask agreement of the faster settings with torch fp32 on a data split."""
    import json

    from rgbt_perception.bench.agreement import measure_agreement, render_agreement

    if not args.weights:
        raise BenchError("--agreement needs --weights (a trained weights file)")
    results = measure_agreement(args.weights, args.agreement, args.agreement_split)
    results["command"] = command
    print(render_agreement(results), end="")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"results written to {args.json}")
    return 0


def _flops(settings: BenchSettings, command: str, json_path: str | None) -> int:
    """``--flops``: the trunk/rest table per variant on stdout (and as JSON)."""
    import json

    from rgbt_perception.bench.flops import measure_flops, render_flops
    from rgbt_perception.bench.settings import network_input_size

    rows = measure_flops(settings.variants, network_input_size(settings.size), settings.seed)
    print(render_flops(rows, command), end="")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"command": command, "flops": rows}, handle, indent=2)
        print(f"results written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
