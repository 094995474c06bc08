"""Stability of the shared training loop: non-finite losses and gradients are skipped, counted and bounded;
the warm-up is sized to the run; optim.freeze keeps parameters fixed."""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

# The tiny synthetic set and run of the loop tests (eight 64x96 frames, micro, two batches of 4).
from test_train_loop import SIZE, tiny_config
from torch.utils.data import Dataset

from training.cli import train as train_cli
from training.config import TrainConfig
from training.datasets.transforms import collate
from training.engine import Trainer
from training.loop import NonFiniteLossError
from training.optim import warmup_steps
from training.runtime import seed_worker
from training.synth.scenes import SynthConfig, generate_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(root, 8, 2, 0, seed=3, cfg=SynthConfig(size=SIZE, thermal_size=(32, 48)), progress=False)
    return root


def config(root: str, out: str, **changes) -> TrainConfig:
    """The loop tests' tiny run without validation and modality dropout, one warm-up step."""
    base = {"eval_every": 0, "modality_dropout": 0.0, "optim": {"warmup_iters": 1}}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return tiny_config(root, out, **base)


class NaNThermal(Dataset):
    """The training view with the thermal image of the samples in ``bad`` replaced by NaN (a broken frame)."""

    def __init__(self, base: Dataset, bad: set[int]) -> None:
        self.base, self.bad = base, bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        if index in self.bad:
            sample["thermal"] = torch.full_like(sample["thermal"], math.nan)
        return sample


def poison(trainer: Trainer, bad: set[int]) -> None:
    """Feed the trainer its own training samples with ``bad`` broken (same length, order and batches)."""
    trainer.make_loader(NaNThermal(trainer.train_set, bad), trainer.cfg.data.batch_size, 0, drop_last=True,
                        reseeded=trainer.augmented, collate_fn=collate, worker_init_fn=seed_worker)


def rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_nan_batch_is_skipped_counted_and_the_run_goes_on(synth, tmp_path):
    out = str(tmp_path / "run")
    trainer = Trainer(config(synth, out), show_progress=False)
    poison(trainer, {0})  # one broken frame: one of the two batches of each epoch
    trainer.fit()
    trainer.close()
    assert trainer.nonfinite_steps == 2 and trainer.global_step == 4
    assert all(bool(torch.isfinite(p).all()) for p in trainer.raw_model.parameters())
    epochs = rows(os.path.join(out, "train_epochs.csv"))
    assert [int(r["nonfinite_steps"]) for r in epochs] == [1, 2]
    # Epoch means leave the skipped batch out, so they stay finite.
    assert all(math.isfinite(float(r["train_total"])) for r in epochs)
    steps = rows(os.path.join(out, "train_steps.csv"))
    skipped = [r for r in steps if not math.isfinite(float(r["total"]))]
    # One skipped batch per epoch, each logged with the count it brought the run to.
    assert [(int(r["epoch"]), int(r["nonfinite_steps"])) for r in skipped] == [(1, 1), (2, 2)]
    assert [int(r["nonfinite_steps"]) for r in steps if int(r["batch"]) == 1] == [1, 2]
    # The count is part of the checkpoint: a resumed run continues it.
    assert torch.load(os.path.join(out, "last.pt"), weights_only=False)["nonfinite_steps"] == 2


def test_past_the_limit_the_run_stops_naming_where_and_what(synth, tmp_path):
    trainer = Trainer(config(synth, str(tmp_path / "run"), optim={"max_nonfinite_steps": 1}), show_progress=False)
    poison(trainer, {0})
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit()
    trainer.close()
    message = str(caught.value)
    assert message.startswith("non-finite loss at epoch 2 batch ")
    assert "2 steps skipped, more than optim.max_nonfinite_steps=1" in message
    assert "(non-finite terms: " in message and "box" in message and "loss nan)" in message


