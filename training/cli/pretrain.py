"""rgbt-pretrain: label-free adaptation (pccl or cmss-mim) from unlabelled RGB-T pairs."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from rgbt_perception.io.console import console_script
from training.config_file import read_config
from training.pretrain.methods import METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbt-pretrain",
        description="Adapt the LoRA adapters (and, for cmss-mim, necks and fusion) of RGBTNet from unlabelled "
        "aligned RGB-T pairs: a data set (labels ignored), a folder with rgb/ and thermal/, or rosbag2 "
        "recordings. Writes an adapters .safetensors for rgbt-train (init.adapters). See docs/pretraining.md. "
        "Multi-GPU: torchrun --nproc_per_node N $(which rgbt-pretrain) --config ...",
    )
    parser.add_argument("--config", required=True, help="pretraining YAML (e.g. config/train/pretrain_pccl.yaml)")
    parser.add_argument("--method", choices=METHODS, help="objective (overrides method)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bag", nargs="+", metavar="BAG", help="read pairs from these rosbag2 recordings")
    source.add_argument("--folder", metavar="DIR", help="read pairs from DIR/rgb and DIR/thermal")
    source.add_argument("--data-root", metavar="DIR", help="data set folder of the configured layout (data.root)")
    parser.add_argument("--homography", help="thermal->RGB homography file for --bag/--folder pairs")
    parser.add_argument("--out", help="run folder for logs and checkpoints (overrides out_dir)")
    parser.add_argument("--output", help="adapters file to write (default OUT/adapters.safetensors)")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides epochs)")
    parser.add_argument("--resume", help="continue from a checkpoint (e.g. RUN/last.pt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set pccl.threshold=0.5 --set batch_size=4")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _pretrain_config(values: dict[str, Any]) -> Any:
    """``PretrainConfig`` from the YAML values; imported here because the pretraining loop loads torch."""
    from training.pretrain.loop import PretrainConfig

    return PretrainConfig.from_dict(values)


@console_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.bag:
        overrides += ["data.kind=bag", f"data.bags=[{', '.join(repr(b) for b in args.bag)}]"]
    elif args.folder:
        overrides += ["data.kind=folder", f"data.root={args.folder!r}"]
    elif args.data_root:
        overrides += ["data.kind=dataset", f"data.root={args.data_root!r}"]
    for key, value in (("method", args.method), ("out_dir", args.out), ("output", args.output),
                       ("epochs", args.epochs), ("data.homography", args.homography)):
        if value is not None:
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    try:
        # As training.pretrain.loop.load_pretrain_config, but the file is read before torch loads:
        # a missing or broken config is reported at once.
        cfg = read_config(args.config, overrides, _pretrain_config)
        from training.pretrain.loop import Pretrainer

        trainer = Pretrainer(cfg, resume=args.resume, show_progress=not args.no_progress)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
    except (ValueError, OSError, KeyError, RuntimeError, FloatingPointError) as err:
        print(f"rgbt-pretrain: error: {err}", file=sys.stderr)
        return 2
    if trainer.dist.is_main:
        history = summary["history"]
        losses = (f"loss {history[0]['train_total']:.4f} -> {history[-1]['train_total']:.4f}" if history
                  else "no epoch run")
        outputs = "; ".join(f"{k} {summary[k]}" for k in ("adapters", "weights") if k in summary)
        print(f"{cfg.method} on {len(trainer.pairs)} pairs: {losses}; checkpoints in {cfg.out_dir}"
              + (f"; {outputs}" if outputs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
