"""Transfer study: a pretrained trunk, frozen and adapted with LoRA, against the other ways to train on few labels.

Steps, each through the project's own commands (one process per run, so each run's peak memory is its own):

1. **Source trunk**: ``rgbt-train`` on the RGB camera of an ``rgbt-synth`` world (many frames,
   ``trunk: full``); its trunk, the RGB adapter folded in, is written in Meta's SAM2 layout
   (``source/sam2_source.pt``) and read back by every arm through ``init.sam2``, the import a
   published SAM2 file takes.
2. **Target arms** on synthetic world B (``training.synth.world_b``: other scene statistics, 8-bit
   thermal, MFNet's layout), each with ``--fractions`` of the target labels and ``--seeds``:
   ``lora4``/``lora8``/``lora16`` (frozen trunk + LoRA of that rank), ``full`` (every weight trains
   from the source trunk), ``heads`` (frozen trunk, LoRA kept at zero by ``optim.freeze``: necks,
   fusion and heads alone) and ``scratch`` (random trunk, everything trains). Every run takes the
   same number of optimizer steps (``--steps``), whatever its fraction of labels.
3. **Label-free adaptation** (``--label-free pccl cmss-mim``): ``rgbt-pretrain`` on every target
   training pair without labels (frozen source trunk; it is PCCL's teacher), then the
   ``lora<--label-free-rank>`` arm at the smallest fraction from its adapters.

Optionally first (``--lr-sweep``) the learning rates are measured: the ``lora<--label-free-rank>`` arm
(for every frozen arm) and ``full`` (for full fine-tuning), each at the smallest fraction, seed 0, at
each rate; the best validation mIoU among the runs that did not diverge sets the arm's rate.

Per run: test mIoU and box mAP@0.5 of the checkpoint selected on val (``rgbt-eval`` on the exported
weights), trainable parameters, training seconds per epoch, peak memory (CUDA allocator peak on a
GPU, resident set on a CPU) and the non-finite steps skipped; per arm the mean over seeds.
``results.json`` and ``results.md`` go to ``--out``; finished runs are kept and not run again.
``--preset toy`` checks the steps in minutes (micro, 64x96); ``--preset cpu`` is the study sized for a
2-core CPU (micro, 96x128, 2 seeds, about an hour); ``--preset full`` is the GPU study (SAM2 Hiera-T at
480x640).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rgbt_perception.io.console import console_script
from training.synth import parse_size

REPO = Path(__file__).resolve().parents[1]
ARMS = ("lora4", "lora8", "lora16", "full", "heads", "scratch")
LABEL_FREE = ("pccl", "cmss-mim")
# Sizes of the presets; every value can be overridden on the command line. ``heads``: the widths of
# necks, fusion and heads ({} = the variant's own). The full preset measures the recipe the base+ configs
# ship (SAM2's widths: neck and decoder 256, decoder MLP 2048, box tower 128), which on Hiera-T leaves
# 22-24 % of the parameters trainable with the trunk frozen; ``--heads compact`` (micro's widths) leaves
# 7-9 % (LoRA rank 4-16) and cost 1.5-3.7 test mIoU at the CPU preset's size (docs/training.md).
COMPACT_HEADS = dict(neck_dim=128, decoder_dim=128, decoder_mlp_dim=256, box_dim=64)
SAM2_HEADS = dict(neck_dim=256, decoder_dim=256, decoder_mlp_dim=2048, box_dim=128)
HEADS = {"compact": COMPACT_HEADS, "sam2": SAM2_HEADS}
PRESETS: dict[str, dict[str, Any]] = {
    "toy": dict(variant="micro", input_size=(64, 96), source_frames=160, source_size=(96, 128), source_steps=120,
                target_train=60, target_val=16, target_test=24, target_size=(96, 128), steps=40, batch=4,
                label_free_epochs=2, seeds=[0], workers=0, threads=1, heads={}),
    "cpu": dict(variant="micro", input_size=(96, 128), source_frames=800, source_size=(96, 128), source_steps=1500,
                target_train=200, target_val=40, target_test=60, target_size=(96, 128), steps=300, batch=4,
                label_free_epochs=4, seeds=[0, 1], workers=0, threads=1, heads={}),
    "full": dict(variant="tiny", input_size=(480, 640), source_frames=4000, source_size=(480, 640),
                 source_steps=6000, target_train=240, target_val=60, target_test=60, target_size=(480, 640),
                 steps=1500, batch=8, label_free_epochs=20, seeds=[0, 1], workers=8, threads=0,
                 heads=SAM2_HEADS),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.transfer_study", description=__doc__.split("\n\n")[0],
                                     epilog="Steps, arms and what is measured: docs/training.md (transfer study).")
    parser.add_argument("--out", required=True, help="study folder (data, runs, results.json, results.md)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy",
                        help="sizes: toy (checks the steps, minutes), cpu (the study on a 2-core CPU, about an hour) "
                             "or full (GPU); the options below override them")
    parser.add_argument("--variant", help="model variant (toy, cpu: micro; full: tiny)")
    parser.add_argument("--input-size", type=parse_size, help="network input HxW")
    parser.add_argument("--source-frames", type=int, help="rgbt-synth frames of the source world")
    parser.add_argument("--source-steps", type=int, help="optimizer steps of the source trunk's training")
    parser.add_argument("--target-train", type=int, help="world B training frames (all of them unlabelled "
                        "for label-free adaptation)")
    parser.add_argument("--steps", type=int, help="optimizer steps of every target run")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--heads", choices=sorted(HEADS),
                        help="widths of necks, fusion and heads: sam2 (neck and decoder 256, decoder MLP 2048, box "
                             "128; full's default, the base+ configs' widths) or compact (128, 128, 256, 64); toy and "
                             "cpu: the variant's own (micro: compact)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="target arms")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0], help="label fractions")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (toy: 0; cpu, full: 0 1)")
    parser.add_argument("--label-free", nargs="*", choices=LABEL_FREE, default=list(LABEL_FREE),
                        help="label-free methods run before the smallest fraction (none: skip)")
    parser.add_argument("--label-free-rank", type=int, default=16, help="LoRA rank of the label-free arms")
    parser.add_argument("--label-free-epochs", type=int, help="epochs of rgbt-pretrain")
    parser.add_argument("--pccl-rgb-loss", default="gram",
                        help="pccl.rgb_loss of the pccl arm: how the RGB adapter is held to its teacher "
                             "(gram, feature or attention; default gram)")
    parser.add_argument("--lr-frozen", type=float, default=1e-3, help="learning rate of lora* and heads")
    parser.add_argument("--lr-full", type=float, default=3e-4, help="learning rate of full (from the source trunk)")
    parser.add_argument("--lr-scratch", type=float, default=2e-3,
                        help="learning rate of scratch and of the source trunk (random start)")
    parser.add_argument("--lr-sweep", nargs="*", type=float, default=[],
                        help="measure --lr-frozen and --lr-full first: one run per rate and arm "
                             "(e.g. 1e-4 3e-4 1e-3 3e-3)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (0: torch's default)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan's commands and stop")
    return parser


@dataclass
class Settings:
    """The resolved sizes of a study (preset, then command-line overrides)."""

    out: Path
    values: dict[str, Any]
    arms: list[str]
    fractions: list[float]
    label_free: list[str]
    label_free_rank: int
    lr_frozen: float
    lr_full: float
    lr_scratch: float
    lr_sweep: list[float]
    device: str
    pccl_rgb_loss: str = "gram"
    python: str = sys.executable

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


def resolve(args: argparse.Namespace) -> Settings:
    values = dict(PRESETS[args.preset])
    for key in ("variant", "input_size", "source_frames", "source_steps", "target_train", "steps", "batch", "seeds",
                "label_free_epochs", "workers", "threads"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.heads is not None:
        values["heads"] = HEADS[args.heads]
    if min(args.fractions) <= 0 or max(args.fractions) > 1:
        raise ValueError(f"--fractions must lie in (0, 1], got {args.fractions}")
    from training.pretrain.pccl import PCCLConfig

    PCCLConfig(rgb_loss=args.pccl_rgb_loss)  # names a wrong choice before anything runs
    return Settings(Path(args.out), values, list(args.arms), sorted(args.fractions), list(args.label_free or []),
                    args.label_free_rank, args.lr_frozen, args.lr_full, args.lr_scratch, list(args.lr_sweep),
                    args.device, args.pccl_rgb_loss)


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One target run: its name, the arm it belongs to, and its rgbt-train overrides."""

    name: str
    arm: str
    fraction: float
    seed: int
    overrides: list[str]
    adapters_from: str = ""  # the label-free run whose adapters it starts from
    group: str = "arms"  # arms | lr_sweep | label_free
    extra: dict[str, Any] = field(default_factory=dict)


