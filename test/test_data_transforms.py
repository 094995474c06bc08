"""Pair-consistent augmentation and the tensors the trainer receives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbt_perception.core.preprocess import ThermalScaling, to_model_inputs
from rgbt_perception.core.registration import warp_thermal_to_rgb
from training.datasets import AugmentConfig, PairTransform, TransformedDataset, collate

H, W = 48, 64
NO_PHOTOMETRIC = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def make_sample(homography: bool = False) -> dict:
    """A warm person (class 2) at rows 10..30, cols 8..20 in RGB pixels; thermal at half
    resolution with a homography when asked."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)
    rgb[10:30, 8:20] = (250, 30, 30)
    label = np.zeros((H, W), np.uint8)
    label[10:30, 8:20] = 2
    label[40:44, 50:60] = 4
    thermal = np.full((H, W), 7000, np.uint16) + rng.integers(0, 20, (H, W)).astype(np.uint16)
    thermal[10:30, 8:20] = 9000
    sample = {
        "rgb": rgb, "thermal": thermal, "label": label,
        "boxes": np.array([[8, 10, 20, 30]], np.float32), "box_labels": np.array([2]),
        "condition": "night", "name": "f0", "homography": None,
    }
    if homography:
        # Thermal camera at half resolution: its pixel (x, y) sees RGB pixel (2x, 2y).
        matrix = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1]])
        sample["thermal"] = thermal[::2, ::2].copy()
        sample["homography"] = matrix
    return sample


def test_eval_transform_equals_inference_preprocessing():
    sample = make_sample(homography=True)
    out = PairTransform((24, 32), augment=None)(sample)
    registered = warp_thermal_to_rgb(sample["thermal"], sample["homography"], (H, W))
    rgb, thermal = to_model_inputs(sample["rgb"], registered, (24, 32), ThermalScaling())
    assert torch.equal(out["rgb"], rgb[0]) and torch.equal(out["thermal"], thermal[0])
    assert out["rgb"].shape == (3, 24, 32) and out["rgb"].dtype == torch.float32
    assert out["thermal"].shape == (1, 24, 32) and out["label"].dtype == torch.int64
    assert out["label"].shape == (24, 32) and out["label"][10, 6].item() == 2
    assert out["boxes"].tolist() == [[4, 5, 10, 15]] and out["box_labels"].tolist() == [2]
    assert out["condition"] == "night" and out["name"] == "f0"


def test_flip_moves_label_boxes_and_thermal_together():
    sample = make_sample()
    plain = PairTransform((H, W), augment=None)(sample)
    flip = AugmentConfig(hflip_prob=1.0, scale_range=(1.0, 1.0), **NO_PHOTOMETRIC)
    flipped = PairTransform((H, W), augment=flip)(sample, rng=3)
    assert torch.equal(flipped["label"], plain["label"].flip(-1))
    assert torch.allclose(flipped["thermal"], plain["thermal"].flip(-1), atol=1e-6)
    assert torch.allclose(flipped["rgb"], plain["rgb"].flip(-1), atol=1.0 / 255)
    assert flipped["boxes"].tolist() == [[W - 20, 10, W - 8, 30]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size,scales", [((40, 56), (0.6, 1.8)), ((20, 28), (0.6, 1.0))])  # 2nd: > 2x shrink
def test_scale_crop_keeps_pairs_consistent(seed, size, scales):
    sample = make_sample(homography=True)
    out = PairTransform(size, augment=AugmentConfig(hflip_prob=0.5, scale_range=scales))(sample, rng=seed)
    assert out["rgb"].shape == (3, *size) and out["thermal"].shape == (1, *size) and out["label"].shape == size
    person = out["label"] == 2
    if person.sum() < 4:
        assert len(out["boxes"]) == 0 or (out["boxes"][:, 2:] - out["boxes"][:, :2]).min() >= 2
        return
    # The thermal hot spot sits on the label blob (weighted centroids within a pixel) ...
    thermal = out["thermal"][0]
    hot = (thermal - thermal[out["label"] != 255].median()).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    hot_centre = torch.stack([(hot * xs).sum(), (hot * ys).sum()]) / hot.sum()
    blob_centre = torch.stack([xs[person].float().mean(), ys[person].float().mean()])
    assert (hot_centre - blob_centre).abs().max() < 1.0, (hot_centre, blob_centre)
    # ... and the box frames the blob.
    ys, xs = torch.nonzero(person, as_tuple=True)
    blob = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert out["box_labels"].tolist() == [2]
    assert torch.allclose(out["boxes"][0], blob, atol=1.01), (out["boxes"], blob)
    # Padding is ignore in the label.
    assert set(out["label"].unique().tolist()) <= {0, 2, 4, 255}


def test_photometric_changes_rgb_only():
    sample = make_sample()
    geometric = dict(hflip_prob=0.5, scale_range=(0.8, 1.3))
    still = PairTransform((H, W), augment=AugmentConfig(**geometric, **NO_PHOTOMETRIC))(sample, rng=11)
    jitter = AugmentConfig(**geometric, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    jittered = PairTransform((H, W), augment=jitter)(sample, rng=11)
    assert torch.equal(still["thermal"], jittered["thermal"])
    assert torch.equal(still["label"], jittered["label"])
    assert torch.equal(still["boxes"], jittered["boxes"])
    assert (still["rgb"] - jittered["rgb"]).abs().mean() > 0.02


def test_seeded_and_per_index_deterministic():
    samples = [make_sample(), make_sample(homography=True)]
    transform = PairTransform((32, 40))
    a = TransformedDataset(samples, transform, seed=5)
    b = TransformedDataset(samples, transform, seed=5)
    for i in (1, 0):  # order does not matter
        assert torch.equal(a[i]["rgb"], b[i]["rgb"]) and torch.equal(a[i]["label"], b[i]["label"])
    draws = {a[0]["rgb"].sum().item()}
    for epoch in range(1, 4):
        a.set_epoch(epoch)
        draws.add(a[0]["rgb"].sum().item())
    assert len(draws) > 1, "epochs must draw other augmentations"


def test_collate_and_missing_label():
    sample = make_sample()
    unlabeled = dict(make_sample(), label=None, boxes=np.zeros((0, 4), np.float32), box_labels=np.zeros(0, np.int64))
    transform = PairTransform((32, 40), augment=None)
    batch = collate([transform(sample), transform(unlabeled)])
    assert batch["rgb"].shape == (2, 3, 32, 40) and batch["thermal"].shape == (2, 1, 32, 40)
    assert batch["label"].shape == (2, 32, 40) and batch["label"].dtype == torch.int64
    assert (batch["label"][1] == 255).all()
    assert [len(b) for b in batch["boxes"]] == [1, 0] and batch["box_labels"][1].dtype == torch.int64
    assert batch["name"] == ["f0", "f0"] and batch["condition"] == ["night", "night"]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
