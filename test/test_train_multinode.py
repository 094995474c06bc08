"""Training across machines: two torchrun launchers (--nnodes 2, c10d rendezvous) on the loopback interface, gloo.

Each launcher is one "machine" with one process; they meet at one rendezvous endpoint, as the
commands of docs/training.md do across real machines.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import torch
import yaml

from training.synth.scenes import SynthConfig, generate_dataset

SIZE = (64, 96)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_helpers", "multinode_worker.py")
RUN_FILES = {"config.yaml", "model_summary.json", "train_steps.csv", "train_epochs.csv", "last.pt", "best.pt"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_train_one_model_and_only_rank_0_writes(tmp_path, repo_root):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    data = str(tmp_path / "synth")
    generate_dataset(data, num_train=8, num_val=2, num_test=0, seed=3,
                     cfg=SynthConfig(size=SIZE, thermal_size=(32, 48)), progress=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "multinode", "model": {"variant": "micro", "input_size": list(SIZE)},
        "data": {"dataset": "synthetic", "root": data, "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 2e-3, "warmup_iters": 1}, "loss": {"lang": 0.0},
        "epochs": 1, "seed": 1, "device": "cpu", "eval_every": 1, "log_every": 1, "threads": 1,
    }))
    params = tmp_path / "params"
    params.mkdir()
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")])}
    launchers = []
    for machine in ("a", "b"):
        command = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{os.getpid()}", "--max-restarts", "0",
                   WORKER, str(config), str(tmp_path / f"out_{machine}"), str(params), "0"]
        launchers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=240)[0])
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], "\n".join(outputs)[-4000:]

    ranks = [torch.load(params / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Rank 0's first loss was NaN: both ranks skipped that batch together, then stepped together.
    assert [r["nonfinite_steps"] for r in ranks] == [1, 1] and [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)
    # What rank 0 saved is the model both ranks hold.
    ckpt = torch.load(os.path.join(ranks[0]["out_dir"], "last.pt"), weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["nonfinite_steps"] == 1
    for name, value in ckpt["model"].items():
        if name in ranks[0]["params"]:
            torch.testing.assert_close(value, ranks[0]["params"][name], rtol=0, atol=0, msg=name)

    # Only rank 0 wrote logs and checkpoints; the other machine's run folder is empty.
    assert set(os.listdir(ranks[0]["out_dir"])) == RUN_FILES
    assert os.listdir(ranks[1]["out_dir"]) == []
    assert json.loads(open(os.path.join(ranks[0]["out_dir"], "model_summary.json")).read())["variant"] == "micro"
    joined = "\n".join(outputs)
    assert joined.count("model: micro, trunk full") == 1 and joined.count("epoch 1/1 |") == 1

