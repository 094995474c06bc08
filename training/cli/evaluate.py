"""rgbt-eval: score a weights file on a data-set split with the node's inference engine."""
from __future__ import annotations

import argparse
import json
import sys

from rgbt_perception.core.defaults import BACKEND_CHOICES, MAP_SCORE_THRESHOLD, RUN_INPUTS
from rgbt_perception.io.console import console_script


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-eval",
        description="Evaluate weights on one split of a data set through InferenceEngine (the engine rgbt_node "
        "uses). Writes metrics.json, report.md (naming the split), confusion_matrix.png and overlays/ to --out. "
        "Select models on --split val; report final numbers on --split test.",
    )
    parser.add_argument("--weights", help="weights file (.safetensors from rgbt-export)")
    parser.add_argument("--data-root", help="data set folder")
    parser.add_argument("--dataset", help="data set kind (training.datasets.registry), e.g. mfnet, pst900, fmb, "
                        "folder, synthetic, or the box-only llvip, flir_aligned, m3fd, kaist")
    parser.add_argument("--split", help="split to score (val or test)")
    parser.add_argument("--out", help="report folder (created if missing)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                        help="inference backend: torch, onnxruntime, tensorrt or auto (default torch)")
    parser.add_argument("--modalities", choices=RUN_INPUTS,
                        help="inputs given to the model (default: those it was trained with)")
    parser.add_argument("--max-samples", type=int, default=0, help="score only the first N frames (0 = all)")
    parser.add_argument("--overlays", type=int, default=4, help="number of overlay PNGs to write (default 4)")
    parser.add_argument("--score-threshold", type=float, default=MAP_SCORE_THRESHOLD,
                        help=f"box score threshold for mAP (default {MAP_SCORE_THRESHOLD})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--compare", nargs="+", metavar="NAME=DIR",
                        help="instead of evaluating, print markdown tables of earlier --out folders: mIoU and "
                        "box mAP overall and per condition, IoU per class (box mAP and MR^-2 alone for box-only "
                        "data sets), "
                        "e.g. --compare fused=eval/a rgb=eval/b")
    return parser


@console_script
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        pairs = [item.split("=", 1) for item in args.compare]
        if any(len(p) != 2 for p in pairs):
            parser.error("--compare takes NAME=DIR items")
        from training.evaluate import comparison_table

        try:
            print(comparison_table([(name, folder) for name, folder in pairs]), end="")
        except ValueError as err:
            print(f"rgbt-eval: error: {err}", file=sys.stderr)
            return 2
        return 0
    missing = [f"--{k.replace('_', '-')}" for k in ("weights", "data_root", "dataset", "split", "out")
               if not getattr(args, k)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    from training.evaluate import evaluate_weights

    try:
        metrics = evaluate_weights(args.weights, args.data_root, args.dataset, args.split, args.out,
                                   device=args.device, modalities=args.modalities, backend=args.backend,
                                   num_overlays=args.overlays,
                                   max_samples=args.max_samples, score_threshold=args.score_threshold,
                                   progress=not args.no_progress)
    except (ValueError, OSError, KeyError) as err:
        print(f"rgbt-eval: error: {err}", file=sys.stderr)
        return 2
    seg = (metrics["segmentation"] or {}).get("overall")
    det = metrics["detection"]["overall"]
    summary = {"split": metrics["split"], "map_50": det["map_50"], "map_50_95": det["map_50_95"]}
    if seg is not None:
        summary.update(miou=seg["miou"], miou_no_bg=seg["miou_no_bg"], macc=seg["macc"])
    miss = (metrics.get("miss_rate") or {}).get("subsets", {})
    summary.update({f"mr_{name}": scores["mr"] for name, scores in miss.items()})
    print(json.dumps(summary))
    text = f"{args.dataset} split {metrics['split']}: "
    if seg is not None:
        text += f"mIoU {_percent(seg['miou'])} (w/o background {_percent(seg['miou_no_bg'])}), "
    text += f"mAP@0.5 {_percent(det['map_50'])}, mAP@0.5:0.95 {_percent(det['map_50_95'])}"
    text += "".join(f", MR^-2 {name} {_percent(scores['mr'])}" for name, scores in miss.items())
    print(f"{text}; report in {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
