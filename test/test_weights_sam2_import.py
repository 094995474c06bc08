"""Import of published SAM2 checkpoints (Meta .pt and timm .safetensors layouts) into timm trunks."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.sam.transformer import TwoWayTransformer

from rgbt_perception.io.sam2_checkpoint import (
    SEMANTIC_HEAD_PREFIX,
    export_sam2_trunk,
    import_sam2_checkpoint,
    load_sam2_into_model,
    save_sam2_checkpoint,
)
from rgbt_perception.io.weights import WeightsError
from rgbt_perception.model import ModelConfig, RGBTNet


@pytest.fixture(scope="module")
def meta_tiny() -> Hiera:
    torch.manual_seed(0)
    trunk = Hiera(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    )
    # Random, not the zero-initialised defaults, so a missed positional embedding would show.
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    return trunk.eval()


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory, meta_tiny) -> str:
    torch.manual_seed(1)
    decoder_transformer = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)
    model = {f"image_encoder.trunk.{k}": v for k, v in meta_tiny.state_dict().items()}
    model.update({f"sam_mask_decoder.transformer.{k}": v for k, v in decoder_transformer.state_dict().items()})
    # Parts a SAM2.1 checkpoint also holds, which the import must leave out.
    model["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 768, 1, 1)
    model["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    model["sam_mask_decoder.conv_s0.weight"] = torch.randn(32, 256, 1, 1)
    model["sam_mask_decoder.output_upscaling.0.weight"] = torch.randn(256, 64, 2, 2)
    model["no_obj_embed_spatial"] = torch.randn(1, 64)
    model["obj_ptr_tpos_proj.weight"] = torch.randn(64, 256)
    path = tmp_path_factory.mktemp("sam2") / "sam2_hiera_tiny.pt"
    torch.save({"model": model}, path)
    return str(path)


def _image() -> torch.Tensor:
    return torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))


def test_meta_checkpoint_gives_identical_trunk_outputs(tmp_path, meta_tiny, meta_checkpoint):
    state = import_sam2_checkpoint(meta_checkpoint)
    assert "blocks.0.mlp.fc1.weight" in state and not any("mlp.layers" in k for k in state if "blocks" in k)
    assert not any(k.startswith(("image_encoder", "no_obj", "obj_ptr", "sam_mask_decoder")) for k in state)
    trunk_keys = sorted(k for k in state if not k.startswith(SEMANTIC_HEAD_PREFIX))

    timm_trunk = timm.create_model("sam2_hiera_tiny", pretrained=False).eval()
    report = load_sam2_into_model(timm_trunk, state)["trunk"]
    assert sorted(report.loaded) == trunk_keys and report.skipped == []
    assert sorted(report.missing) == ["head.norm.bias", "head.norm.weight"]  # timm's classifier norm
    with torch.inference_mode():
        expected = meta_tiny(_image())
        got = timm_trunk.forward_intermediates(_image(), intermediates_only=True)
    assert len(got) == len(expected) == 4
    for ours, theirs in zip(got, expected):
        assert ours.shape == theirs.shape
        assert torch.equal(ours, theirs)

    # timm's converted layout: a .safetensors of plain timm names (the classifier norm included).
    converted = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_trunk.state_dict().items()}, str(converted))
    imported = import_sam2_checkpoint(converted)
    assert sorted(imported) == trunk_keys
    features = timm.create_model("sam2_hiera_tiny", pretrained=False, features_only=True).eval()
    report = load_sam2_into_model(features, imported)["trunk"]
    assert sorted(report.loaded) == trunk_keys and report.skipped == [] and report.missing == []
    with torch.inference_mode():
        for ours, theirs in zip(features(_image()), expected):
            assert torch.equal(ours, theirs)


def test_rgbtnet_takes_trunk_and_mask_decoder(meta_tiny, meta_checkpoint):
    state = import_sam2_checkpoint(meta_checkpoint)
    head_keys = sorted(k for k in state if k.startswith(SEMANTIC_HEAD_PREFIX))
    assert "semantic_head.transformer.layers.0.self_attn.q_proj.weight" in head_keys
    assert "semantic_head.conv_s0.weight" in head_keys

    model = RGBTNet(ModelConfig(variant="tiny", num_classes=3, input_size=(128, 128))).eval()
    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    reports = load_sam2_into_model(model, state)
    assert reports["trunk"].skipped == [] and reports["trunk"].missing == []
    # decoder_dim = 256 on the SAM2 sizes: the transformer and output upscaling fit. conv_s0/conv_s1
    # project SAM2's 256-channel neck maps; the lean necks emit 32/64 channels at strides 4/8, so
    # those two are reported as skipped (SAM2's neck itself is not imported either).
    projections = {SEMANTIC_HEAD_PREFIX + "conv_s0.weight"}
    assert sorted(SEMANTIC_HEAD_PREFIX + k for k in reports["semantic_head"].loaded) == sorted(
        set(head_keys) - projections)
    assert reports["semantic_head"].skipped == ["conv_s0.weight"]
    model_state = model.state_dict()
    for key in sorted(set(head_keys) - projections):
        assert torch.equal(model_state[key], state[key])
    assert all(torch.equal(model_state[k], v) for k, v in lora_before.items())

    # The frozen teacher path (no adapter) of the LoRA-wrapped trunk equals Meta's trunk on the
    # normalised image.
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = model.encode_modality(image, None)
        theirs = meta_tiny(model.encoder.normalize(image))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)

    micro = RGBTNet(ModelConfig(variant="micro", num_classes=3, input_size=(64, 64)))
    report = load_sam2_into_model(micro, state)
    assert report["trunk"].loaded == [] and report["semantic_head"].loaded == []
    assert len(report["semantic_head"].skipped) == len(head_keys)


def test_unreadable_checkpoints_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="file not found"):
        import_sam2_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read"):
        import_sam2_checkpoint(garbage)
    no_trunk = tmp_path / "no_trunk.pt"
    torch.save({"model": {"sam_mask_decoder.iou_token.weight": torch.zeros(1, 4)}}, no_trunk)
    with pytest.raises(WeightsError, match="no Hiera trunk"):
        import_sam2_checkpoint(no_trunk)


def test_exported_trunk_with_a_merged_adapter_loads_into_meta_hiera_and_back(tmp_path, meta_tiny):
    torch.manual_seed(4)
    model = RGBTNet(ModelConfig(variant="tiny", num_classes=3, input_size=(128, 128))).eval()
    with torch.no_grad():  # non-zero adapters (B starts at zero), different per modality
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.normal_(std=0.05)
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        adapted = model.encode_modality(image, "rgb")
        frozen = model.encode_modality(image, None)

    state = export_sam2_trunk(model, merge_adapter="rgb")
    assert all(k.startswith("image_encoder.trunk.") and "lora_" not in k and "base_layer" not in k for k in state)
    meta = type(meta_tiny)(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                           window_pos_embed_bkg_spatial_size=(7, 7)).eval()
    meta.load_state_dict({k[len("image_encoder.trunk."):]: v for k, v in state.items()}, strict=True)
    with torch.inference_mode():
        theirs = meta(model.encoder.normalize(image))
    for ours, reference in zip(adapted, theirs):
        torch.testing.assert_close(reference, ours, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(adapted[-1], frozen[-1], atol=1e-3)  # the merge did something

    # Round trip through a file: the frozen path of a fresh model equals the adapted trunk.
    path = save_sam2_checkpoint(tmp_path / "trunk.pt", model, merge_adapter="rgb")
    fresh = RGBTNet(ModelConfig(variant="tiny", num_classes=3, input_size=(128, 128))).eval()
    report = load_sam2_into_model(fresh, import_sam2_checkpoint(path))["trunk"]
    assert report.skipped == [] and report.missing == []
    with torch.inference_mode():
        for ours, reference in zip(fresh.encode_modality(image, None), adapted):
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)

    plain = export_sam2_trunk(model)
    assert plain.keys() == state.keys()
    params = dict(model.named_parameters())
    assert torch.equal(plain["image_encoder.trunk.blocks.0.attn.qkv.weight"],
                       params["encoder.trunk.blocks.0.attn.qkv.base_layer.weight"])
    assert not torch.equal(state["image_encoder.trunk.blocks.0.attn.qkv.weight"],
                           params["encoder.trunk.blocks.0.attn.qkv.base_layer.weight"])
    assert torch.equal(plain["image_encoder.trunk.blocks.0.mlp.layers.0.weight"],
                       params["encoder.trunk.blocks.0.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="no LoRA adapter named 'depth'"):
        export_sam2_trunk(model, merge_adapter="depth")

    # A bare timm Hiera exports too; its classifier head is not part of SAM2's trunk.
    bare = export_sam2_trunk(timm.create_model("sam2_hiera_tiny", pretrained=False))
    assert not any(".head." in k for k in bare)
    meta.load_state_dict({k[len("image_encoder.trunk."):]: v for k, v in bare.items()}, strict=True)
