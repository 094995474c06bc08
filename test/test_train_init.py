"""Initialising the trained network from a SAM2 trunk file and from label-free adapter weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rgbt_perception.io.sam2_checkpoint import _canonical_name, _find_trunk
from training.config import TrainConfig
from training.steps import build_model


def _cfg(**init) -> TrainConfig:
    return TrainConfig.from_dict({"model": {"variant": "micro", "input_size": [64, 96]}, "init": init})


def _trunk_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    trunk = _find_trunk(model)
    return {_canonical_name(k): v.detach().clone() for k, v in trunk.state_dict().items() if "lora_" not in k}


def test_init_sam2_and_adapters(tmp_path):
    torch.manual_seed(1)
    source = build_model(_cfg(), num_classes=9)
    trunk_file = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in _trunk_state(source).items()}, str(trunk_file))
    adapters = {k: v.detach().clone() + 0.5 for k, v in source.state_dict().items()
                if "lora_" in k or k.startswith("fusion.")}
    adapters["not.in.the.model"] = torch.zeros(3)
    adapter_file = tmp_path / "adapters.safetensors"
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(adapter_file))

    torch.manual_seed(2)
    fresh = build_model(_cfg(), num_classes=9)
    assert any(not torch.equal(v, _trunk_state(fresh)[k]) for k, v in _trunk_state(source).items())

    torch.manual_seed(2)
    model = build_model(_cfg(sam2=str(trunk_file), adapters=str(adapter_file)), num_classes=9)
    for key, value in _trunk_state(source).items():
        torch.testing.assert_close(_trunk_state(model)[key], value, rtol=0, atol=0)
    state = model.state_dict()
    for key, value in adapters.items():
        if key in state:
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    # Everything else keeps its own initialisation.
    head_key = next(k for k, v in state.items() if k.startswith("aux_head.") and v.ndim > 1)
    torch.testing.assert_close(state[head_key], fresh.state_dict()[head_key], rtol=0, atol=0)
    assert not torch.equal(state[head_key], source.state_dict()[head_key])

    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"x": torch.zeros(2)}, str(unrelated))
    with pytest.raises(ValueError, match="no key matches"):
        build_model(_cfg(adapters=str(unrelated)), num_classes=9)


@pytest.mark.parametrize("flag, missing, problem", [
    ("--init", "absent_adapters.safetensors", "weights file not found"),
    ("--init-sam2", "absent_sam2.pt", "SAM2 checkpoint"),
])
def test_cli_init_flags_reach_the_model(tmp_path, capsys, repo_root, flag, missing, problem):
    import os

    from training.cli.train import main
    from training.synth.scenes import SynthConfig, generate_dataset

    data = tmp_path / "synth"
    generate_dataset(str(data), 2, 1, 0, seed=0, cfg=SynthConfig(size=(64, 96), thermal_size=(32, 48)), progress=False)
    config = os.path.join(repo_root, "config", "train", "synthetic_micro.yaml")
    code = main(["--config", config, "--data-root", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--no-progress", "--set", "loss.lang=0", flag, str(tmp_path / missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert problem in err and missing in err and "Traceback" not in err


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory) -> str:
    from training.synth.scenes import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth_sam2")
    generate_dataset(str(root), 4, 1, 0, seed=0, cfg=SynthConfig(size=(64, 96), thermal_size=(32, 48)), progress=False)
    return str(root)


def _train(repo_root: str, data: str, out: str, *extra: str) -> int:
    import os

    from training.cli.train import main

    config = os.path.join(repo_root, "config", "train", "synthetic_micro.yaml")
    return main(["--config", config, "--data-root", data, "--out", out, "--epochs", "1", "--no-progress",
                 "--set", "loss.lang=0", "--set", "model.input_size=[64, 96]", "--set", "data.train_size=[]",
                 "--set", "threads=1", *extra])


def test_rgbt_train_says_what_it_trains_from_a_sam2_file(tmp_path, capsys, repo_root, small_synth):
    import json

    from rgbt_perception.io.sam2_checkpoint import save_sam2_checkpoint
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.encoder import build_trunk

    torch.manual_seed(5)
    sam2_file = save_sam2_checkpoint(tmp_path / "sam2_micro.pt", build_trunk(ModelConfig(variant="micro")))
    tensors = len(torch.load(sam2_file, weights_only=True)["model"])
    out = tmp_path / "run"
    assert _train(repo_root, small_synth, str(out), "--init-sam2", sam2_file, "--set", "model.trunk=frozen") == 0
    printed = capsys.readouterr().out
    assert "model: micro, trunk frozen, LoRA rank 16" in printed
    assert f"trunk from SAM2 file {sam2_file}: {tensors} of {tensors} trunk tensors" in printed
    trunk_line = next(line for line in printed.splitlines() if line.strip().startswith("trunk (Hiera)"))
    assert trunk_line.split()[2] == "0" and trunk_line.endswith("frozen")
    # Printed before the first epoch's line, and kept in the run folder.
    assert printed.index("trunk from SAM2 file") < printed.index("epoch 1/1")
    summary = json.loads((out / "model_summary.json").read_text())
    assert summary["sam2"] == {"file": sam2_file, "trunk_tensors": tensors, "trunk_tensors_of_model": tensors,
                               "decoder_tensors": 0}
    parts = {p["part"]: p for p in summary["parts"]}
    assert parts["trunk"]["trainable"] == 0 and parts["lora"]["trainable"] == parts["lora"]["total"] > 0
    assert summary["trainable"] == sum(p["trainable"] for p in parts.values())


def test_rgbt_train_refuses_a_sam2_file_of_another_trunk(tmp_path, capsys, repo_root, small_synth):
    from timm.models.hieradet_sam2 import HieraDet

    from rgbt_perception.io.sam2_checkpoint import save_sam2_checkpoint
    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.encoder import build_trunk

    # One block short: every tensor it has fits the micro trunk, the last block would stay random.
    full = torch.load(save_sam2_checkpoint(tmp_path / "full.pt", build_trunk(ModelConfig(variant="micro"))),
                      weights_only=True)["model"]
    last = max(int(k.split(".")[3]) for k in full if k.startswith("image_encoder.trunk.blocks."))
    short = tmp_path / "short.pt"
    torch.save({"model": {k: v for k, v in full.items() if f".blocks.{last}." not in k}}, short)
    wider = save_sam2_checkpoint(tmp_path / "wider.pt", HieraDet(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1),
                                                                 global_att_blocks=(3,), num_classes=0))
    for path, described in ((str(short), f"{last} blocks, width 24"), (wider, "4 blocks, width 32")):
        assert _train(repo_root, small_synth, str(tmp_path / "run"), "--init-sam2", path) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rgbt-train: error: SAM2 checkpoint {path!r}: its trunk ({described}) does not match "
                              f"the model's ({last + 1} blocks, width 24)")
        assert "use the SAM2 checkpoint of the model's variant" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()
