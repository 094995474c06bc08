"""RGBTNet: shapes, modality handling, fusion sensitivity, adapters, trainable set, determinism."""

import pytest
import torch
from timm.models.hieradet_sam2 import HieraDet

from rgbt_perception.model import MODALITIES, VARIANTS, ModelConfig, RGBTNet, count_parameters


@pytest.fixture(scope="module")
def model() -> RGBTNet:
    torch.manual_seed(0)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=5, input_size=(96, 128)))
    # Non-zero LoRA B so that the adapters actually change the trunk's output.
    with torch.no_grad():
        for name, param in net.encoder.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    return net.eval()


def _inputs(batch=1, height=96, width=128, seed=1):
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, height, width, generator=generator)
    thermal = torch.rand(batch, 1, height, width, generator=generator)
    return rgb, thermal


def test_config_round_trip_and_errors():
    cfg = ModelConfig(variant="tiny", num_classes=15, lora_rank=8, input_size=(480, 640))
    assert cfg.neck_dim == 256 and cfg.decoder_dim == 256 and cfg.decoder_mlp_dim == 2048
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig().input_size == (480, 640)
    assert set(VARIANTS) == {"micro", "tiny", "small", "base_plus", "large"}
    with pytest.raises(ValueError, match="unknown model variant"):
        ModelConfig(variant="huge")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"variant": "micro", "colour": 1})
    with pytest.raises(ValueError, match="multiples of 32"):
        ModelConfig(input_size=(100, 128))


def test_micro_is_small_enough_for_the_shipped_weights():
    total, trainable = count_parameters(RGBTNet(ModelConfig(variant="micro", num_classes=15)))
    # About 5 MB in fp16 storage, the shipped format.
    assert total < 2_600_000
    # micro has no published trunk weights: its default trunk policy trains everything.
    assert trainable == total


