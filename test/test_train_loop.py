"""The training loop on a tiny synthetic set: loss falls, export loads, resume, DDP, rgbt-eval."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from training.cli import evaluate as eval_cli
from training.cli import export as export_cli
from training.cli import train as train_cli
from training.config import TrainConfig
from training.engine import Trainer
from training.synth.scenes import SynthConfig, generate_dataset

SIZE = (64, 96)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(root, num_train=8, num_val=4, num_test=4, seed=3,
                     cfg=SynthConfig(size=SIZE, thermal_size=(32, 48)), progress=False)
    return root


def tiny_config(root: str, out: str, **changes) -> TrainConfig:
    values = {
        "name": "tiny", "out_dir": out, "model": {"variant": "micro", "input_size": list(SIZE)},
        "data": {"dataset": "synthetic", "root": root, "batch_size": 4, "num_workers": 0,
                 "augment": {"scale_range": [0.9, 1.1]}},
        "optim": {"lr": 2e-3, "warmup_iters": 2},
        "epochs": 2, "seed": 1, "device": "cpu", "eval_every": 1, "modality_dropout": 0.2,
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


def trainable_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def trained_run(tiny_synth, tmp_path_factory) -> dict:
    """A 4-epoch run through the rgbt-train CLI with export at the end."""
    out = str(tmp_path_factory.mktemp("run"))
    config = os.path.join(out, "tiny.yaml")
    import yaml

    cfg = tiny_config(tiny_synth, out, epochs=4, eval_every=2, loss={"aux": 0.4, "jaccard": 0.5})
    with open(config, "w") as f:
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), f)
    weights = os.path.join(out, "tiny.safetensors")
    assert train_cli.main(["--config", config, "--export", weights, "--no-progress"]) == 0
    return {"out": out, "weights": weights, "root": tiny_synth, "config": config}


def test_loss_falls_and_logs_add_up(trained_run):
    import csv

    with open(os.path.join(trained_run["out"], "train_epochs.csv")) as f:
        epochs = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3, 4]
    losses = [float(r["train_total"]) for r in epochs]
    assert losses[-1] < 0.9 * losses[0], losses
    # Validation ran on epochs 2 and 4 only, and its mIoU lies in [0, 1].
    assert [bool(r["val_miou"]) for r in epochs] == [False, True, False, True]
    assert all(0.0 <= float(r["val_miou"]) <= 1.0 for r in epochs if r["val_miou"])
    # The total is the weighted sum of the logged terms (jaccard 0.5, aux 0.4, box 1, no language loss).
    for r in epochs:
        expected = (float(r["train_ce_main"]) + 0.5 * float(r["train_jaccard"]) + 0.4 * float(r["train_ce_aux"])
                    + float(r["train_box"]))
        assert float(r["train_total"]) == pytest.approx(expected, rel=1e-3)
    with open(os.path.join(trained_run["out"], "train_steps.csv")) as f:
        steps = list(csv.DictReader(f))
    assert int(steps[-1]["step"]) == 4 * 2  # 8 frames / batch 4, one optimizer step per batch


def test_exported_weights_load_in_inference_engine(trained_run):
    from rgbt_perception.inference import InferenceEngine
    from rgbt_perception.io.weights import read_metadata

    meta = read_metadata(trained_run["weights"])
    prov = meta.provenance
    assert prov["dataset"] == "synthetic" and prov["selection_split"] == "val"
    assert prov["epochs"] in (2, 4) and prov["best_epoch"] == prov["epochs"]
    assert "val_miou" in prov["metrics"] and "rgbt-train" in prov["train_command"] and prov["train_processes"] == 1
    engine = InferenceEngine(trained_run["weights"], device="cpu")
    rgb = np.zeros((SIZE[0], SIZE[1], 3), np.uint8)
    thermal = np.full((32, 48), 7000, np.uint16)
    result = engine.infer(rgb, thermal)
    assert result.mask.shape == SIZE and result.mask.max() < 9
    engine.release()

    # rgbt-export of the last checkpoint as fp16 gives a file half the size that loads the same way.
    fp16 = os.path.join(trained_run["out"], "last_fp16.safetensors")
    assert export_cli.main(["--checkpoint", os.path.join(trained_run["out"], "last.pt"), "--out", fp16,
                            "--storage", "fp16"]) == 0
    assert os.path.getsize(fp16) < 0.6 * os.path.getsize(trained_run["weights"])
    assert read_metadata(fp16).provenance["epochs"] == 4
    InferenceEngine(fp16, device="cpu").infer(rgb, thermal)


def test_rgbt_eval_end_to_end(trained_run, tmp_path, capsys):
    out = str(tmp_path / "eval")
    code = eval_cli.main(["--weights", trained_run["weights"], "--data-root", trained_run["root"],
                          "--dataset", "synthetic", "--split", "test", "--out", out, "--overlays", "2",
                          "--no-progress"])
    assert code == 0
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["split"] == "test"
    seg = metrics["segmentation"]
    assert seg["samples"] == 4
    # Every scored pixel is in the confusion matrix and the per-condition matrices add up to it.
    total = np.asarray(seg["confusion_matrix"]).sum()
    assert total == seg["overall"]["pixels"] == sum(c["pixels"] for c in seg["conditions"].values())
    assert metrics["detection"]["overall"]["gt_boxes"] > 0
    assert "split `test`" in open(os.path.join(out, "report.md")).read()
    assert sorted(os.listdir(os.path.join(out, "overlays")))[0].startswith("000_")
    assert len(os.listdir(os.path.join(out, "overlays"))) == 2
    assert os.path.getsize(os.path.join(out, "confusion_matrix.png")) > 1000

    capsys.readouterr()
    assert eval_cli.main(["--weights", str(tmp_path / "missing.safetensors"), "--data-root", trained_run["root"],
                          "--dataset", "synthetic", "--split", "test", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rgbt-eval: error:") and "missing.safetensors" in err and "Traceback" not in err


def test_resume_matches_uninterrupted_run(tiny_synth, tmp_path):
    straight = Trainer(tiny_config(tiny_synth, str(tmp_path / "a")), show_progress=False)
    straight.fit()
    expected = trainable_params(straight.raw_model)

    first = Trainer(tiny_config(tiny_synth, str(tmp_path / "b")), stop_after_epochs=1, show_progress=False)
    assert first.fit()["epochs_run"] == 1
    resumed = Trainer(tiny_config(tiny_synth, str(tmp_path / "b")), resume=str(tmp_path / "b" / "last.pt"),
                      show_progress=False)
    assert resumed.start_epoch == 1 and resumed.global_step == 2
    resumed.fit()
    got = trainable_params(resumed.raw_model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert resumed.optimizer.state_dict()["state"].keys() == straight.optimizer.state_dict()["state"].keys()
    # The interrupted run really differs from a fresh model (the comparison can fail).
    fresh = Trainer(tiny_config(tiny_synth, str(tmp_path / "c"), epochs=1), show_progress=False)
    assert any(not torch.equal(fresh.raw_model.get_parameter(n), expected[n]) for n in expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = tiny_config(root, out, epochs=2, modality_dropout=0.0, data={"batch_size": 2})
    trainer = Trainer(cfg, show_progress=False)
    trainer.fit()
    torch.save(trainable_params(trainer.raw_model), os.path.join(out, f"params_rank{rank}.pt"))
    trainer.close()


def test_ddp_two_processes_gloo_keep_ranks_in_sync(tiny_synth, tmp_path):
    out = str(tmp_path)
    mp.spawn(_ddp_worker, args=(2, _free_port(), tiny_synth, out), nprocs=2, join=True)
    rank0 = torch.load(os.path.join(out, "params_rank0.pt"))
    rank1 = torch.load(os.path.join(out, "params_rank1.pt"))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], msg=name)
    # Each rank saw half the data: 8 frames / (2 ranks x batch 2) = 2 steps per epoch.
    import csv

    with open(os.path.join(out, "train_steps.csv")) as f:
        assert int(list(csv.DictReader(f))[-1]["step"]) == 4
    assert os.path.isfile(os.path.join(out, "best.pt"))
    # The exported weights say how many processes trained them (the global batch is 2 x 2).
    from rgbt_perception.io.weights import read_metadata
    from training.export import export_checkpoint

    weights = export_checkpoint(os.path.join(out, "best.pt"), os.path.join(out, "w.safetensors"))
    assert read_metadata(weights).provenance["train_processes"] == 2


@pytest.mark.parametrize("aux", [0.0, 0.3])
def test_auxiliary_head_runs_and_learns_only_with_a_loss_weight(tiny_synth, tmp_path, aux):
    trainer = Trainer(tiny_config(tiny_synth, str(tmp_path), epochs=1, eval_every=0, loss={"aux": aux}),
                      show_progress=False)
    assert trainer.raw_model.aux_in_training is (aux > 0)
    before = {n: p.detach().clone() for n, p in trainer.raw_model.aux_head.named_parameters()}
    trainer.fit()
    trainer.close()
    moved = [n for n, p in trainer.raw_model.aux_head.named_parameters() if not torch.equal(p, before[n])]
    assert moved if aux > 0 else not moved


def test_training_size_differs_from_the_input_size_of_validation_and_weights(tiny_synth, tmp_path):
    trainer = Trainer(tiny_config(tiny_synth, str(tmp_path), epochs=1, eval_every=1,
                                  data={"train_size": [32, 64]}), show_progress=False)
    batch = next(iter(trainer.epoch_batches(0)))
    assert batch["rgb"].shape[-2:] == (32, 64) and batch["label"].shape[-2:] == (32, 64)
    assert trainer.val_set[0]["rgb"].shape[-2:] == SIZE
    trainer.fit()
    trainer.close()
    from rgbt_perception.io.weights import read_metadata
    from training.export import export_checkpoint

    best = os.path.join(str(tmp_path), "best.pt")
    meta = read_metadata(export_checkpoint(best, str(tmp_path / "w.safetensors")))
    assert tuple(meta.input_size) == SIZE
    assert meta.provenance["train_size"] == [32, 64] and meta.provenance["validated_size"] == list(SIZE)
    # Weights for another input size: the node resizes frames to it; the provenance keeps both sizes.
    larger = str(tmp_path / "larger.safetensors")
    assert export_cli.main(["--checkpoint", best, "--out", larger, "--input-size", "96x128"]) == 0
    meta = read_metadata(larger)
    assert tuple(meta.input_size) == (96, 128) and meta.provenance["validated_size"] == list(SIZE)
    from rgbt_perception.inference import InferenceEngine

    engine = InferenceEngine(larger, device="cpu")
    rgb = np.zeros((*SIZE, 3), np.uint8)
    result = engine.infer(rgb, np.zeros(SIZE, np.uint16))
    assert engine.input_size == (96, 128) and result.mask.shape == SIZE
    assert export_cli.main(["--checkpoint", best, "--out", larger, "--input-size", "100x128"]) == 2
    with pytest.raises(ValueError, match="data.train_size"):
        tiny_config(tiny_synth, str(tmp_path), data={"train_size": [30, 64]})


def test_the_run_exports_its_weights_file_in_the_configured_storage(tiny_synth, tmp_path, capsys):
    from safetensors import safe_open

    from rgbt_perception.io.weights import read_metadata

    weights = str(tmp_path / "half.safetensors")
    cfg = tiny_config(tiny_synth, str(tmp_path / "run"), epochs=1, eval_every=0, export=weights,
                      export_storage="fp16")
    trainer = Trainer(cfg, show_progress=False)
    summary = trainer.fit()
    trainer.close()
    assert summary["export"] == weights and summary["epochs_run"] == 1
    # One line per epoch without the progress bar.
    assert capsys.readouterr().out.count("epoch 1/1 | loss ") == 1
    with safe_open(weights, "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    # The weights of best.pt (the final model, as no validation ran), recorded as an rgbt-train export.
    provenance = read_metadata(weights).provenance
    assert provenance["checkpoint"] == "best.pt" and provenance["epochs"] == 1
    assert provenance["modalities"] == cfg.run_inputs == "both"
    with pytest.raises(ValueError, match="export_storage must be one of"):
        tiny_config(tiny_synth, str(tmp_path), export_storage="int8")


def test_resume_and_export_read_checkpoints_alike(tiny_synth, tmp_path):
    from training.checkpoint import RESUME_KEYS, read_checkpoint
    from training.export import export_checkpoint

    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=f"^checkpoint not found: {missing}$"):
        Trainer(tiny_config(tiny_synth, str(tmp_path / "r")), resume=missing, show_progress=False)
    with pytest.raises(ValueError, match=f"^checkpoint not found: {missing}$"):
        export_checkpoint(missing, str(tmp_path / "w.safetensors"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"^checkpoint {broken} cannot be read: "):
        read_checkpoint(str(broken), RESUME_KEYS)
    foreign = str(tmp_path / "foreign.pt")
    torch.save({"model": {}}, foreign)
    with pytest.raises(ValueError, match="is not an rgbt-train checkpoint \\(needs keys model, optimizer"):
        Trainer(tiny_config(tiny_synth, str(tmp_path / "r")), resume=foreign, show_progress=False)
    with pytest.raises(ValueError, match="is not an rgbt-train checkpoint \\(needs keys model, config"):
        export_checkpoint(foreign, str(tmp_path / "w.safetensors"))
