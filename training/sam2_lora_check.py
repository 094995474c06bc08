"""Frozen trunk + LoRA from SAM2-layout checkpoints: does that path still learn? (``make gpu-check``)

No published SAM2 weights can be fetched where the check runs, so it writes its own SAM2-layout
checkpoints and trains the ``tiny`` variant (SAM2's Hiera-T; ``--variant``) on rgbt-synth scenes, three runs with
the same seed, steps and schedule:

1. ``full``: RGB camera alone, ``trunk: full``, from random weights. Its trunk, the RGB adapter folded
   in, is written as ``sam2_trained.pt``: a trunk that knows the scenes, as a published one knows
   photographs.
2. ``lora_random``: both cameras, ``trunk: frozen``, trunk from ``sam2_random.pt`` (a random Hiera-T
   in SAM2's layout): LoRA adapters on features that know nothing.
3. ``lora_trained``: both cameras, ``trunk: frozen``, trunk from ``sam2_trained.pt``; fusion, heads
   and adapters start new.

Per run: val mIoU and mAP@0.5 at each evaluation, the mean training loss of the first and last
epoch, the largest change of any trunk weight (exactly 0 when frozen) and of any LoRA weight.
``results.json`` and ``results.md`` go to ``--out``, beside each run's logs; the runs' own checkpoints
are removed once measured (``--keep-checkpoints`` keeps them). Exit status 1 when a frozen trunk moved, an
adapter did not, a loss did not fall or a run diverged. The runs train through rgbt-train's loop, with
its guards: a non-finite loss or gradient skips the step and is counted (shown per run); more than
``--max-nonfinite-steps`` of them end that run as diverged, not the check.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rgbt_perception.io.console import console_script
from training.synth import parse_size

REPO = Path(__file__).resolve().parents[1]
RUNS = ("full", "lora_random", "lora_trained")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.sam2_lora_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the runs")
    parser.add_argument("--config", default=str(REPO / "config" / "train" / "synthetic_micro.yaml"),
                        help="base training config (default: the demo's)")
    parser.add_argument("--train", type=int, default=320, help="synthetic training frames (default 320)")
    parser.add_argument("--val", type=int, default=64, help="synthetic validation frames (default 64)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10: 400 steps at batch 8)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--input-size", type=parse_size, default=(192, 256), help="network input HxW (default 192x256)")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes (default 4)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of every run (default 1e-3)")
    parser.add_argument("--clip-grad-norm", type=float, default=1.0,
                        help="gradient norm clipping of every run, 0 = off (default 1.0)")
    parser.add_argument("--warmup-iters", type=int, default=-1,
                        help="warm-up steps of every run; -1 = sized to the run as rgbt-train does (default)")
    parser.add_argument("--max-nonfinite-steps", type=int, default=20,
                        help="steps a run may skip for a non-finite loss or gradient before it counts as diverged "
                        "(default 20, as rgbt-train)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a CUDA GPU (hours at the default sizes; for small test runs)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="runs to do (lora_trained needs full)")
    parser.add_argument("--variant", default="tiny",
                        help="trunk size, a model variant (default tiny, SAM2's Hiera-T; micro for a quick run of "
                             "the mechanics)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's best.pt and last.pt (about 1.2 GB for the three runs at tiny); by "
                             "default they are removed once the run is measured (its logs and the SAM2-layout files "
                             "stay)")
    return parser


def _overrides(args: argparse.Namespace, run_dir: Path, data_root: Path, variant_policy: str, modalities: str,
               init_sam2: str) -> list[str]:
    height, width = args.input_size
    return [
        f"out_dir={run_dir}", f"data.root={data_root}", f"model.variant={args.variant}",
        f"model.trunk={variant_policy}", f"model.input_size=[{height}, {width}]", "data.train_size=[]",
        f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", f"epochs={args.epochs}",
        f"eval_every={max(1, args.epochs // 2)}", f"run_inputs={modalities}", f"init.sam2='{init_sam2}'",
        "loss.lang=0", "text_embeddings=''", "threads=0", "device=auto", "amp=auto", "seed=0",
        f"optim.warmup_iters={args.warmup_iters}", f"optim.lr={args.lr}", f"optim.clip_grad_norm={args.clip_grad_norm}",
        f"optim.max_nonfinite_steps={args.max_nonfinite_steps}",
    ]


def _trunk_weights(model: Any) -> dict[str, Any]:
    from rgbt_perception.io.sam2_checkpoint import export_sam2_trunk

    return {k: v.float() for k, v in export_sam2_trunk(model).items()}


def _lora_weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def _matches_file(trunk: dict[str, Any], path: str) -> bool:
    """Whether the trunk holds exactly the tensors of the SAM2-layout checkpoint at ``path``."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return saved.keys() == trunk.keys() and all(torch.equal(saved[k].float(), trunk[k]) for k in saved)