@pytest.mark.parametrize("size", [(64, 96), (128, 64), (96, 96)])
def test_output_shapes(model, size):
    height, width = size
    rgb, thermal = _inputs(2, height, width)
    with torch.no_grad():
        out = model(rgb, thermal)
    assert out["semantic"].shape == (2, 5, height // 4, width // 4)
    assert "aux" not in out
    widths = (*model.cfg.highres_dims, model.cfg.neck_dim)
    assert [f.shape for f in out["fused"]] == [(2, d, height // s, width // s) for d, s in zip(widths, (4, 8, 16))]
    for stride, cls, reg, ctr in zip(
        model.box_head.strides, out["boxes"]["cls"], out["boxes"]["reg"], out["boxes"]["ctr"]
    ):
        grid = (height // stride, width // stride)
        assert cls.shape == (2, 5, *grid) and reg.shape == (2, 4, *grid) and ctr.shape == (2, 1, *grid)
        assert (reg >= 0).all()
    assert torch.isfinite(out["semantic"]).all()


def test_default_input_size_runs_through_hiera_windowing(model):
    # 480x640 gives a 15x20 stride-32 map: Hiera's windows (8, 4, 8, 4) need internal padding.
    with torch.no_grad():
        out = model(None, torch.rand(1, 1, 480, 640))
    assert out["semantic"].shape == (1, 5, 120, 160)
    assert out["fused"][2].shape[-2:] == (30, 40)


def test_other_sizes_work_after_resizing_like_the_engine(model):
    rgb = torch.rand(1, 3, 100, 150)
    resized = torch.nn.functional.interpolate(rgb, size=model.cfg.input_size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = model(resized, None)
    assert out["semantic"].shape == (1, 5, model.cfg.input_size[0] // 4, model.cfg.input_size[1] // 4)


def test_sizes_not_multiple_of_32_are_rejected_clearly(model):
    rgb, thermal = _inputs(1, 100, 128)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        model(rgb, thermal)
    with pytest.raises(ValueError, match="both modalities are missing"):
        model(None, None)
    with pytest.raises(ValueError, match="thermal must be B,1,H,W"):
        model(None, torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="differ"):
        model(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 96))
    with pytest.raises(ValueError, match="neither modality"):
        model(*_inputs(1, 64, 64), modality_mask=torch.tensor([[False, False]]))


def test_fused_output_depends_on_each_modality(model):
    rgb, thermal = _inputs(1, 64, 96)
    other_rgb, other_thermal = _inputs(1, 64, 96, seed=7)
    with torch.no_grad():
        base = model(rgb, thermal)
        thermal_changed = model(rgb, other_thermal)
        rgb_changed = model(other_rgb, thermal)
    for level in range(3):
        assert not torch.allclose(base["fused"][level], thermal_changed["fused"][level], atol=1e-5)
        assert not torch.allclose(base["fused"][level], rgb_changed["fused"][level], atol=1e-5)
    assert not torch.allclose(base["semantic"], thermal_changed["semantic"], atol=1e-5)
    assert not torch.allclose(base["semantic"], rgb_changed["semantic"], atol=1e-5)
    gate = base["gates"][0]
    assert torch.allclose(gate.sum(dim=1), torch.ones_like(gate[:, 0]))
    assert (gate > 0).all()


def test_each_single_modality_output_follows_that_modality(model):
    # A fusion that takes both streams from one modality (the reference code fused RGB with
    # itself) still reacts to the other modality through rectification when both are present;
    # with only one camera the output must follow that camera.
    rgb, thermal = _inputs(1, 64, 96)
    other_rgb, other_thermal = _inputs(1, 64, 96, seed=7)
    with torch.no_grad():
        pairs = (
            (model(None, thermal), model(None, other_thermal)),
            (model(rgb, None), model(other_rgb, None)),
        )
    for base, changed in pairs:
        for level in range(3):
            assert not torch.allclose(base["fused"][level], changed["fused"][level], atol=1e-5)
        assert not torch.allclose(base["semantic"], changed["semantic"], atol=1e-5)


def test_absent_modality_is_ignored(model):
    rgb, thermal = _inputs(1, 64, 96)
    garbage_rgb = torch.rand(1, 3, 64, 96) * 100
    garbage_thermal = torch.rand(1, 1, 64, 96) * 100
    with torch.no_grad():
        thermal_only = model(None, thermal)
        masked_rgb = model(garbage_rgb, thermal, modality_mask=torch.tensor([[False, True]]))
        rgb_only = model(rgb, None)
        masked_thermal = model(rgb, garbage_thermal, modality_mask=torch.tensor([[True, False]]))
    for a, b in ((thermal_only, masked_rgb), (rgb_only, masked_thermal)):
        torch.testing.assert_close(a["semantic"], b["semantic"], rtol=0, atol=1e-6)
        for level in range(3):
            torch.testing.assert_close(a["fused"][level], b["fused"][level], rtol=0, atol=1e-6)
    assert torch.equal(thermal_only["gates"][1][:, 1], torch.ones_like(thermal_only["gates"][1][:, 1]))
    assert torch.equal(rgb_only["gates"][2][:, 0], torch.ones_like(rgb_only["gates"][2][:, 0]))
    assert not torch.allclose(thermal_only["semantic"], rgb_only["semantic"], atol=1e-5)


def test_per_sample_modality_mask_matches_single_sample_runs(model):
    rgb, thermal = _inputs(3, 64, 64)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        batched = model(rgb, thermal, modality_mask=mask)["semantic"]
        both = model(rgb[:1], thermal[:1])["semantic"]
        rgb_only = model(rgb[1:2], None)["semantic"]
        thermal_only = model(None, thermal[2:3])["semantic"]
    torch.testing.assert_close(batched[0:1], both, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1:2], rgb_only, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[2:3], thermal_only, rtol=1e-4, atol=1e-5)


def test_frozen_trunk_trains_only_lora_neck_fusion_and_heads():
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=5, trunk="frozen", input_size=(96, 128))).eval()
    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        if name.startswith("encoder.trunk."):
            assert param.requires_grad == (".lora_" in name), name
        else:
            assert param.requires_grad, name
    assert set(map(id, model.trainable_parameters())) == {id(p) for p in model.parameters() if p.requires_grad}
    lora_names = [n for n in trainable if ".lora_" in n]
    assert any(".lora_A.rgb." in n for n in lora_names) and any(".lora_A.thermal." in n for n in lora_names)
    assert not any(".lora_" in n and "attn" not in n for n in lora_names)

    # A training step reaches both adapters and leaves the frozen trunk untouched.
    model.train()
    try:
        model.zero_grad()
        out = model(*_inputs(1, 64, 64))
        (out["semantic"].square().mean() + out["aux"].square().mean()).backward()
        params = dict(model.named_parameters())
        for modality in MODALITIES:
            grads = [params[n].grad for n in lora_names if f".lora_A.{modality}." in n]
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), modality
        assert all(p.grad is None for n, p in params.items() if n.startswith("encoder.trunk.") and ".lora_" not in n)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    finally:
        model.zero_grad()
        model.eval()


def test_adapters_are_separate(model):
    image = torch.rand(1, 3, 64, 64)
    gray = image[:, :1]
    with torch.no_grad():
        rgb_before = model.encode_modality(image, "rgb")
        thermal_before = model.encode_modality(gray, "thermal")
        teacher_before = model.encode_modality(gray, None)
        thermal_b = [p for n, p in model.encoder.named_parameters() if ".lora_B.thermal." in n]
        saved = [p.clone() for p in thermal_b]
        try:
            for param in thermal_b:
                param.add_(0.1)
            rgb_after = model.encode_modality(image, "rgb")
            thermal_after = model.encode_modality(gray, "thermal")
            teacher_after = model.encode_modality(gray, None)
        finally:
            for param, value in zip(thermal_b, saved):
                param.copy_(value)
    for before, after in zip(rgb_before, rgb_after):
        assert torch.equal(before, after)
    for before, after in zip(teacher_before, teacher_after):
        assert torch.equal(before, after)
    assert not torch.allclose(thermal_before[-1], thermal_after[-1], atol=1e-4)
    # Grey input through both adapters differs too: the adapters are not shared.
    with torch.no_grad():
        assert not torch.allclose(
            model.encode_modality(gray.expand(-1, 3, -1, -1), "rgb")[-1], thermal_before[-1], atol=1e-4
        )


def test_encode_modality_attention_and_teacher_matches_plain_trunk(model):
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        features, attention = model.encode_modality(x, "rgb", return_attention=True)
    assert [f.shape[-2:] for f in features] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    block = model.encoder.trunk.blocks[model.encoder.trunk.global_att_blocks[-1]]
    tokens = (64 // 16) * (96 // 16)
    assert attention.shape == (2, block.attn.num_heads, tokens, tokens)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, block.attn.num_heads, tokens))

    # The frozen teacher (no adapter) is exactly a plain timm HieraDet with the same weights.
    plain = HieraDet(num_classes=0, **VARIANTS["micro"].hiera_kwargs).eval()
    fresh = RGBTNet(ModelConfig(variant="micro", num_classes=5)).eval()
    fresh.load_trunk_state_dict(plain.state_dict())
    with torch.no_grad():
        expected = plain.forward_intermediates(fresh.encoder.normalize(x), intermediates_only=True)
        got = fresh.encode_modality(x, None)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trunk_state_dict({k: v for k, v in plain.state_dict().items() if "blocks.0." not in k})
    assert all(k.startswith("encoder.trunk.") for k in fresh.state_dict() if "trunk" in k)


