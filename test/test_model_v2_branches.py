"""Modality-loss robustness: per-camera branches from one trunk pass, and per-task fusion."""
from __future__ import annotations

import pytest
import torch

from rgbt_perception.model import BRANCHES, ModelConfig, RGBTNet


@pytest.fixture(scope="module")
def model() -> RGBTNet:
    torch.manual_seed(0)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=4, input_size=(64, 96)))
    with torch.no_grad():
        for name, param in net.encoder.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    return net.eval()


def _pair(batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 64, 96, generator=generator), torch.rand(batch, 1, 64, 96, generator=generator)


def _same(a, b):
    torch.testing.assert_close(a["semantic"], b["semantic"], rtol=1e-4, atol=1e-5)
    for key in ("cls", "reg", "ctr"):
        for x, y in zip(a["boxes"][key], b["boxes"][key]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_branches_equal_the_single_camera_and_fused_forwards(model):
    rgb, thermal = _pair()
    with torch.no_grad():
        branches = model.forward_branches(rgb, thermal)
        assert set(branches) == set(BRANCHES)
        _same(branches["fused"], model(rgb, thermal))
        _same(branches["rgb"], model(rgb, None))
        _same(branches["thermal"], model(None, thermal))
        # The fused branch honours a per-sample mask like forward does.
        mask = torch.tensor([[True, False], [True, True]])
        _same(model.forward_branches(rgb, thermal, mask, branches=("fused",))["fused"], model(rgb, thermal, mask))
        # Also reachable through forward (so a DDP wrapper sees the call).
        _same(model(rgb, thermal, branches=("rgb",))["rgb"], branches["rgb"])
    with pytest.raises(ValueError, match="branches"):
        model.forward_branches(rgb, thermal, branches=("depth",))
    with pytest.raises(ValueError, match="both images"):
        model.forward_branches(rgb, None)


def test_single_camera_supervision_reaches_only_that_cameras_path(model):
    rgb, thermal = _pair()
    model.train()
    try:
        for branch, silent in (("rgb", "thermal"), ("thermal", "rgb")):
            model.zero_grad()
            out = model.forward_branches(rgb, thermal, branches=(branch,))[branch]
            (out["semantic"].square().mean() + out["boxes"]["cls"][0].square().mean()).backward()
            for modality, expect in ((branch, True), (silent, False)):
                grads = [p.grad for p in model.necks[modality].parameters()]
                moved = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
                assert moved == expect, (branch, modality)
            lora = [p.grad for n, p in model.named_parameters() if f".lora_A.{silent}." in n]
            assert all(g is None or float(g.abs().sum()) == 0 for g in lora)
    finally:
        model.zero_grad()
        model.eval()


def test_each_task_has_its_own_fusion_and_boxes_follow_both_cameras(model):
    rgb, thermal = _pair(batch=1)
    other_rgb, other_thermal = _pair(batch=1, seed=9)
    assert {id(p) for p in model.fusion.parameters()}.isdisjoint(id(p) for p in model.box_fusion.parameters())
    with torch.no_grad():
        # Perturb the box fusion only: masks stay, boxes change.
        base = model(rgb, thermal)
        saved = [p.clone() for p in model.box_fusion.parameters()]
        try:
            for param in model.box_fusion.parameters():
                param.add_(0.05)
            moved = model(rgb, thermal)
        finally:
            for param, value in zip(model.box_fusion.parameters(), saved):
                param.copy_(value)
        assert torch.equal(base["semantic"], moved["semantic"])
        assert not torch.allclose(base["boxes"]["cls"][0], moved["boxes"]["cls"][0])
        assert [g.shape[-2:] for g in base["box_gates"]] == [(8, 12), (4, 6)]
        for changed in (model(other_rgb, thermal), model(rgb, other_thermal)):
            assert not torch.allclose(base["boxes"]["cls"][0], changed["boxes"]["cls"][0], atol=1e-6)