def test_a_non_finite_gradient_skips_the_update(synth, tmp_path):
    trainer = Trainer(config(synth, str(tmp_path / "run"), epochs=1), show_progress=False)
    before = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}
    # A finite loss whose gradient overflows (as fp32 can, far from fp16's loss scaler).
    param = next(p for p in trainer.raw_model.box_head.parameters())
    param.register_hook(lambda grad: grad * math.inf)
    trainer.fit()
    trainer.close()
    assert trainer.nonfinite_steps == 2 and trainer.global_step == 2
    assert math.isinf(trainer.last_grad_norm) or math.isnan(trainer.last_grad_norm)
    for name, value in trainer.raw_model.named_parameters():
        assert torch.equal(value, before[name]), name


def test_rgbt_train_stops_a_diverging_run_with_one_line(synth, tmp_path, capsys, repo_root):
    config_path = os.path.join(repo_root, "config", "train", "synthetic_micro.yaml")
    code = train_cli.main(["--config", config_path, "--data-root", synth, "--out", str(tmp_path / "run"),
                           "--epochs", "1", "--no-progress", "--set", "loss.lang=0", "--set", "threads=1",
                           "--set", f"model.input_size={list(SIZE)}", "--set", "data.train_size=[]",
                           "--set", "loss.box=.inf", "--set", "optim.max_nonfinite_steps=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rgbt-train: error: non-finite loss at epoch 1 batch 0 (non-finite terms: ")
    assert "optim.max_nonfinite_steps=0" in err and "Traceback" not in err


def test_warmup_is_sized_to_the_run(synth, tmp_path):
    auto = config(synth, str(tmp_path), optim={"warmup_iters": -1})
    # 2 / (1 - beta2) steps, at most a tenth of the run.
    assert warmup_steps(auto, 400) == 40 and warmup_steps(auto, 100_000) == 2000 and warmup_steps(auto, 3) == 1
    assert warmup_steps(config(synth, str(tmp_path), optim={"warmup_iters": 7}), 400) == 7
    trainer = Trainer(config(synth, str(tmp_path / "run"), epochs=20, optim={"warmup_iters": -1, "lr": 1e-3}),
                      show_progress=False)
    trainer.close()
    # 2 steps per epoch x 20 epochs: a 4-step warm-up from warmup_ratio * lr to lr.
    assert trainer.model_summary["warmup_steps"] == 4 and trainer.model_summary["warmup_rule"] == "auto"
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 1e-3)
    for _ in range(4):
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="optim.warmup_iters must be >= 0"):
        config(synth, str(tmp_path), optim={"warmup_iters": -2})


def test_freeze_keeps_the_adapters_fixed_and_the_summary_says_so(synth, tmp_path, capsys):
    out = str(tmp_path / "run")
    trainer = Trainer(config(synth, out, epochs=1, model={"variant": "micro", "input_size": list(SIZE),
                                                          "trunk": "frozen"},
                             optim={"freeze": ["lora_"]}), show_progress=False)
    lora = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters() if "lora_" in n}
    trainer.fit()
    trainer.close()
    assert lora and all(torch.equal(trainer.raw_model.get_parameter(n), v) for n, v in lora.items())
    summary = json.loads(open(os.path.join(out, "model_summary.json")).read())
    parts = {p["part"]: p for p in summary["parts"]}
    assert parts["trunk"]["trainable"] == 0 and parts["lora"]["trainable"] == 0
    assert parts["semantic_head"]["trainable"] == parts["semantic_head"]["total"] > 0
    assert summary["trainable"] == sum(p["trainable"] for p in summary["parts"]) < summary["total"]
    printed = capsys.readouterr().out
    assert "model: micro, trunk frozen, LoRA rank 16" in printed and "kept fixed by optim.freeze: lora_" in printed
    with pytest.raises(ValueError, match="optim.freeze: 'lora_typo' matches no trainable parameter"):
        Trainer(config(synth, str(tmp_path / "r2"), optim={"freeze": ["lora_typo"]}), show_progress=False)
