"""rgbt-train: supervised training of the RGB-T network from a YAML config (torchrun for DDP)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from rgbt_perception.core.defaults import RUN_INPUTS, WEIGHT_STORAGES
from rgbt_perception.io.console import console_script
from training.config_file import read_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-train",
        description="Train RGBTNet (frozen SAM2 Hiera + LoRA, fusion, semantic/box heads) from a YAML config "
        "under config/train/. The best checkpoint is selected on the validation split (data.val_split). "
        "Before the first step it prints what will train (parameters per part, the SAM2 file and the trunk tensors "
        "it gave). Multi-GPU: torchrun --nproc_per_node N $(which rgbt-train) --config ...; N machines x M GPUs: "
        "torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id RUN "
        "$(which rgbt-train) ... on every machine (docs/training.md).",
    )
    parser.add_argument("--config", required=True, help="training YAML (e.g. config/train/synthetic_micro.yaml)")
    parser.add_argument("--data-root", help="data set folder (overrides data.root)")
    parser.add_argument("--out", help="run folder for logs and checkpoints (overrides out_dir)")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides epochs)")
    parser.add_argument("--modalities", dest="run_inputs", choices=RUN_INPUTS,
                        help="train a fused or single-modality model (overrides run_inputs)")
    parser.add_argument("--init", metavar="ADAPTERS",
                        help="start from the adapters file of rgbt-pretrain (overrides init.adapters)")
    parser.add_argument("--init-sam2", metavar="CHECKPOINT",
                        help="published SAM2 weights for the trunk: Meta's .pt or timm's .safetensors "
                        "(overrides init.sam2)")
    parser.add_argument("--resume", help="continue from a checkpoint (e.g. RUN/last.pt)")
    parser.add_argument("--export", help="write the node weights file from the best checkpoint at the end "
                        "(overrides export)")
    parser.add_argument("--export-storage", choices=WEIGHT_STORAGES,
                        help="tensor storage of --export (overrides export_storage; default fp32)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=2e-4 --set data.batch_size=4")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _train_config(values: dict[str, Any]) -> Any:
    """``TrainConfig`` from the YAML values; imported here because it loads torch (through the losses)."""
    from training.config import TrainConfig

    return TrainConfig.from_dict(values)


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for key, value in (("data.root", args.data_root), ("out_dir", args.out), ("epochs", args.epochs),
                       ("run_inputs", args.run_inputs), ("init.adapters", args.init),
                       ("init.sam2", args.init_sam2), ("export", args.export),
                       ("export_storage", args.export_storage)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        # As training.config.load_config, but the file is read before torch loads: a missing or
        # broken config is reported at once.
        cfg = read_config(args.config, overrides, _train_config)
        if not cfg.data.root:
            raise ValueError("no data set folder: set data.root in the config or pass --data-root")
        if not os.path.isdir(cfg.data.root):
            raise ValueError(f"data set folder not found: {cfg.data.root}")
        from training.engine import Trainer

        command = " ".join(shlex.quote(a) for a in ["rgbt-train"] + (sys.argv[1:] if argv is None else argv))
        trainer = Trainer(cfg, resume=args.resume, show_progress=not args.no_progress, command_line=command)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
    except (ValueError, OSError, KeyError, FloatingPointError) as err:
        print(f"rgbt-train: error: {err}", file=sys.stderr)
        return 2
    if trainer.dist.is_main:
        metric = {"miou": "mIoU", "map_50": "mAP@0.5"}[summary["select_on"]]
        print(f"best val ({cfg.data.val_split}) {metric} {100 * summary['best_score']:.2f} at epoch "
              f"{summary['best_epoch']}; checkpoints in {cfg.out_dir}"
              + (f"; weights {summary['export']}" if "export" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
