"""Inference-time LoRA: adapters merged per modality, both cameras in one trunk pass, same outputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

from rgbt_perception.backends.torch_engine import AUTOCAST_WEIGHT_LAYERS, store_autocast_weights
from rgbt_perception.model import ModelConfig, RGBTNet
from rgbt_perception.model.lora_merge import (
    CachedPositionEmbedding,
    ModalityLayer,
    Router,
    build_inference_copy,
    check_equivalence,
    inference_model,
    lora_layers,
    merged_layer_count,
)

SIZE = (64, 96)


def _network(trunk: str, seed: int = 0) -> RGBTNet:
    """micro with per-modality LoRA (the frozen-trunk policy always has it) and non-zero adapters:
    peft starts B at zero, which would make merging trivially exact."""
    torch.manual_seed(seed)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE, trunk=trunk)).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    return net


def _inputs(batch: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *SIZE, generator=generator), torch.rand(batch, 1, *SIZE, generator=generator)


@pytest.fixture(scope="module", params=["frozen", "full"])
def net(request) -> RGBTNet:
    return _network(request.param)


def test_merged_batched_network_matches_the_unmerged_one(net):
    layers = len(list(lora_layers(net.encoder)))
    assert layers > 0, "the network under test must carry LoRA layers"
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast, report = inference_model(net)
    assert report.batched and report.fallback is None
    assert report.merged_layers == layers == merged_layer_count(fast)
    assert not any(isinstance(m, LoraLayer) for m in fast.net.encoder.inner.trunk.modules())
    # The original stays as it was (the engine may keep using it elsewhere, e.g. in training).
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    rgb, thermal = _inputs(batch=2)
    with torch.inference_mode():
        for pair in ((rgb, thermal), (rgb, None), (None, thermal)):
            want, got = net(*pair), fast(*pair)
            assert torch.allclose(got["semantic"], want["semantic"], atol=1e-4, rtol=1e-4)
            for part in ("cls", "reg", "ctr"):
                for a, b in zip(got["boxes"][part], want["boxes"][part]):
                    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)
    assert check_equivalence(net, fast, (rgb, thermal)) < 1e-3


def test_both_cameras_take_one_trunk_pass(net):
    fast, _ = inference_model(net)
    encoder = fast.net.encoder
    rgb, thermal = _inputs()
    with torch.inference_mode():
        start = encoder.trunk_passes
        fast(rgb, thermal)
        assert encoder.trunk_passes - start == 1
        fast(rgb, None)
        assert encoder.trunk_passes - start == 2  # one camera: one pass of its own weights


def test_each_half_of_the_batch_gets_its_own_adapter(net):
    """The split layer applies the RGB merge to the first half of the rows and the thermal merge to
    the second half, each equal to peft's base + scale * B @ A of that adapter."""
    _, layer = next(iter(lora_layers(net.encoder)))
    router = Router(("rgb", "thermal"))
    merged = ModalityLayer(layer, router)
    x = torch.randn(4, 5, 7, layer.get_base_layer().in_features)
    base = layer.get_base_layer()
    expected = []
    for half, modality in zip(x.chunk(2), ("rgb", "thermal")):
        lora_a, lora_b = layer.lora_A[modality], layer.lora_B[modality]
        expected.append(base(half) + lora_b(lora_a(half)) * layer.scaling[modality])
    router.mode = "split"
    with torch.no_grad():
        assert torch.allclose(merged(x), torch.cat(expected), atol=1e-5)
        router.mode = "thermal"
        assert torch.allclose(merged(x[2:]), expected[1], atol=1e-5)
        assert torch.allclose(merged(x[2:]), F.linear(x[2:], merged.per_modality["thermal"].weight,
                                                      merged.per_modality["thermal"].bias), atol=1e-6)
    router.mode = "split"
    with pytest.raises(ValueError, match="divisible"):
        merged(x[:3])


class _CastingNet(RGBTNet):
    """Hands its encoder copies of the inputs: a prefetched batched pass could not be matched to them."""

    def encode(self, rgb, thermal):
        return {m: None if image is None else self.necks[m](self.encoder(image * 1.0, m))
                for m, image in (("rgb", rgb), ("thermal", thermal))}


