"""rgbt-pretrain end to end on tiny recordings: bag pairing, losses that fall, resume, the
adapters file and its use by rgbt-train's ``init.adapters``."""
from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

from rgbt_perception.io.bag import BagWriter
from training.pretrain.adapters import AdapterFileError, load_adapters_into, read_adapters
from training.pretrain.data import BagPairs, FolderPairs, PairSourceError
from training.pretrain.loop import PretrainConfig, Pretrainer, load_pretrain_config
from training.synth.scenes import SynthConfig, make_rig, render_frame

SIZE = (64, 96)
SYNTH = SynthConfig(size=SIZE, thermal_size=(32, 48))


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict[str, str]:
    """A bag of 8 RGB frames and 7 thermal frames (one dropped), thermal 7 ms late."""
    root = tmp_path_factory.mktemp("pretrain")
    rig = make_rig(0, SYNTH)
    homography = str(root / "homography.txt")
    np.savetxt(homography, rig.homography)
    bag = str(root / "bag")
    with BagWriter(bag, storage="mcap") as writer:
        for index in range(8):
            frame = render_frame(np.random.default_rng([0, index]), SYNTH, rig)
            stamp = 1_000_000_000 + index * 100_000_000
            writer.write_image("rgb/image", frame.rgb, "rgb8", stamp, "rgb_camera")
            if index != 5:
                writer.write_image("thermal/image", frame.thermal16, "mono16", stamp + 7_000_000, "thermal_camera")
    return {"root": str(root), "bag": bag, "homography": homography}


def _config(recording: dict[str, str], out_dir: str, method: str, epochs: int, **extra) -> PretrainConfig:
    values = {
        "out_dir": out_dir, "method": method, "model": {"variant": "micro", "input_size": list(SIZE)},
        "data": {"kind": "bag", "bags": [recording["bag"]], "homography": recording["homography"]},
        "epochs": epochs, "batch_size": 2, "lr": 2e-3, "warmup_iters": 1, "log_every": 1, "device": "cpu",
        "threads": 1, "augment": None, **extra,
    }
    return PretrainConfig.from_dict(values)


def test_bag_pairs_use_the_node_synchroniser(recording):
    pairs = BagPairs([recording["bag"]], homography=recording["homography"], store_size=SIZE)
    assert pairs.frames_read == {"rgb": 8, "thermal": 7}
    assert len(pairs) == 7  # the RGB frame without thermal partner is left out
    assert [p["name"] for p in pairs][:2] == ["1000000000", "1100000000"]
    first = pairs[0]
    assert first["rgb"].shape == (*SIZE, 3) and first["rgb"].dtype == np.uint8
    assert first["thermal"].shape == SIZE and first["thermal"].dtype == np.uint16  # raw counts kept
    with pytest.raises(PairSourceError, match="no RGB-thermal pairs within slop"):
        BagPairs([recording["bag"]], slop=0.001)
    with pytest.raises(PairSourceError, match="lacks topic"):
        BagPairs([recording["bag"]], thermal_topic="ir/image")


