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