def test_network_that_hides_its_inputs_falls_back_to_a_pass_per_camera():
    torch.manual_seed(0)
    net = _CastingNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE, trunk="frozen")).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    fast, report = inference_model(net)
    assert not report.batched and "does not call its encoder with its own inputs" in report.fallback
    assert merged_layer_count(fast) == report.merged_layers > 0
    assert check_equivalence(net, fast) < 1e-3


def test_unmergeable_adapters_leave_the_network_as_trained(net, monkeypatch):
    """If the merged copy ever disagreed with the trained network, the engine keeps the original."""
    import rgbt_perception.model.lora_merge as lora_merge

    monkeypatch.setattr(lora_merge, "check_equivalence", lambda reference, candidate, inputs=None: 1.0)
    with pytest.warns(RuntimeWarning, match="LoRA merge not used"):
        model, report = inference_model(net)
    assert model is net and report.fallback and "differ by 1" in report.fallback


def test_copy_exposes_the_network_interface(net):
    fast, _ = build_inference_copy(net)
    assert fast.cfg == net.cfg and isinstance(fast.box_head, nn.Module)
    assert fast.net.encoder.channels == net.encoder.channels
    with pytest.raises(ValueError, match="no adapter-free form"):
        fast.net.encoder(_inputs()[0], None)


def test_position_embedding_is_computed_once_per_grid_and_added_exactly(net):
    fast, _ = inference_model(net)
    trunk = fast.net.encoder.inner.trunk
    cached = trunk._pos_embed
    assert isinstance(cached, CachedPositionEmbedding)
    calls = []

    def counting(module, tokens):
        calls.append(tuple(tokens.shape))
        return type(module)._pos_embed(module, tokens)

    cached.compute = counting
    cached.cache.clear()
    tokens = torch.randn(2, SIZE[0] // 4, SIZE[1] // 4, trunk.pos_embed.shape[1])
    plain = type(trunk)._pos_embed(trunk, tokens)
    with torch.inference_mode():
        first, second = cached(tokens), cached(tokens * 1.0)
        other = cached(torch.randn(1, 8, 8, tokens.shape[-1]))
    assert torch.equal(first, plain) and torch.equal(second, plain)
    assert other.shape == (1, 8, 8, tokens.shape[-1])
    assert calls == [(1, *tokens.shape[1:]), (1, 8, 8, tokens.shape[-1])]  # one per grid, at batch 1
    # The training network keeps the original, which follows weight updates.
    assert not isinstance(net.encoder.trunk.__dict__.get("_pos_embed"), CachedPositionEmbedding)


def test_weights_stored_in_bf16_give_what_autocast_gives(net):
    fast, _ = inference_model(net)
    stored, _ = inference_model(net)
    changed = store_autocast_weights(stored, torch.bfloat16)
    layers = [m for m in stored.modules() if isinstance(m, AUTOCAST_WEIGHT_LAYERS)]
    assert changed == len(layers) > 0 and all(m.weight.dtype == torch.bfloat16 for m in layers)
    assert all(p.dtype == torch.float32 for m in stored.modules() if isinstance(m, nn.LayerNorm)
               for p in m.parameters())
    rgb, thermal = _inputs()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = fast(rgb, thermal), stored(rgb, thermal)
    assert torch.equal(want["semantic"], got["semantic"])
    assert all(torch.equal(a, b) for a, b in zip(want["boxes"]["cls"], got["boxes"]["cls"]))
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        store_autocast_weights(stored, torch.float32)


def test_equivalence_is_checked_in_exact_fp32_and_tf32_settings_come_back():
    """TF32 (cuDNN's default on Ampere and later) alone makes two exact rewrites differ by ~5e-3 on a GPU."""
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, rgb, thermal):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            x = rgb if rgb is not None else thermal
            return {"semantic": x, "boxes": x}

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        pair = (torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8))
        assert check_equivalence(Recorder(), Recorder(), pair) == 0.0
        assert len(seen) == 6 and set(seen) == {(False, False)}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