def test_folder_pairs_pair_by_stem(tmp_path):
    for name in ("rgb", "thermal"):
        (tmp_path / name).mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(tmp_path / "rgb" / f"{stem}.png"), np.full((32, 32, 3), 100, np.uint8))
        cv2.imwrite(str(tmp_path / "thermal" / f"{stem}.png"), np.full((16, 16), 7000, np.uint16))
    pairs = FolderPairs(str(tmp_path))
    assert len(pairs) == 2 and pairs[1]["name"] == "b" and pairs[1]["thermal"].dtype == np.uint16
    cv2.imwrite(str(tmp_path / "rgb" / "c.png"), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(PairSourceError, match="unpaired file .*c.png"):
        FolderPairs(str(tmp_path))


def test_pccl_on_a_bag_lowers_the_loss_and_its_adapters_load_into_rgbt_train(recording, tmp_path):
    cfg = _config(recording, str(tmp_path / "pccl"), "pccl", epochs=3, lr=3e-3)
    trainer = Pretrainer(cfg, show_progress=False)
    # pccl trains the LoRA adapters alone; the start line says so and nothing else takes gradients.
    assert trainer.start_line().endswith("parameters that train: lora 109,824")
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        n for n, _ in trainer.model.named_parameters() if ".lora_" in n}
    summary = trainer.fit()
    losses = [row["train_total"] for row in summary["history"]]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < 0.95 * losses[0]
    # rgb_loss gram (the default): the RGB adapter starts on its teacher and stays there.
    assert cfg.pccl.rgb_loss == "gram"
    assert all(row["rgb_feature_cosine"] == pytest.approx(1.0, abs=1e-4) for row in summary["history"])
    with open(tmp_path / "pccl" / "pretrain_epochs.csv") as handle:
        assert len(handle.read().strip().splitlines()) == 1 + 3
    with open(tmp_path / "pccl" / "pretrain_steps.csv") as handle:
        assert len(handle.read().strip().splitlines()) == 1 + 3 * 3  # 7 pairs, batches of 2, last dropped

    tensors, record = read_adapters(summary["adapters"])
    assert record["method"] == "pccl" and record["epochs"] == 3 and record["pairs"] == 7
    assert record["data"] == f"bag:{recording['bag']}" and record["trunk"] == "random:seed=0"
    with safe_open(summary["adapters"], framework="pt") as handle:
        assert handle.metadata()["method"] == "pccl" and handle.metadata()["epochs"] == "3"
    lora = [k for k in tensors if ".lora_" in k]
    assert lora and any(".lora_B.thermal." in k for k in lora)
    assert not any(k.startswith(("necks.", "fusion.")) for k in tensors)

    # rgbt-train's init.adapters builds the same network and takes the adapters.
    from training.config import TrainConfig
    from training.steps import build_model

    thermal = torch.rand(1, 1, *SIZE, generator=torch.Generator().manual_seed(5))
    expected = trainer.model.encode_modality(thermal, "thermal")[2]
    train_cfg = TrainConfig.from_dict({"model": {"variant": "micro", "input_size": list(SIZE)},
                                       "init": {"adapters": summary["adapters"]}})
    torch.manual_seed(123)  # another seed: the trunk must come from the file, not from chance
    adapted = build_model(train_cfg, num_classes=9).eval()
    plain = build_model(TrainConfig.from_dict({"model": {"variant": "micro", "input_size": list(SIZE)}}), 9).eval()
    with torch.no_grad():
        got = adapted.encode_modality(thermal, "thermal")[2]
        before = plain.encode_modality(thermal, "thermal")[2]
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - before).abs().mean() > 1e-3

    # The package's own loader does the same and refuses a model of another shape.
    from rgbt_perception.model import ModelConfig, RGBTNet

    fresh = RGBTNet(ModelConfig(variant="micro", input_size=SIZE)).eval()
    report = load_adapters_into(fresh, summary["adapters"])
    assert len(report.loaded) == len(tensors) and not report.skipped
    with torch.no_grad():
        assert torch.allclose(fresh.encode_modality(thermal, "thermal")[2], expected, atol=1e-5)
    with pytest.raises(AdapterFileError, match="lora_rank: file 16 vs model 8"):
        load_adapters_into(RGBTNet(ModelConfig(variant="micro", input_size=SIZE, lora_rank=8)), summary["adapters"])


def test_the_attention_rgb_term_moves_the_rgb_path_the_gram_term_keeps_it(recording, tmp_path):
    cosines = {}
    for rgb_loss in ("attention", "gram"):
        cfg = _config(recording, str(tmp_path / rgb_loss), "pccl", epochs=1, lr=3e-3, pccl={"rgb_loss": rgb_loss})
        trainer = Pretrainer(cfg, show_progress=False)
        cosines[rgb_loss] = trainer.fit()["history"][-1]["rgb_feature_cosine"]
        trainer.close()
    assert cosines["gram"] == pytest.approx(1.0, abs=1e-4)
    assert cosines["attention"] < 0.999  # 3 steps move it (0.995 here)


