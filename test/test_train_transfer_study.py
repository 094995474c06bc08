"""The transfer study's plan and report (the runs themselves are rgbt-train runs, tested elsewhere)."""
from __future__ import annotations

import math
import os

import pytest

from training import transfer_study


def test_the_plan_names_every_arm_with_its_trunk_policy_and_source(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--seeds", "0", "1", "--dry-run"]
    assert transfer_study.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    sam2 = f"init.sam2={out / 'source' / 'sam2_source.pt'}"
    source, pretrain, train = lines[0], lines[1:5], lines[5:]
    assert "run_inputs=rgb" in source and "trunk: full" in source and sam2 not in source
    assert all(sam2 in line and "training.cli.pretrain" in line for line in pretrain)
    # 6 arms x 2 fractions x 2 seeds, then each label-free method x 2 seeds at 10 % labels.
    assert len(train) == 6 * 2 * 2 + 2 * 2
    by_arm = {line.split("/runs/")[1].split()[0]: line for line in train}
    assert "model.lora_rank=8" in by_arm["lora8_f0.1_s1"] and "model.trunk=frozen" in by_arm["lora8_f0.1_s1"]
    assert "optim.freeze=[lora_]" in by_arm["heads_f1_s0"] and sam2 in by_arm["heads_f1_s0"]
    assert "model.trunk=full" in by_arm["full_f1_s0"] and sam2 in by_arm["full_f1_s0"]
    assert "model.trunk=full" in by_arm["scratch_f0.1_s0"] and sam2 not in by_arm["scratch_f0.1_s0"]
    assert "init.adapters=" in by_arm["pccl+lora16_f0.1_s1"] and "pretrain_pccl_s1" in by_arm["pccl+lora16_f0.1_s1"]
    # Every run takes the same optimizer steps: 10 % of 60 frames is one batch of 4 per epoch.
    epochs = {name: int(line.split("--epochs ")[1].split()[0]) for name, line in by_arm.items()}
    assert epochs["lora4_f0.1_s0"] == 40 and epochs["lora4_f1_s0"] == math.ceil(40 / 15)
    assert transfer_study.main(["--out", str(out), "--fractions", "0", "--dry-run"]) == 2
    assert "--fractions must lie in (0, 1]" in capsys.readouterr().err


def _row(arm: str, fraction: float, seed: int, miou: float, trainable: int = 100) -> dict:
    return {"run": f"{arm}_{fraction}_{seed}", "arm": arm, "fraction": fraction, "seed": seed, "group": "arms",
            "test_miou": miou, "test_map_50": miou / 2, "trainable": trainable, "trainable_share": trainable / 10,
            "seconds_per_epoch": 2.0, "peak_memory_mib": 500.0 + seed, "nonfinite_steps": seed}


def test_arms_are_averaged_over_seeds_and_judged_against_the_goals(tmp_path):
    st = transfer_study.resolve(transfer_study.build_parser().parse_args(
        ["--out", str(tmp_path), "--arms", "lora8", "full", "scratch", "--label-free", "pccl",
         "--label-free-rank", "8"]))
    rows = [_row("lora8", 0.1, 0, 40.0, 50), _row("lora8", 0.1, 1, 42.0, 50), _row("full", 0.1, 0, 39.0, 1000),
            _row("lora8", 1.0, 0, 60.0, 50), _row("full", 1.0, 0, 61.5, 1000), _row("scratch", 0.1, 0, 20.0, 1000),
            _row("pccl + lora8", 0.1, 0, 44.5, 50),
            {"run": "scratch_1.0_0", "arm": "scratch", "fraction": 1.0, "seed": 0, "group": "arms",
             "failed": "non-finite loss", "diverged": True},
            {**_row("lora8", 0.1, 0, 99.0), "group": "lr_sweep"}]
    table = {(r["arm"], r["fraction"]): r for r in transfer_study.aggregate(rows)}
    lora = table[("lora8", 0.1)]
    assert lora["runs"] == 2 and lora["test_miou"] == 41.0 and lora["per_seed_miou"] == [40.0, 42.0]
    assert lora["peak_memory_mib"] == 501.0 and lora["nonfinite_steps"] == 1
    assert table[("scratch", 1.0)]["failed"] == 1 and math.isnan(table[("scratch", 1.0)]["test_miou"])
    goals = transfer_study.goals(list(table.values()), st)
    assert goals[0].startswith("best frozen + LoRA arm at 0.1: lora8 (41.0 mIoU, 5.0 % of parameters train")
    assert "lora8 - full at 0.1: +2.0 mIoU" in goals[1] and "lora8 - full at 1: -1.5 mIoU" in goals[2]
    assert "lora8 - scratch at 0.1: +21.0 mIoU" in goals[3]
    assert "pccl before lora8 at 0.1: +3.5 mIoU over lora8 alone" in goals[4]
    assert goals[5].startswith("runs that failed or diverged: 1;")


@pytest.mark.parametrize("arm", ["lora4", "heads", "full", "scratch"])
def test_arm_overrides_load_as_a_training_config(tmp_path, arm):
    from training.config import TrainConfig
    from training.config_file import apply_overrides

    st = transfer_study.resolve(transfer_study.build_parser().parse_args(["--out", str(tmp_path)]))
    values = apply_overrides(transfer_study.base_config(st), transfer_study.arm_overrides(arm, st, "trunk.pt"))
    cfg = TrainConfig.from_dict(values)
    assert cfg.model["trunk"] == ("full" if arm in ("full", "scratch") else "frozen")
    assert cfg.init.sam2 == ("" if arm == "scratch" else "trunk.pt")
    assert cfg.optim.freeze == (["lora_"] if arm == "heads" else [])
    assert cfg.optim.warmup_iters == -1 and cfg.optim.clip_grad_norm == 1.0


@pytest.mark.parametrize("rank", [4, 16])
def test_compact_heads_keep_frozen_lora_within_a_tenth_of_hiera_t(tmp_path, rank):
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet, count_parameters

    def share(*options: str) -> float:
        st = transfer_study.resolve(transfer_study.build_parser().parse_args(
            ["--out", str(tmp_path), "--preset", "full", *options]))
        model = transfer_study.base_config(st)["model"]
        assert model["variant"] == "tiny"
        total, trainable = count_parameters(RGBTNet(ModelConfig(**model, trunk="frozen", lora_rank=rank)))
        return trainable / total

    # The full preset measures the shipped recipe (SAM2's widths): more than a fifth trains.
    assert share() > 0.2
    assert 0.05 < share("--heads", "compact") <= 0.10


def test_a_finished_run_is_kept_only_for_the_same_settings(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "lora16_f0.1_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"0")
    (run_dir / "result.json").write_text('{"run": "lora16_f0.1_s0", "command": "train --set optim.lr=0.003"}')
    assert transfer_study.kept_result(run_dir, "train --set optim.lr=0.003")["run"] == "lora16_f0.1_s0"
    # The sweep chose another rate since: the run is trained again, nothing of the old one is left.
    assert transfer_study.kept_result(run_dir, "train --set optim.lr=0.001") is None
    assert not run_dir.exists()
    assert "trained with other settings" in capsys.readouterr().out
    assert transfer_study.kept_result(run_dir, "train --set optim.lr=0.001") is None


def test_a_run_is_trained_again_when_its_adapters_are_newer(tmp_path):
    run_dir = tmp_path / "runs" / "pccl+lora16_f0.1_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text('{"command": "train"}')
    adapters = tmp_path / "adapters.safetensors"
    adapters.write_bytes(b"0")
    os.utime(adapters, (1000, 1000))
    assert transfer_study.kept_result(run_dir, "train", [adapters]) is not None
    os.utime(adapters)  # the label-free run was done again after the fine-tuning
    assert transfer_study.kept_result(run_dir, "train", [adapters]) is None and not run_dir.exists()


def test_label_free_runs_are_kept_only_for_the_same_settings(tmp_path, capsys):
    # A stand-in for the interpreter: writes the run's adapters and counts its calls.
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != --out ]; do shift; done\nmkdir -p "$2"\n'
                    'touch "$2/adapters.safetensors"\necho ran >> "$2/../calls"\n')
    fake.chmod(0o755)
    parse = transfer_study.build_parser().parse_args

    def settings(*options: str) -> transfer_study.Settings:
        st = transfer_study.resolve(parse(["--out", str(tmp_path / "study"), *options]))
        st.python = str(fake)
        return st

    calls = tmp_path / "study" / "runs" / "calls"
    row = transfer_study.label_free(settings(), "pccl", 0, "sam2.pt")
    assert "failed" not in row and "--set pccl.rgb_loss=gram" in row["command"]
    transfer_study.label_free(settings(), "pccl", 0, "sam2.pt")
    assert calls.read_text().count("ran") == 1  # the same settings: kept
    row = transfer_study.label_free(settings("--pccl-rgb-loss", "attention"), "pccl", 0, "sam2.pt")
    assert "--set pccl.rgb_loss=attention" in row["command"] and calls.read_text().count("ran") == 2
    assert "pretrain_pccl_s0: trained with other settings" in capsys.readouterr().out
    # cmss-mim has no RGB term to choose.
    cmss = transfer_study.label_free(settings("--pccl-rgb-loss", "gram"), "cmss-mim", 0, "sam2.pt")
    assert "rgb_loss" not in cmss["command"]
    with pytest.raises(ValueError, match="rgb_loss must be one of"):
        settings("--pccl-rgb-loss", "cosine")