def _largest_change(before: dict[str, Any], after: dict[str, Any]) -> float:
    return max(float((after[k] - before[k]).abs().max()) for k in before)


def _epochs(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train_epochs.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_run(name: str, args: argparse.Namespace, out: Path, data_root: Path, policy: str, modalities: str,
              init_sam2: str, write_trunk: str | None = None) -> dict[str, Any]:
    """One rgbt-train run in this process; returns what the report needs."""
    from training.config import load_config
    from training.engine import Trainer

    run_dir = out / name
    cfg = load_config(args.config, _overrides(args, run_dir, data_root, policy, modalities, init_sam2))
    started = time.perf_counter()
    trainer = Trainer(cfg, show_progress=False, command_line=f"sam2_lora_check {name}")
    try:
        trunk_before, lora_before = _trunk_weights(trainer.raw_model), _lora_weights(trainer.raw_model)
        init_loaded = _matches_file(trunk_before, init_sam2) if init_sam2 else None
        try:
            summary = trainer.fit()
        except FloatingPointError as exc:  # a diverged run is a result of the check, not a crash of it
            return _unfinished(name, policy, modalities, init_sam2, str(exc).split(", so the run stops")[0],
                               time.perf_counter() - started, init_loaded)
        trunk_after, lora_after = _trunk_weights(trainer.raw_model), _lora_weights(trainer.raw_model)
        if write_trunk:
            from rgbt_perception.io.sam2_checkpoint import save_sam2_checkpoint

            save_sam2_checkpoint(write_trunk, trainer.raw_model, merge_adapter="rgb")
        steps = trainer.steps_per_epoch * cfg.epochs
        device = str(trainer.device)
    finally:
        trainer.close()
    epochs = _epochs(run_dir)
    evaluations = [{"epoch": int(r["epoch"]), "miou": 100 * float(r["val_miou"]),
                    "map_50": 100 * float(r["val_map_50"])} for r in epochs if r.get("val_miou")]
    return {
        "run": name, "trunk": policy, "modalities": modalities, "init_sam2": os.path.basename(init_sam2) or "none",
        "device": device, "steps": steps, "init_loaded": init_loaded,
        "warmup_steps": trainer.model_summary["warmup_steps"], "trainable": trainer.model_summary["trainable"],
        "nonfinite_steps": trainer.nonfinite_steps,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_first_epoch": float(epochs[0]["train_total"]), "loss_last_epoch": float(epochs[-1]["train_total"]),
        "trunk_largest_change": _largest_change(trunk_before, trunk_after),
        "lora_largest_change": _largest_change(lora_before, lora_after),
        "evaluations": evaluations, "best_miou": 100 * summary["best_score"], "best_epoch": summary["best_epoch"],
    }


def _unfinished(name: str, policy: str, modalities: str, init_sam2: str, reason: str, seconds: float,
                init_loaded: bool | None = None) -> dict[str, Any]:
    """The report row of a run that did not finish (diverged, or not started), ``reason`` saying why."""
    return {"run": name, "trunk": policy, "modalities": modalities, "init_sam2": os.path.basename(init_sam2) or "none",
            "init_loaded": init_loaded, "diverged": reason, "evaluations": [], "seconds": round(seconds, 1)}


def verdicts(row: dict[str, Any]) -> list[str]:
    """What failed in one run (empty when it behaved)."""
    problems = []
    if row["init_loaded"] is False:
        problems.append("the trunk did not take every tensor of its SAM2-layout checkpoint")
    if "diverged" in row:
        return [row["diverged"], *problems]
    if row["trunk"] == "frozen" and row["trunk_largest_change"] != 0.0:
        problems.append(f"frozen trunk moved by {row['trunk_largest_change']:.3g}")
    if row["trunk"] == "full" and row["trunk_largest_change"] == 0.0:
        problems.append("trunk: full did not train the trunk")
    if row["lora_largest_change"] == 0.0:
        problems.append("the LoRA adapters did not train")
    if not row["loss_last_epoch"] < row["loss_first_epoch"]:
        problems.append("the training loss did not fall")
    return problems


def render(results: dict[str, Any]) -> str:
    lines = [
        f"# Frozen trunk + LoRA from SAM2-layout checkpoints ({results['device_name']})",
        "",
        f"`{results['command']}`; {results['data']}; {results['seconds']:.0f} s in all.",
        "",
        "| run | trunk | cameras | SAM2-layout init | steps | s | loss first / last epoch | val mIoU per eval "
        "| val mAP@0.5 per eval | largest trunk change | largest LoRA change | trainable parameters | warm-up steps "
        "| non-finite steps skipped | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        if "diverged" in row:
            lines.append(f"| {row['run']} | {row['trunk']} | {row['modalities']} | {row['init_sam2']} | | "
                         f"{row['seconds']:.0f} | | | | | | | | | {row['diverged']} |")
            continue
        mious = " / ".join(f"{e['miou']:.1f}" for e in row["evaluations"])
        maps = " / ".join(f"{e['map_50']:.1f}" for e in row["evaluations"])
        lines.append(
            f"| {row['run']} | {row['trunk']} | {row['modalities']} | {row['init_sam2']} | {row['steps']} "
            f"| {row['seconds']:.0f} | {row['loss_first_epoch']:.3f} / {row['loss_last_epoch']:.3f} | {mious} "
            f"| {maps} | {row['trunk_largest_change']:.3g} | {row['lora_largest_change']:.3g} "
            f"| {row['trainable']:,} | {row['warmup_steps']} | {row['nonfinite_steps']} "
            f"| {'; '.join(row['problems']) or 'none'} |")
    return "\n".join(lines) + "\n"


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "lora_trained" in args.runs and "full" not in args.runs:
        print("sam2_lora_check: error: lora_trained needs the full run's trunk; add full to --runs", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("sam2_lora_check: no CUDA GPU here; nothing was trained (--allow-cpu runs it on the CPU, which takes "
              "hours at the default sizes)", file=sys.stderr)
        return 2
    from rgbt_perception.io.sam2_checkpoint import save_sam2_checkpoint
    from rgbt_perception.model.config import VARIANTS, ModelConfig
    from rgbt_perception.model.encoder import build_trunk
    from training.synth.scenes import SynthConfig, generate_dataset

    if args.variant not in VARIANTS:
        print(f"sam2_lora_check: error: --variant {args.variant} is not one of {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    begun = time.perf_counter()
    out = Path(args.out)
    taken = [name for name in ("data", *RUNS) if (out / name).exists()]
    if taken:
        print(f"sam2_lora_check: error: {out} already holds {', '.join(taken)}; pick a new --out folder",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"sam2_lora_check: results go to {out}", flush=True)
    data_root = out / "data"
    generate_dataset(str(data_root), args.train, args.val, 0, seed=0,
                     cfg=SynthConfig(size=(240, 320), thermal_size=(120, 160)), progress=False)
    torch.manual_seed(1)  # not the runs' seed 0, so a trunk that ignored the file would show
    random_ckpt = save_sam2_checkpoint(out / "sam2_random.pt", build_trunk(ModelConfig(variant=args.variant)))
    trained_ckpt = str(out / "sam2_trained.pt")
    plan = {
        "full": ("full", "rgb", "", trained_ckpt),
        "lora_random": ("frozen", "both", random_ckpt, None),
        "lora_trained": ("frozen", "both", trained_ckpt, None),
    }
    results: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
        "command": "python -m training.sam2_lora_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": f"trunk {args.variant}, rgbt-synth seed 0, {args.train} train / {args.val} val frames at 240x320, "
                f"network input "
                f"{args.input_size[0]}x{args.input_size[1]}, batch {args.batch}, {args.epochs} epochs, lr {args.lr}, "
                f"gradient clipping {args.clip_grad_norm}, warm-up "
                f"{'sized to the run' if args.warmup_iters < 0 else args.warmup_iters}",
        "runs": [],
    }
    for name in RUNS:
        if name not in args.runs:
            continue
        policy, modalities, init, write_trunk = plan[name]
        if init and not os.path.isfile(init):
            row = _unfinished(name, policy, modalities, init, "not run: the full run wrote no trunk", 0.0)
        else:
            print(f"sam2_lora_check: {name} (trunk {policy}, {modalities}, init {os.path.basename(init) or 'none'})",
                  flush=True)
            row = train_run(name, args, out, data_root, policy, modalities, init, write_trunk)
            if not args.keep_checkpoints:
                for checkpoint in (out / name).glob("*.pt"):
                    checkpoint.unlink()
        row["problems"] = verdicts(row)
        results["runs"].append(row)
        if "diverged" in row:
            print(f"sam2_lora_check: {name}: {row['diverged']}", flush=True)
            continue
        print(f"sam2_lora_check: {name}: val mIoU {row['best_miou']:.1f}, loss {row['loss_first_epoch']:.3f} -> "
              f"{row['loss_last_epoch']:.3f}, trunk change {row['trunk_largest_change']:.3g}, LoRA change "
              f"{row['lora_largest_change']:.3g}, {row['seconds']:.0f} s", flush=True)
    results["seconds"] = time.perf_counter() - begun
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render(results))
    print(render(results))
    print(f"sam2_lora_check: results written to {out}")
    return 1 if any(row["problems"] for row in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
