"""Label-efficiency experiment of label-free adaptation on the synthetic world.

Arms, all with the same seeds and the same 10 % of the training labels:

* ``finetune``: supervised fine-tuning alone (``rgbt-train`` engine);
* ``<method>+finetune``: ``rgbt-pretrain`` on every training pair without labels, then the same
  fine-tuning started from its adapters (``init.adapters``);
* RGB retention: ``pccl`` applied to the fine-tuned model (``init.weights``; its RGB path is the
  teacher), RGB-only mIoU after over before;
* with ``--chain``: fine-tuning again from the adapters after that ``pccl`` step, against
  fine-tuning again from the adapters before it (same labels, same schedule).

Each model is scored on the test split thermal-only, fused and RGB-only, overall and per
condition. Writes ``results.json``, ``results.md`` and ``label_efficiency.png`` to ``--out``::

    python -m training.pretrain.experiment --out runs/pretrain_experiment
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rgbt_perception.io.console import console_script

SCORED_MODALITIES = ("thermal", "both", "rgb")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/pretrain_experiment", help="output folder")
    parser.add_argument("--data", default="", help="existing rgbt-synth folder (default: generate into OUT/data)")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                        help="RGB and model input size")
    parser.add_argument("--thermal-size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=16,
                        help="validation frames (the split is required; not used to select)")
    parser.add_argument("--num-test", type=int, default=120)
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of training labels used")
    parser.add_argument("--finetune-epochs", type=int, default=150)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--retention-epochs", type=int, default=4)
    parser.add_argument("--methods", nargs="*", default=["cmss-mim", "pccl"],
                        help="pretraining methods to compare (none: fine-tuning only)")
    parser.add_argument("--pccl-teacher", default="trunk", choices=("trunk", "rgb"),
                        help="pccl teacher of the pretraining arms (random-LoRA start: both are the trunk)")
    parser.add_argument("--retention-teacher", default="rgb", choices=("trunk", "rgb"),
                        help="pccl teacher of the retention run (rgb: the fine-tuned RGB path, frozen)")
    parser.add_argument("--pccl-rgb-loss", default="gram",
                        help="pccl.rgb_loss of every pccl run: gram, feature or attention (default gram)")
    parser.add_argument("--cmss-modality-drop", type=float, default=0.0,
                        help="cmss.modality_drop of the cmss-mim arm (share of single-modality samples)")
    parser.add_argument("--chain", action="store_true",
                        help="also fine-tune again after the retention pccl run, against fine-tuning again without it")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the fine-tuning-alone arm (run it in another process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def finetune(args: argparse.Namespace, name: str, data_root: str, adapters: str = "") -> str:
    """Supervised training with ``args.fraction`` of the labels; returns the exported weights file."""
    from training.config import TrainConfig
    from training.engine import Trainer

    out_dir = os.path.join(args.out, name)
    weights = os.path.join(out_dir, "model.safetensors")
    if os.path.isfile(weights):
        return weights
    cfg = TrainConfig.from_dict({
        "name": name, "out_dir": out_dir,
        "model": {"variant": "micro", "input_size": list(args.size)},
        "data": {"dataset": "synthetic", "root": data_root, "train_split": "train", "val_split": "val",
                 "train_fraction": args.fraction, "batch_size": 4, "num_workers": 0,
                 "augment": {"scale_range": [0.75, 1.25]}},
        "optim": {"lr": 1e-3, "warmup_iters": 20},
        "loss": {"lang": 0.0},
        "init": {"adapters": adapters},
        "epochs": args.finetune_epochs, "seed": args.seed, "device": "cpu", "modality_dropout": 0.3,
        "eval_every": 0, "log_every": 10, "threads": args.threads, "export": weights,
    })
    trainer = Trainer(cfg, show_progress=True)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return weights


def pretrain(args: argparse.Namespace, name: str, method: str, data_root: str, epochs: int,
             init_weights: str = "", teacher: str = "trunk", modality_drop: float = 0.0) -> dict[str, Any]:
    """Label-free adaptation on all training pairs; returns the run summary."""
    from training.pretrain.loop import PretrainConfig, Pretrainer

    out_dir = os.path.join(args.out, name)
    cfg = PretrainConfig.from_dict({
        "name": name, "out_dir": out_dir, "method": method,
        "model": {"variant": "micro", "input_size": list(args.size)},
        "data": {"kind": "dataset", "dataset": "synthetic", "root": data_root, "split": "train"},
        "init": {"weights": init_weights},
        "pccl": {"teacher": teacher, "rgb_loss": args.pccl_rgb_loss},
        "cmss": {"modality_drop": modality_drop},
        "epochs": epochs, "batch_size": 8, "lr": 5e-4, "warmup_iters": 20, "seed": args.seed, "device": "cpu",
        "threads": args.threads, "augment": {"scale_range": [0.75, 1.25]},
        "output_weights": os.path.join(out_dir, "model.safetensors") if init_weights else "",
    })
    done = os.path.join(out_dir, "summary.json")
    if os.path.isfile(done):
        with open(done) as handle:
            return json.load(handle)
    trainer = Pretrainer(cfg, show_progress=True)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    with open(done, "w") as handle:
        json.dump(summary, handle, indent=1)
    return summary


def adapters_of(weights: str, path: str) -> str:
    """The LoRA adapters and trunk of a weights file as an adapters file (the control arm's start)."""
    from rgbt_perception.io.weights import load_weights
    from training.pretrain.adapters import save_adapters

    if not os.path.isfile(path):
        model, _ = load_weights(weights)
        save_adapters(path, model, ["lora", "trunk"], method="finetune", epochs=0, data=weights,
                      model_config=model.cfg.to_dict(), trunk=f"weights:{weights}")
    return path


def score(weights: str, data_root: str, out_dir: str, modalities: str) -> dict[str, Any]:
    """mIoU (overall and per condition) of ``weights`` on the test split with ``modalities`` only."""
    from training.evaluate import evaluate_weights

    report = evaluate_weights(weights, data_root, "synthetic", "test", out_dir, device="cpu", modalities=modalities,
                              num_overlays=0, progress=False)
    segmentation = report.get("segmentation", report)
    out = {"overall": segmentation["overall"]["miou"]}
    for condition, values in segmentation.get("conditions", {}).items():
        out[condition] = values["miou"]
    return out


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1, sort_keys=True)
    lines = [f"Test split of the synthetic world ({args.num_test} frames, {args.size[0]}x{args.size[1]}), "
             f"micro model, {int(round(args.fraction * 100))} % of {args.num_train} training labels, "
             f"seed {args.seed}.", "",
             "| arm | thermal-only mIoU | thermal-only night | fused mIoU | fused night | RGB-only mIoU |",
             "|---|---|---|---|---|---|"]
    for arm, scores in results["arms"].items():
        cells = [arm]
        for modality, key in (("thermal", "overall"), ("thermal", "night"), ("both", "overall"), ("both", "night"),
                              ("rgb", "overall")):
            value = scores.get(modality, {}).get(key)
            cells.append("-" if value is None else f"{100 * value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    retention = results.get("retention")
    if retention:
        lines += ["", f"RGB retention after pccl on the fine-tuned model: "
                      f"RGB-only mIoU {100 * retention['before']:.2f} -> "
                      f"{100 * retention['after']:.2f} ({100 * retention['ratio']:.1f} %)"]
    lines += ["", f"Wall time: {results['seconds'] / 60:.1f} min."]
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    plot(args, results)


def plot(args: argparse.Namespace, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [("thermal", "overall"), ("thermal", "night"), ("both", "overall"), ("both", "night")]
    arms = list(results["arms"])
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, arm in enumerate(arms):
        values = [100 * (results["arms"][arm].get(m, {}).get(k) or 0.0) for m, k in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=arm)
    ax.set_xticks(np.arange(len(groups)) + width * (len(arms) - 1) / 2)
    ax.set_xticklabels([f"{'thermal-only' if m == 'thermal' else 'fused'}\n{k}" for m, k in groups])
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{int(round(args.fraction * 100))} % labels: pretraining + fine-tuning vs fine-tuning alone")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "label_efficiency.png"), dpi=120)
    plt.close(fig)


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    data_root = args.data or os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(data_root, "test.txt")):
        from training.synth.scenes import SynthConfig, generate_dataset

        generate_dataset(data_root, args.num_train, args.num_val, args.num_test, seed=args.seed,
                         cfg=SynthConfig(size=tuple(args.size), thermal_size=tuple(args.thermal_size)))
    results: dict[str, Any] = {"arms": {}, "settings": vars(args)}
    results_path = os.path.join(args.out, "results.json")
    if os.path.isfile(results_path):
        with open(results_path) as handle:
            results["arms"] = json.load(handle).get("arms", {})

    def evaluate_arm(arm: str, weights: str, modalities: tuple[str, ...] = SCORED_MODALITIES) -> None:
        scores = results["arms"].setdefault(arm, {})
        for modality in modalities:
            if modality not in scores:
                scores[modality] = score(weights, data_root, os.path.join(args.out, "eval", arm, modality), modality)
        results["seconds"] = time.time() - started
        write_outputs(args, results)
        print(f"[experiment] {arm}: " + json.dumps(scores), flush=True)

    baseline = ""
    if not args.no_baseline:
        baseline = finetune(args, "finetune", data_root)
        evaluate_arm("finetune", baseline)
    for method in args.methods:
        label = method
        if method == "cmss-mim" and args.cmss_modality_drop > 0:
            label = f"cmss-mim(drop {args.cmss_modality_drop:g})"
        summary = pretrain(args, f"pretrain_{label.replace(' ', '_')}", method, data_root, args.pretrain_epochs,
                           teacher=args.pccl_teacher, modality_drop=args.cmss_modality_drop)
        weights = finetune(args, f"{label}+finetune".replace(" ", "_"), data_root, adapters=summary["adapters"])
        evaluate_arm(f"{label}+finetune", weights)
    if args.retention_epochs > 0 and baseline:
        # pccl on the fine-tuned model: its RGB path is the teacher, the thermal adapter the student.
        summary = pretrain(args, "retention_pccl", "pccl", data_root, args.retention_epochs, init_weights=baseline,
                           teacher=args.retention_teacher)
        evaluate_arm("finetune>pccl", summary["weights"], ("rgb", "thermal", "both"))
        before = results["arms"]["finetune"]["rgb"]["overall"]
        after = results["arms"]["finetune>pccl"]["rgb"]["overall"]
        results["retention"] = {"before": before, "after": after, "ratio": after / before if before else float("nan"),
                                "rgb_feature_cosine": summary["history"][-1].get("rgb_feature_cosine"),
                                "rgb_mask_agreement": summary["history"][-1].get("rgb_mask_agreement")}
        if args.chain:
            # Fine-tune again from the adapters after pccl, against fine-tuning again from the
            # adapters before it: the difference is what the label-free step added.
            control = adapters_of(baseline, os.path.join(args.out, "finetune", "adapters.safetensors"))
            evaluate_arm("finetune>finetune", finetune(args, "finetune_finetune", data_root, adapters=control))
            evaluate_arm("finetune>pccl>finetune",
                         finetune(args, "finetune_pccl_finetune", data_root, adapters=summary["adapters"]))
    results["seconds"] = time.time() - started
    write_outputs(args, results)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
