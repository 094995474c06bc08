"""Trunk policy: which parameters train under frozen / full, and its round trip through a weights file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from rgbt_perception.core.classes import MFNET
from rgbt_perception.io.weights import (
    METADATA_KEY,
    WeightsError,
    WeightsMetadata,
    load_weights,
    read_metadata,
    save_weights,
)
from rgbt_perception.model import MODEL_DESIGN, ModelConfig, RGBTNet

SIZE = (64, 64)


def _net(trunk: str | None) -> RGBTNet:
    torch.manual_seed(0)
    return RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, trunk=trunk, input_size=SIZE))


def _trunk_base(model: RGBTNet) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.encoder.trunk.named_parameters() if ".lora_" not in n}


def test_default_policy_follows_published_weights():
    # Published SAM2 weights: keep them, adapt with LoRA. micro has none: train it in full.
    assert ModelConfig(variant="micro").trunk == "full"
    for variant in ("tiny", "small", "base_plus", "large"):
        assert ModelConfig(variant=variant).trunk == "frozen"
    assert ModelConfig(variant="tiny", trunk="full").trunk == "full"
    with pytest.raises(ValueError, match="trunk policy must be one of"):
        ModelConfig(variant="micro", trunk="partly")


@pytest.mark.parametrize("policy", ["frozen", "full"])
def test_policy_decides_which_parameters_train_and_receive_gradients(policy):
    model = _net(policy).train()
    assert model.trunk_policy == policy
    base = _trunk_base(model)
    assert all(p.requires_grad == (policy == "full") for p in base.values())
    outside = [p for n, p in model.named_parameters() if not n.startswith("encoder.trunk.")]
    lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    assert all(p.requires_grad for p in outside + lora)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}

    out = model(torch.rand(2, 3, *SIZE), torch.rand(2, 1, *SIZE))
    (out["semantic"].square().mean() + out["aux"].square().mean()).backward()
    grads = [p.grad for p in base.values()]
    if policy == "full":
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
        assert base["patch_embed.proj.weight"].grad is not None
    else:
        assert all(g is None for g in grads)
    # The adapters' switching (peft rewrites requires_grad) leaves the policy intact.
    assert all(p.requires_grad == (policy == "full") for p in _trunk_base(model).values())


@pytest.mark.parametrize("policy", ["frozen", "full"])
def test_policy_round_trips_through_the_weights_file(tmp_path, policy):
    model = _net(policy).eval()
    path = tmp_path / f"{policy}.safetensors"
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    metadata = read_metadata(path)
    assert metadata.model["trunk"] == policy and metadata.model["design"] == MODEL_DESIGN
    assert metadata.trunk_policy == policy
    loaded, _ = load_weights(path)
    assert loaded.cfg.trunk == policy
    assert all(p.requires_grad == (policy == "full") for p in _trunk_base(loaded).values())


def test_design_1_file_still_reads_and_loading_names_the_design(tmp_path):
    # A file written before design 2: no design / trunk / highres_dims / box_dim keys.
    model = _net(None)
    metadata = WeightsMetadata.for_model(model.cfg, MFNET).to_dict()
    for key in ("design", "trunk", "highres_dims", "box_dim"):
        metadata["model"].pop(key)
    path = tmp_path / "design1.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})

    read_back = read_metadata(path)
    assert read_back.class_names == list(MFNET.names)
    assert read_back.trunk_policy == "frozen"
    with pytest.raises(WeightsError, match="model design 1"):
        load_weights(path)