def test_eval_mode_is_deterministic(model):
    rgb, thermal = _inputs(1, 64, 96)
    with torch.no_grad():
        first = model(rgb, thermal)
        second = model(rgb, thermal)
    assert torch.equal(first["semantic"], second["semantic"])
    for a, b in zip(first["boxes"]["cls"], second["boxes"]["cls"]):
        assert torch.equal(a, b)


def test_aux_head_is_built_once_and_only_used_in_training(model):
    modules_before = [id(m) for m in model.aux_head.modules()]
    params_before = {n: (id(p), p.detach().clone()) for n, p in model.aux_head.named_parameters()}
    model.train()
    try:
        with torch.no_grad():
            first = model(*_inputs(1, 64, 64))["aux"]
            second = model(*_inputs(1, 64, 64))["aux"]
    finally:
        model.eval()
    assert first.shape == (1, 5, 16, 16)
    assert torch.equal(first, second)
    assert [id(m) for m in model.aux_head.modules()] == modules_before
    for name, param in model.aux_head.named_parameters():
        assert id(param) == params_before[name][0] and torch.equal(param, params_before[name][1])


def test_state_dict_holds_each_tensor_once_under_stable_names(model):
    state = model.state_dict()
    pointers = [t.data_ptr() for t in state.values()]
    assert len(pointers) == len(set(pointers))
    trunk_keys = [k for k in state if k.startswith("encoder.")]
    assert all(k.startswith("encoder.trunk.") for k in trunk_keys)
    assert "encoder.trunk.blocks.0.attn.qkv.base_layer.weight" in state
    assert "encoder.trunk.blocks.0.attn.qkv.lora_A.thermal.weight" in state
    assert "encoder.trunk.patch_embed.proj.weight" in state
    assert not any(k.startswith("encoder.trunk.head.") for k in state)
    assert set(model.encoder.trunk_key_map().values()) == {
        k[len("encoder.trunk.") :] for k in trunk_keys if ".lora_" not in k
    }