def test_cmss_mim_resume_matches_an_uninterrupted_run(recording, tmp_path):
    # Half the samples take the single-modality path (one modality fully masked and absent).
    mim = {"cmss": {"modality_drop": 0.5}}
    whole = Pretrainer(_config(recording, str(tmp_path / "whole"), "cmss-mim", epochs=3, **mim), show_progress=False)
    full = whole.fit()
    losses = [row["train_total"] for row in full["history"]]
    assert losses[-1] < losses[0]
    tensors, record = read_adapters(full["adapters"])
    assert record["method"] == "cmss-mim"
    assert any(k.startswith("necks.thermal.") for k in tensors) and any(k.startswith("fusion.") for k in tensors)

    first = Pretrainer(_config(recording, str(tmp_path / "split"), "cmss-mim", epochs=3, **mim), stop_after_epochs=1,
                       show_progress=False)
    partial = first.fit()
    assert partial["epochs_run"] == 1 and "adapters" not in partial
    second = Pretrainer(_config(recording, str(tmp_path / "split"), "cmss-mim", epochs=3, **mim),
                        resume=str(tmp_path / "split" / "last.pt"), show_progress=False)
    resumed = second.fit()
    assert resumed["epochs_run"] == 2
    assert [round(r["train_total"], 5) for r in resumed["history"]] == [round(v, 5) for v in losses]
    again, _ = read_adapters(resumed["adapters"])
    assert all(torch.allclose(again[k], tensors[k], atol=1e-6) for k in tensors)


def test_cli_runs_on_a_bag_and_reports_bad_input(recording, tmp_path, capsys, repo_root):
    from training.cli.pretrain import main

    config = os.path.join(repo_root, "config", "train", "pretrain_pccl.yaml")
    load_pretrain_config(config)  # the shipped config is valid
    out = tmp_path / "cli"
    code = main(["--config", config, "--bag", recording["bag"], "--homography", recording["homography"],
                 "--out", str(out), "--epochs", "1", "--no-progress", "--set", f"model.input_size={list(SIZE)}",
                 "--set", "batch_size=7", "--set", "device=cpu", "--set", "augment=null"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pccl on 7 pairs" in printed
    assert "epoch 1/1 loss" in printed  # per-epoch lines without the progress bar too
    assert re.search(r"pccl: 7 pairs, 1 optimizer steps, .*parameters that train: .*lora [0-9,]+", printed)
    assert os.path.isfile(out / "adapters.safetensors") and os.path.isfile(out / "last.pt")

    code = main(["--config", config, "--bag", str(tmp_path / "missing_bag"), "--out", str(out), "--no-progress"])
    assert code == 2
    assert "missing_bag does not exist" in capsys.readouterr().err
    code = main(["--config", config, "--set", "pccl.threshold=1.5", "--no-progress"])
    assert code == 2
    assert "threshold must be in (0, 1]" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, port: int, recording: dict[str, str], out: str, method: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Pretrainer(_config(recording, out, method, epochs=2, lr=3e-3), show_progress=False)
    trainer.fit()
    trained = {name: p.detach().clone() for name, p in trainer.objective.trainable(trainer.model)}
    torch.save(trained, os.path.join(out, f"trained_rank{rank}.pt"))


@pytest.mark.parametrize("method", ["pccl", "cmss-mim"])
def test_ddp_two_processes_gloo_keep_ranks_in_sync(recording, tmp_path, method):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path)
    mp.spawn(_ddp_worker, args=(2, port, recording, out, method), nprocs=2, join=True)
    rank0 = torch.load(os.path.join(out, "trained_rank0.pt"))
    rank1 = torch.load(os.path.join(out, "trained_rank1.pt"))
    assert rank0.keys() == rank1.keys() and any(".lora_B.thermal." in k for k in rank0)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], msg=name)
    # The ranks saw different pairs (7 pairs -> 3 per rank, batch 2), so only gradient
    # averaging can have kept them equal; and training moved the thermal adapter.
    assert any(rank0[k].abs().max() > 0 for k in rank0 if ".lora_B.thermal." in k)
    with open(os.path.join(out, "pretrain_steps.csv")) as handle:
        assert len(handle.read().strip().splitlines()) == 1 + 2  # one batch per rank and epoch
