"""Model design 3: gated residual fusion, one camera passing unchanged, design-2 files still building design 2,
the inference merge and the ONNX export of the new modules, and the second synthetic world."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rgbt_perception.core.classes import MFNET, SYNTHETIC
from rgbt_perception.io.weights import WeightsMetadata, load_weights, read_metadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet
from rgbt_perception.model.fusion import CrossModalFusion, GatedResidualFusion
from rgbt_perception.model.lora_merge import check_equivalence, inference_model
from rgbt_perception.model.onnx_export import export_onnx

SIZE = (64, 96)
SHIPPED = os.path.join(os.path.dirname(__file__), "..", "rgbt_perception", "data", "micro_synthetic.safetensors")


def _design3(seed: int = 0) -> RGBTNet:
    """micro design 3 with every zero-initialised part (LoRA B, gate output, scene bias, correction
    strength) drawn at random, so that none of the checks below holds by initialisation alone."""
    torch.manual_seed(seed)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE, design=3)).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name or "correct_scale" in name or "gate.2." in name or "scene.mlp.2." in name:
                param.normal_(0.0, 0.5)
    return net


def _inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *SIZE, generator=generator), torch.rand(batch, 1, *SIZE, generator=generator)


@pytest.fixture(scope="module")
def net() -> RGBTNet:
    return _design3()


def test_design_3_builds_the_gated_residual_fusion_and_design_2_the_old_one():
    new = RGBTNet(ModelConfig(variant="micro", input_size=SIZE, design=3))
    old = RGBTNet(ModelConfig(variant="micro", input_size=SIZE))
    assert all(isinstance(f, GatedResidualFusion) for f in [*new.fusion, *new.box_fusion])
    assert all(isinstance(f, CrossModalFusion) for f in [*old.fusion, *old.box_fusion])
    # Design 3 normalises each camera's neck maps (the heads read them unprojected); design 2 keeps its names.
    assert new.necks["rgb"].norms is not None and old.necks["rgb"].norms is None
    assert not any(".norms." in k for k in old.state_dict())
    assert ModelConfig().design == 2  # configs without the key (every design-2 file) build design 2
    with pytest.raises(ValueError, match="model design 4 is not buildable"):
        ModelConfig(design=4)


def test_one_camera_reaches_the_heads_unchanged(net):
    rgb, thermal = _inputs()
    with torch.inference_mode():
        pyramids = net.encode(rgb, thermal)
        for given, name in (((rgb, None), "rgb"), ((None, thermal), "thermal")):
            out = net(*given)
            assert all(torch.equal(a, b) for a, b in zip(out["fused"], pyramids[name]))
            index = 0 if name == "rgb" else 1
            assert all(bool((gate[:, index] == 1).all()) for gate in out["gates"] + out["box_gates"])
        # Per sample: the first sample loses its thermal image, the second keeps both.
        mask = torch.tensor([[True, False], [True, True]])
        masked = net(rgb, thermal, modality_mask=mask)
        both = net(rgb, thermal)
    for level, (got, alone, fused) in enumerate(zip(masked["fused"], pyramids["rgb"], both["fused"])):
        assert torch.equal(got[0], alone[0]), level
        assert torch.allclose(got[1], fused[1], atol=1e-5), level
        # With both cameras present the map is a real mix, not one camera.
        assert not torch.allclose(fused[1], alone[1], atol=1e-3), level


def test_the_other_camera_adds_a_correction_only_when_present():
    fusion = GatedResidualFusion(16, kernel_size=3).eval()
    with torch.no_grad():
        fusion.correct_scale.fill_(1.0)
    rgb, thermal = torch.randn(2, 16, 8, 12), torch.randn(2, 16, 8, 12)
    present = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        out, gate = fusion(rgb, thermal, present)
        fusion.correct_scale.zero_()
        plain, _ = fusion(rgb, thermal, present)
    assert torch.allclose(gate.sum(dim=1), torch.ones(2, 8, 12))
    assert torch.allclose(plain[0], gate[0, :1] * rgb[0] + gate[0, 1:] * thermal[0], atol=1e-6)
    assert not torch.allclose(out[0], plain[0], atol=1e-3)
    assert torch.equal(out[1], rgb[1]) and torch.equal(plain[1], rgb[1])


def test_decoder_reads_the_high_resolution_levels(net):
    rgb, thermal = _inputs(batch=1)
    with torch.inference_mode():
        out = net(rgb, thermal)
    assert [tuple(f.shape[-2:]) for f in out["fused"]] == [(16, 24), (8, 12), (4, 6)]
    assert tuple(out["semantic"].shape) == (1, 9, 16, 24)
    # The stride-4 map changes the masks: zeroing its projection changes the logits.
    head = net.semantic_head
    saved = head.conv_s0.weight.detach().clone()
    with torch.inference_mode():
        head.conv_s0.weight.zero_()
        changed = net(rgb, thermal)["semantic"]
        head.conv_s0.weight.copy_(saved)
    assert not torch.allclose(changed, out["semantic"], atol=1e-4)


def test_merged_inference_copy_matches_design_3(net):
    fast, report = inference_model(net)
    assert report.batched and report.fallback is None and report.merged_layers > 0
    rgb, thermal = _inputs()
    assert check_equivalence(net, fast, (rgb, thermal)) < 1e-3


def test_onnx_export_of_design_3_matches_pytorch(net, tmp_path):
    result = export_onnx(net, tmp_path / "d3.onnx")
    assert result.semantic_max_abs_diff < 1e-3
    assert max(result.max_abs_diff.values()) < 1e-3


def test_design_3_weights_round_trip_and_design_2_files_still_load(net, tmp_path):
    path = tmp_path / "d3.safetensors"
    save_weights(path, net, WeightsMetadata.for_model(net.cfg, SYNTHETIC))
    assert read_metadata(path).model["design"] == 3
    loaded, _ = load_weights(path)
    assert isinstance(loaded.fusion[0], GatedResidualFusion)
    rgb, thermal = _inputs()
    with torch.inference_mode():
        assert torch.allclose(loaded(rgb, thermal)["semantic"], net(rgb, thermal)["semantic"], atol=1e-5)
    # A design-2 file (the demo weights before design 3) still builds design 2.
    old = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE)).eval()
    save_weights(tmp_path / "d2.safetensors", old, WeightsMetadata.for_model(old.cfg, SYNTHETIC))
    loaded_old, metadata = load_weights(tmp_path / "d2.safetensors")
    assert metadata.model["design"] == 2 and isinstance(loaded_old.fusion[0], CrossModalFusion)
    with torch.inference_mode():
        assert torch.allclose(loaded_old(rgb, thermal)["semantic"], old(rgb, thermal)["semantic"], atol=1e-5)


def test_shipped_weights_are_built_by_the_shipped_recipe():
    from training.config import load_config

    recipe = load_config(os.path.join(os.path.dirname(SHIPPED), "..", "..", "config", "train", "synthetic_micro.yaml"))
    shipped, metadata = load_weights(SHIPPED)
    assert (recipe.model["design"], recipe.model["fusion_gate"], recipe.model["fusion_project"]) == (3, "channel", True)
    for key in ("design", "fusion_gate", "fusion_project", "variant", "trunk", "input_size"):
        assert metadata.model[key] == recipe.model[key]
    assert all(f.project is not None and f.per_channel for f in [*shipped.fusion, *shipped.box_fusion])


def test_world_b_writes_the_mfnet_release_layout(tmp_path):
    from training.datasets.mfnet import MFNetDataset
    from training.synth.world_b import generate_world_b

    out = tmp_path / "world_b"
    splits = generate_world_b(str(out), {"train": 3, "val": 0, "test": 2}, seed=0, size=(64, 96))
    assert sorted(splits) == ["test", "train"] and len(splits["train"]) == 3
    assert sorted(os.listdir(out)) == ["images", "labels", "test.txt", "train.txt", "world_b.txt"]
    image = __import__("cv2").imread(str(out / "images" / f"{splits['train'][0]}.png"), -1)
    assert image.shape == (64, 96, 4) and image.dtype == np.uint8
    data = MFNetDataset(str(out), "train", class_set=MFNET)
    assert len(data) == 3
    assert set(data.conditions) <= {"day", "night"} and None not in data.conditions
    # The same seed writes the same files.
    again = tmp_path / "again"
    generate_world_b(str(again), {"train": 3, "val": 0, "test": 2}, seed=0, size=(64, 96))
    for stem in splits["train"]:
        assert (out / "images" / f"{stem}.png").read_bytes() == (again / "images" / f"{stem}.png").read_bytes()
    with pytest.raises(ValueError, match="frame counts"):
        generate_world_b(str(tmp_path / "none"), {"train": 0}, seed=0)


def test_per_channel_gate_passes_one_camera_unchanged_and_mixes_channels_apart():
    torch.manual_seed(0)
    fusion = GatedResidualFusion(16, kernel_size=3, per_channel=True).eval()
    with torch.no_grad():
        fusion.gate[-1].weight.normal_(0.0, 0.5)
    rgb, thermal = torch.randn(2, 16, 8, 12), torch.randn(2, 16, 8, 12)
    present = torch.tensor([[True, True], [False, True]])
    with torch.no_grad():
        out, gate = fusion(rgb, thermal, present)
        weights = fusion.gate(torch.cat([rgb, thermal], dim=1)).view(2, 2, 16, 8, 12).softmax(dim=1)
    assert torch.equal(out[1], thermal[1]) and bool((gate[1, 1] == 1).all())
    # Each channel has its own mix (correction strength starts at zero, so the mix is the output).
    assert torch.allclose(out[0], weights[0, 0] * rgb[0] + weights[0, 1] * thermal[0], atol=1e-6)
    assert float(weights[0, 0].std(dim=0).mean()) > 0.01
    with pytest.raises(ValueError, match="fusion_gate"):
        ModelConfig(design=3, fusion_gate="global")


def test_fusion_projection_is_shared_by_the_fused_map_and_one_camera_and_exports(tmp_path):
    torch.manual_seed(0)
    fusion = GatedResidualFusion(16, kernel_size=3, project=True).eval()
    rgb, thermal = torch.randn(2, 16, 8, 12), torch.randn(2, 16, 8, 12)
    present = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        out, gate = fusion(rgb, thermal, present)
        mix = gate[0, :1] * rgb[0] + gate[0, 1:] * thermal[0]  # correction strength starts at zero
    # One camera: its map through the projection; both: the mix through the same projection.
    assert torch.allclose(out[1], fusion.project(rgb[1:2])[0], atol=1e-6)
    assert torch.allclose(out[0], fusion.project(mix[None])[0], atol=1e-6)
    assert not torch.allclose(out[1], rgb[1], atol=1e-3)

    net = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE, design=3, fusion_project=True)).eval()
    assert all(f.project is not None for f in [*net.fusion, *net.box_fusion])
    assert all(f.project is None for f in _design3().fusion)
    path = tmp_path / "projected.safetensors"
    save_weights(path, net, WeightsMetadata.for_model(net.cfg, SYNTHETIC))
    loaded, metadata = load_weights(path)
    assert metadata.model["fusion_project"] is True and loaded.fusion[0].project is not None
    result = export_onnx(net, tmp_path / "projected.onnx")
    assert result.semantic_max_abs_diff < 1e-3
    with pytest.raises(ValueError, match="fusion_project"):
        ModelConfig(design=3, fusion_project="yes")