def test_the_sweep_measures_the_frozen_arms_and_full_fine_tuning_each(tmp_path):
    parse = transfer_study.build_parser().parse_args
    st = transfer_study.resolve(parse(["--out", str(tmp_path), "--lr-sweep", "1e-3", "3e-3"]))
    assert transfer_study.sweep_arms(st) == ["lora16", "full"]
    only_frozen = transfer_study.resolve(parse(["--out", str(tmp_path), "--arms", "lora4", "scratch"]))
    assert transfer_study.sweep_arms(only_frozen) == ["lora16"]
    st.lr_frozen, st.lr_full = 3e-3, 1e-3
    results = {"device": "CPU", "command": "c", "describe": "d", "seconds": 60.0, "table": [],
               "lr_sweep": [{"arm": "lora16", "lr": 1e-3, "val_miou": 38.0},
                            {"arm": "lora16", "lr": 3e-3, "val_miou": 41.0},
                            {"arm": "full", "lr": 1e-3, "val_miou": 30.0},
                            {"arm": "full", "lr": 3e-3, "val_miou": None}],
               "goals": []}
    text = transfer_study.render(results, st)
    assert "Learning-rate sweep of full at 10 % of the labels, seed 0 (val mIoU): 0.001: 30.0, 0.003: diverged; " \
           "chosen 0.001." in text
    assert "sweep of lora16 at 10 % of the labels, seed 0 (val mIoU): 0.001: 38.0, 0.003: 41.0; chosen 0.003." in text