def arm_overrides(arm: str, st: Settings, sam2: str) -> list[str]:
    """rgbt-train overrides of an arm (trunk policy, LoRA rank, what stays fixed, trunk source, learning rate)."""
    if arm.startswith("lora"):
        return ["model.trunk=frozen", f"model.lora_rank={int(arm[4:])}", f"init.sam2={sam2}",
                f"optim.lr={st.lr_frozen}"]
    if arm == "heads":
        return ["model.trunk=frozen", "optim.freeze=[lora_]", f"init.sam2={sam2}", f"optim.lr={st.lr_frozen}"]
    if arm == "full":
        return ["model.trunk=full", f"init.sam2={sam2}", f"optim.lr={st.lr_full}"]
    if arm == "scratch":
        return ["model.trunk=full", f"optim.lr={st.lr_scratch}"]
    raise ValueError(f"unknown arm {arm!r}")


def epochs_for(st: Settings, fraction: float) -> int:
    """Epochs that give ``st.steps`` optimizer steps with ``fraction`` of the training labels."""
    labelled = max(1, round(st.target_train * fraction))
    return max(1, math.ceil(st.steps / max(1, labelled // st.batch)))


def plan_runs(st: Settings, sam2: str) -> list[Run]:
    """Every target run of the study (without the learning-rate sweep)."""
    runs = []
    for arm in st.arms:
        for fraction in st.fractions:
            for seed in st.seeds:
                runs.append(Run(f"{arm}_f{fraction:g}_s{seed}", arm, fraction, seed, arm_overrides(arm, st, sam2)))
    lowest = st.fractions[0]
    base = f"lora{st.label_free_rank}"
    for method in st.label_free:
        for seed in st.seeds:
            runs.append(Run(f"{method}+{base}_f{lowest:g}_s{seed}", f"{method} + {base}", lowest, seed,
                            arm_overrides(base, st, sam2), adapters_from=f"pretrain_{method}_s{seed}",
                            group="label_free"))
    return runs


def base_config(st: Settings) -> dict[str, Any]:
    """The rgbt-train config every target run starts from (world B in MFNet's layout)."""
    height, width = st.input_size
    return {
        "name": "transfer", "model": {"variant": st.variant, "input_size": [height, width], **st.heads},
        "data": {"dataset": "mfnet", "root": str(st.out / "target"), "train_split": "train", "val_split": "val",
                 "batch_size": st.batch, "num_workers": st.workers, "augment": {"scale_range": [0.75, 1.25]}},
        "optim": {"lr": 1e-3, "warmup_iters": -1, "clip_grad_norm": 1.0, "weight_decay": 0.01},
        "loss": {"aux": 0.0, "jaccard": 1.0, "box": 1.0, "lang": 0.0},
        "epochs": 1, "seed": 0, "device": st.device, "amp": "auto", "threads": st.threads,
        "eval_every": 1, "log_every": 10,
    }


def adapters_path(st: Settings, run: Run) -> Path:
    """The adapters file a label-free run's fine-tuning starts from."""
    return st.out / "runs" / run.adapters_from / "adapters.safetensors"


def train_command(st: Settings, run: Run, run_dir: Path) -> list[str]:
    overrides = [f"data.train_fraction={run.fraction}", f"seed={run.seed}", *run.overrides]
    if run.adapters_from:
        overrides.append(f"init.adapters={adapters_path(st, run)}")
    epochs = epochs_for(st, run.fraction)
    overrides.append(f"eval_every={max(1, epochs // 4)}")
    command = [st.python, "-m", "training.cli.train", "--config", str(st.out / "target_base.yaml"), "--out",
               str(run_dir), "--epochs", str(epochs), "--export", str(run_dir / "weights.safetensors"),
               "--no-progress"]
    for item in overrides:
        command += ["--set", item]
    return command


def eval_command(st: Settings, run_dir: Path) -> list[str]:
    return [st.python, "-m", "training.cli.evaluate", "--weights", str(run_dir / "weights.safetensors"),
            "--data-root", str(st.out / "target"), "--dataset", "mfnet", "--split", "test", "--out",
            str(run_dir / "test"), "--device", st.device, "--overlays", "0", "--no-progress"]


def pretrain_command(st: Settings, method: str, seed: int, sam2: str, run_dir: Path) -> list[str]:
    config = REPO / "config" / "train" / ("pretrain_pccl.yaml" if method == "pccl" else "pretrain_cmss_mim.yaml")
    height, width = st.input_size
    sets = [f"model={{variant: {st.variant}, input_size: [{height}, {width}], trunk: frozen, "
            f"lora_rank: {st.label_free_rank}}}", f"init.sam2={sam2}", "data.kind=dataset", "data.dataset=mfnet",
            "data.split=train", f"seed={seed}", f"batch_size={st.batch}", f"device={st.device}",
            f"threads={st.threads}", f"num_workers={st.workers}", "pccl.teacher=trunk"]
    if method == "pccl":
        sets.append(f"pccl.rgb_loss={st.pccl_rgb_loss}")
    command = [st.python, "-m", "training.cli.pretrain", "--config", str(config), "--data-root",
               str(st.out / "target"), "--out", str(run_dir), "--epochs", str(st.label_free_epochs), "--no-progress"]
    for item in sets:
        command += ["--set", item]
    return command


def execute(command: list[str], log: Path) -> tuple[int, float, str]:
    """Run ``command`` with its output in ``log``; returns (exit status, seconds, last lines)."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO).returncode
    tail = "".join(log.read_text().splitlines(keepends=True)[-3:]).strip()
    return status, time.perf_counter() - started, tail


def read_run(run_dir: Path) -> dict[str, Any]:
    """What a finished rgbt-train run measured: epochs, steps, seconds per epoch, peak memory, parameters."""
    with open(run_dir / "train_epochs.csv", newline="") as handle:
        epochs = list(csv.DictReader(handle))
    summary = json.loads((run_dir / "model_summary.json").read_text())
    scored = [float(r["val_miou"]) for r in epochs if r.get("val_miou")]
    return {
        "epochs": len(epochs), "steps": summary["total_steps"], "warmup_steps": summary["warmup_steps"],
        "seconds_per_epoch": sum(float(r["seconds_train"]) for r in epochs) / len(epochs),
        "peak_memory_mib": max(float(r["peak_memory_mib"]) for r in epochs),
        "nonfinite_steps": int(epochs[-1]["nonfinite_steps"]), "val_miou": 100 * max(scored) if scored else None,
        "trainable": summary["trainable"], "total": summary["total"],
        "trainable_share": 100 * summary["trainable_share"],
    }


def kept_result(run_dir: Path, command: str, inputs: Sequence[Path] = ()) -> dict[str, Any] | None:
    """The finished run's row when it was trained by ``command`` from ``inputs`` as they are now;
    otherwise ``None`` and its folder cleared.

    A study continued with other settings (a learning rate the sweep chose, other widths, steps or seeds)
    must not mix runs of both; the command line holds every setting of a run, and an input written after
    the run (adapters of a label-free run done again) makes it out of date.
    """
    done = run_dir / "result.json"
    if not done.is_file():
        return None
    row = json.loads(done.read_text())
    finished = done.stat().st_mtime
    if row.get("command") == command and all(path.stat().st_mtime <= finished for path in inputs if path.exists()):
        return row
    print(f"transfer_study: {run_dir.name}: trained with other settings, training it again", flush=True)
    shutil.rmtree(run_dir)
    return None


def train_and_score(st: Settings, run: Run) -> dict[str, Any]:
    """Train one target run, score its exported weights on the test split; the row of the report."""
    run_dir = st.out / "runs" / run.name
    command = train_command(st, run, run_dir)
    kept = kept_result(run_dir, shlex.join(command), [adapters_path(st, run)] if run.adapters_from else [])
    if kept is not None:
        return kept
    row: dict[str, Any] = {"run": run.name, "arm": run.arm, "fraction": run.fraction, "seed": run.seed,
                           "group": run.group, "command": shlex.join(command)}
    status, seconds, tail = execute(command, run_dir.parent / f"{run_dir.name}.train.log")
    if status != 0:
        row.update(failed=tail, diverged="non-finite" in tail, seconds=round(seconds, 1))
        print(f"transfer_study: {run.name} failed: {tail}", flush=True)
        return row
    row.update(read_run(run_dir), seconds=round(seconds, 1))
    status, _, tail = execute(eval_command(st, run_dir), run_dir.parent / f"{run_dir.name}.eval.log")
    if status == 0:
        metrics = json.loads((run_dir / "test" / "metrics.json").read_text())
        row["test_miou"] = 100 * metrics["segmentation"]["overall"]["miou"]
        row["test_map_50"] = 100 * metrics["detection"]["overall"]["map_50"]
    else:
        row["failed"] = f"rgbt-eval: {tail}"
    (run_dir / "result.json").write_text(json.dumps(row, indent=1))
    print(f"transfer_study: {run.name}: test mIoU {row.get('test_miou', math.nan):.1f}, mAP@0.5 "
          f"{row.get('test_map_50', math.nan):.1f}, {row['trainable']:,} trainable, "
          f"{row['seconds_per_epoch']:.1f} s/epoch", flush=True)
    return row


# ---------------------------------------------------------------------------------------------- data and source


def write_yaml(path: Path, values: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=False))


def make_data(st: Settings) -> None:
    """The source world (rgbt-synth) and the target world (world B), each written once."""
    from training.synth.scenes import SynthConfig, generate_dataset
    from training.synth.world_b import generate_world_b

    source, target = st.out / "source_data", st.out / "target"
    if not (source / "val.txt").is_file():
        height, width = st.source_size
        generate_dataset(str(source), st.source_frames, max(8, st.source_frames // 20), 0, seed=0,
                         cfg=SynthConfig(size=(height, width), thermal_size=(height // 2, width // 2)), progress=False)
    if not (target / "test.txt").is_file():
        generate_world_b(str(target), {"train": st.target_train, "val": st.target_val, "test": st.target_test},
                         seed=0, size=tuple(st.target_size))


def source_command(st: Settings, run_dir: Path) -> list[str]:
    height, width = st.input_size
    steps_per_epoch = max(1, st.source_frames // st.batch)
    epochs = max(1, math.ceil(st.source_steps / steps_per_epoch))
    sets = [f"model={{variant: {st.variant}, input_size: [{height}, {width}], trunk: full}}",
            "data.dataset=synthetic", "run_inputs=rgb", f"optim.lr={st.lr_scratch}", f"eval_every={epochs}"]
    command = [st.python, "-m", "training.cli.train", "--config", str(st.out / "target_base.yaml"), "--data-root",
               str(st.out / "source_data"), "--out", str(run_dir), "--epochs", str(epochs), "--export",
               str(run_dir / "weights.safetensors"), "--no-progress"]
    for item in sets:
        command += ["--set", item]
    return command


def source_trunk(st: Settings) -> dict[str, Any]:
    """Train the source trunk and write it in Meta's SAM2 layout; returns what it cost."""
    run_dir = st.out / "runs" / "source"
    sam2 = st.out / "source" / "sam2_source.pt"
    done = st.out / "source" / "source.json"
    if done.is_file():
        return json.loads(done.read_text())
    status, seconds, tail = execute(source_command(st, run_dir), run_dir.parent / f"{run_dir.name}.train.log")
    if status != 0:
        raise RuntimeError(f"the source trunk's training failed: {tail}")
    from rgbt_perception.io.sam2_checkpoint import save_sam2_checkpoint
    from rgbt_perception.io.weights import load_weights

    model, _ = load_weights(str(run_dir / "weights.safetensors"))
    sam2.parent.mkdir(parents=True, exist_ok=True)
    save_sam2_checkpoint(sam2, model, merge_adapter="rgb")
    row = {"command": shlex.join(source_command(st, run_dir)), "seconds": round(seconds, 1), "file": str(sam2),
           **read_run(run_dir)}
    done.write_text(json.dumps(row, indent=1))
    return row


def label_free(st: Settings, method: str, seed: int, sam2: str) -> dict[str, Any]:
    run_dir = st.out / "runs" / f"pretrain_{method}_s{seed}"
    command = pretrain_command(st, method, seed, sam2, run_dir)
    kept = kept_result(run_dir, shlex.join(command))
    if kept is not None:
        return kept
    shutil.rmtree(run_dir, ignore_errors=True)  # what a run stopped part-way left
    status, seconds, tail = execute(command, run_dir.parent / f"{run_dir.name}.log")
    row = {"method": method, "seed": seed, "command": shlex.join(command), "seconds": round(seconds, 1),
           **({"failed": tail} if status else {})}
    if status == 0:
        (run_dir / "result.json").write_text(json.dumps(row, indent=1))
    return row


# ---------------------------------------------------------------------------------------------- report


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm, fraction): means over seeds of the scores and costs, and the per-seed scores."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("group") != "lr_sweep":
            groups.setdefault((row["arm"], row["fraction"]), []).append(row)
    table = []
    for (arm, fraction), members in groups.items():
        scored = [r for r in members if "test_miou" in r]
        table.append({
            "arm": arm, "fraction": fraction, "runs": len(members), "failed": len(members) - len(scored),
            "test_miou": mean([r["test_miou"] for r in scored]),
            "test_map_50": mean([r["test_map_50"] for r in scored]),
            "per_seed_miou": [round(r["test_miou"], 2) for r in scored],
            "trainable": scored[0]["trainable"] if scored else None,
            "trainable_share": scored[0]["trainable_share"] if scored else math.nan,
            "seconds_per_epoch": mean([r["seconds_per_epoch"] for r in scored]),
            "peak_memory_mib": max((r["peak_memory_mib"] for r in scored), default=math.nan),
            "nonfinite_steps": sum(r.get("nonfinite_steps", 0) for r in scored),
        })
    return table


def goals(table: list[dict[str, Any]], st: Settings) -> list[str]:
    """The study's goals, each with the numbers it was judged on (``n/a`` where an arm is missing)."""
    by = {(r["arm"], r["fraction"]): r for r in table}
    low, high = st.fractions[0], st.fractions[-1]
    loras = [a for a in st.arms if a.startswith("lora") and (a, low) in by]
    best = max(loras, key=lambda a: by[(a, low)]["test_miou"], default=None)

    def miou(arm: str | None, fraction: float) -> float:
        row = by.get((arm, fraction)) if arm else None
        return row["test_miou"] if row else math.nan

    lines = []
    if best:
        share = by[(best, low)]["trainable_share"]
        lines.append(f"best frozen + LoRA arm at {low:g}: {best} ({miou(best, low):.1f} mIoU, {share:.1f} % of "
                     f"parameters train; goal <= 10 %)")
        lines.append(f"{best} - full at {low:g}: {miou(best, low) - miou('full', low):+.1f} mIoU (goal >= 0)")
        if high != low:
            lines.append(f"{best} - full at {high:g}: {miou(best, high) - miou('full', high):+.1f} mIoU (goal >= -1)")
        lines.append(f"{best} - scratch at {low:g}: {miou(best, low) - miou('scratch', low):+.1f} mIoU (goal >= 10)")
    base = f"lora{st.label_free_rank}"
    for method in st.label_free:
        gain = miou(f"{method} + {base}", low) - miou(base, low)
        lines.append(f"{method} before {base} at {low:g}: {gain:+.1f} mIoU over {base} alone (goal >= +2)")
    diverged = sum(r["failed"] for r in table)
    lines.append(f"runs that failed or diverged: {diverged}; non-finite steps skipped in all runs: "
                 f"{sum(r['nonfinite_steps'] for r in table)}")
    return lines


def spent_minutes(results: dict[str, Any]) -> float:
    """Minutes the source trunk, the sweeps and the target runs took when they ran (label-free pretraining aside)."""
    parts = [results.get("source", {}), *results.get("lr_sweep", []), *results.get("runs", [])]
    return sum(part.get("seconds", 0.0) for part in parts) / 60


def render(results: dict[str, Any], st: Settings) -> str:
    lines = [f"# Transfer study ({results['device']})", "", f"`{results['command']}`", "",
             f"{results['describe']}; {results['seconds'] / 60:.1f} min in this invocation, "
             f"{spent_minutes(results):.0f} min of training and scoring in all (finished runs kept from earlier "
             "invocations included).", ""]
    source = results.get("source")
    if source:
        lines += [f"Source trunk: {source['steps']} steps, {source['seconds']:.0f} s, val mIoU "
                  f"{source['val_miou'] or math.nan:.1f} (RGB only), written to `{source['file']}`.", ""]
    for arm in sorted({r["arm"] for r in results.get("lr_sweep", [])}):
        cells = ", ".join(f"{r['lr']:g}: {r['val_miou'] if r['val_miou'] is not None else 'diverged'}"
                          for r in results["lr_sweep"] if r["arm"] == arm)
        lines += [f"Learning-rate sweep of {arm} at {100 * st.fractions[0]:g} % of the labels, seed 0 (val mIoU): "
                  f"{cells}; chosen {getattr(st, swept_rate(arm)):g}.", ""]
    lines += ["| arm | labels | runs | test mIoU | per seed | test mAP@0.5 | trainable parameters | trainable % "
              "| s / epoch | peak MiB | non-finite steps | failed |", "|" + "---|" * 12]
    for r in results["table"]:
        trainable = f"{r['trainable']:,}" if r["trainable"] is not None else "-"
        lines.append(f"| {r['arm']} | {100 * r['fraction']:g} % | {r['runs']} | {r['test_miou']:.1f} | "
                     f"{' / '.join(f'{v:.1f}' for v in r['per_seed_miou'])} | {r['test_map_50']:.1f} | {trainable} | "
                     f"{r['trainable_share']:.2f} | {r['seconds_per_epoch']:.1f} | {r['peak_memory_mib']:.0f} | "
                     f"{r['nonfinite_steps']} | {r['failed']} |")
    lines += ["", "Goals:", ""] + [f"- {line}" for line in results["goals"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def sweep_learning_rate(st: Settings, sam2: str, arm: str) -> list[dict[str, Any]]:
    """One run of ``arm`` per rate (smallest fraction, seed 0); the best on val becomes the arm's rate.

    ``arm``: ``lora<rank>`` sets the rate of every frozen arm (``lora*``, ``heads``), ``full`` that of
    full fine-tuning, so neither side of the comparison runs at a rate the other was tuned to.
    """
    rows = []
    for lr in st.lr_sweep:
        overrides = [*arm_overrides(arm, st, sam2), f"optim.lr={lr}"]
        run = Run(f"sweep_{arm}_lr{lr:g}", arm, st.fractions[0], 0, overrides, group="lr_sweep")
        row = train_and_score(st, run)
        rows.append({"arm": arm, "lr": lr, "val_miou": None if "failed" in row else round(row["val_miou"], 2),
                     "seconds": row.get("seconds", 0.0)})
    finished = [r for r in rows if r["val_miou"] is not None]
    if finished:
        setattr(st, swept_rate(arm), max(finished, key=lambda r: r["val_miou"])["lr"])
    return rows


def swept_rate(arm: str) -> str:
    """The setting a sweep of ``arm`` chooses: ``lr_full`` for full fine-tuning, else ``lr_frozen``."""
    return "lr_full" if arm == "full" else "lr_frozen"


def sweep_arms(st: Settings) -> list[str]:
    """The arms whose learning rate ``--lr-sweep`` measures: the frozen + LoRA arm, and full fine-tuning if run."""
    return [f"lora{st.label_free_rank}"] + (["full"] if "full" in st.arms else [])


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        st = resolve(args)
    except ValueError as err:
        print(f"transfer_study: error: {err}", file=sys.stderr)
        return 2
    sam2 = str(st.out / "source" / "sam2_source.pt")
    if args.dry_run:
        print(shlex.join(source_command(st, st.out / "runs" / "source")))
        for method in st.label_free:
            for seed in st.seeds:
                run_dir = st.out / "runs" / f"pretrain_{method}_s{seed}"
                print(shlex.join(pretrain_command(st, method, seed, sam2, run_dir)))
        for run in plan_runs(st, sam2):
            print(shlex.join(train_command(st, run, st.out / "runs" / run.name)))
        return 0
    import torch

    started = time.perf_counter()
    st.out.mkdir(parents=True, exist_ok=True)
    write_yaml(st.out / "target_base.yaml", base_config(st))
    make_data(st)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and st.device != "cpu" else "CPU",
        "command": "python -m training.transfer_study " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "describe": f"{st.variant} at {st.input_size[0]}x{st.input_size[1]}; source: rgbt-synth RGB, "
                    f"{st.source_frames} frames, {st.source_steps} steps; target: world B, {st.target_train} train / "
                    f"{st.target_val} val / {st.target_test} test frames at {st.target_size[0]}x{st.target_size[1]}; "
                    f"{st.steps} steps per run, batch {st.batch}; seeds {st.seeds}",
        "settings": {k: v for k, v in st.values.items()},
    }
    try:
        results["source"] = source_trunk(st)
    except RuntimeError as err:
        print(f"transfer_study: error: {err}", file=sys.stderr)
        return 1
    results["lr_sweep"] = [row for arm in (sweep_arms(st) if st.lr_sweep else [])
                           for row in sweep_learning_rate(st, sam2, arm)]
    results["label_free"] = [label_free(st, method, seed, sam2) for method in st.label_free for seed in st.seeds]
    rows = [train_and_score(st, run) for run in plan_runs(st, sam2)]
    results.update(lr_frozen=st.lr_frozen, lr_full=st.lr_full, lr_scratch=st.lr_scratch, runs=rows,
                   table=aggregate(rows))
    results["goals"] = goals(results["table"], st)
    results["seconds"] = time.perf_counter() - started
    (st.out / "results.json").write_text(json.dumps(results, indent=1))
    (st.out / "results.md").write_text(render(results, st))
    print(render(results, st))
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
