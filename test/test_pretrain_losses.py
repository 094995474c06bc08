"""Label-free adaptation losses on tiny hand-made tensors (values worked out by hand)."""
from __future__ import annotations

import math

import pytest
import torch

from training.pretrain.cmss import (
    CMSSConfig,
    MaskTokens,
    cmss_scores,
    complementary_masks,
    curriculum_target,
    drop_modalities,
    fit_gmm_1d,
    masked_patch_embedding,
    masked_reconstruction_loss,
    normalized_patch_targets,
    patchify,
)
from training.pretrain.pccl import (
    PCCLConfig,
    attention_threshold_targets,
    cosine_logits,
    feature_loss,
    gram_loss,
    pccl_loss,
)


def test_attention_targets_keep_the_patch_that_crosses_the_threshold():
    attention = torch.tensor([[
        [0.5, 0.3, 0.2],    # 0.5 < 0.6, 0.5 + 0.3 crosses -> keys 0 and 1
        [0.1, 0.7, 0.2],    # 0.7 alone reaches it -> key 1
        [0.25, 0.35, 0.4],  # 0.4, then 0.35 crosses -> keys 2 and 1
    ]])
    targets = attention_threshold_targets(attention, threshold=0.6)
    assert targets.tolist() == [[[1, 1, 0], [0, 1, 0], [0, 1, 1]]]


def test_attention_targets_stop_when_the_threshold_is_reached_exactly():
    attention = torch.tensor([[[0.5, 0.25, 0.25], [0.125, 0.125, 0.75], [0.25, 0.25, 0.5]]])
    targets = attention_threshold_targets(attention, threshold=0.5)
    assert targets.tolist() == [[[1, 0, 0], [0, 0, 1], [0, 0, 1]]]


def test_attention_targets_average_heads_4x4():
    head_a = torch.tensor([
        [0.7, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.7],
        [0.0, 0.0, 1.0, 0.0],
        [0.25, 0.25, 0.25, 0.25],
    ])
    head_b = torch.tensor([
        [0.1, 0.7, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.7],
        [0.0, 0.0, 0.0, 1.0],
        [0.25, 0.25, 0.25, 0.25],
    ])
    attention = torch.stack([head_a, head_b])[None]  # 1, 2 heads, 4, 4
    targets = attention_threshold_targets(attention, threshold=0.6)
    # Mean rows: [0.4, 0.4, 0.1, 0.1] -> 0.4 then 0.4 crosses; [0.1, 0.1, 0.1, 0.7] -> 0.7;
    # [0, 0, 0.5, 0.5] -> both halves; uniform -> three quarters reach 0.75 >= 0.6.
    assert targets[0, 0].tolist() == [1, 1, 0, 0]
    assert targets[0, 1].tolist() == [0, 0, 0, 1]
    assert targets[0, 2].tolist() == [0, 0, 1, 1]
    assert targets[0, 3].sum().item() == 3


def test_attention_targets_reject_non_square_attention():
    with pytest.raises(ValueError, match="B,heads,N,N"):
        attention_threshold_targets(torch.rand(1, 3, 4))


def _bce(logit: float, target: float) -> float:
    prob = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(prob) + (1.0 - target) * math.log(1.0 - prob))


def test_pccl_loss_matches_hand_computed_bce():
    temperature = 0.5
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])       # unit directions (1,0), (0,1)
    teacher = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])       # (1,0), (1,1)/sqrt(2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    root_half = 1.0 / math.sqrt(2.0)
    cos = [[1.0, root_half], [0.0, root_half]]  # cos[i][j] = student_i . teacher_j
    logits = cosine_logits(student, teacher, temperature)
    assert torch.allclose(logits, torch.tensor(cos)[None] / temperature, atol=1e-6)
    forward = sum(_bce(cos[i][j] / temperature, targets[0, i, j].item()) for i in range(2) for j in range(2)) / 4
    backward = sum(_bce(cos[j][i] / temperature, targets[0, i, j].item()) for i in range(2) for j in range(2)) / 4
    loss = pccl_loss(student, teacher, targets, temperature)
    assert loss.item() == pytest.approx(0.5 * (forward + backward), rel=1e-5)


def test_pccl_loss_three_embeddings_default_temperature_and_gradients():
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], requires_grad=True)
    # Patch 2 belongs with patch 0 (attention target), and the teacher agrees.
    targets = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]])
    cos = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    t = 0.04
    forward = sum(_bce(cos[i][j] / t, targets[0, i, j].item()) for i in range(3) for j in range(3)) / 9
    backward = sum(_bce(cos[j][i] / t, targets[0, i, j].item()) for i in range(3) for j in range(3)) / 9
    loss = pccl_loss(student, teacher, targets)
    assert loss.item() == pytest.approx(0.5 * (forward + backward), rel=1e-5)
    loss.backward()
    assert teacher.grad is None  # the teacher is never trained
    # Student patch 2 is orthogonal to its positives: the gradient pulls it towards (1, 0, 0).
    assert student.grad[0, 2, 0].item() < 0


def test_gram_loss_compares_patch_relations_not_coordinates():
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])       # (1,0), (1,1)/sqrt(2): cosine 1/sqrt(2)
    rotated = torch.tensor([[[0.0, 2.0], [-1.0, 1.0]]])      # the same two directions turned by 90 degrees
    assert gram_loss(rotated, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # Student patches at right angles: the off-diagonal cosines differ by 1/sqrt(2), twice in four entries.
    student = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]], requires_grad=True)
    loss = gram_loss(student, teacher)
    assert loss.item() == pytest.approx(2 * 0.5 / 4, rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_feature_loss_is_one_minus_the_mean_patch_cosine():
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    student = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])       # cosines 1 and 1/sqrt(2)
    assert feature_loss(student, teacher).item() == pytest.approx(1 - (1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    rotated = torch.tensor([[[0.0, 2.0], [-1.0, 1.0]]])      # relations kept, directions not: cosines 0, 0
    assert feature_loss(rotated, teacher).item() == pytest.approx(1.0, abs=1e-6)


def test_pccl_config_names_an_unknown_rgb_loss():
    with pytest.raises(ValueError, match="rgb_loss must be one of .*'cosine'"):
        PCCLConfig(rgb_loss="cosine")


def test_cmss_of_known_token_pairs():
    rgb = torch.tensor([[[3.0, -3.0], [1.0, -1.0], [2.0, 0.0], [1.0, -1.0]]])
    thermal = torch.tensor([[[1.0, -1.0], [-1.0, 1.0], [0.0, 2.0], [1.0, -1.0]]])
    # raw = cos * sqrt(var_r * var_t): 1 * sqrt(9 * 1) = 3, -1 * 1 = -1, 0 * 1 = 0, 1 * 1 = 1.
    # min-max over the batch: (raw + 1) / 4.
    scores = cmss_scores(rgb, thermal)
    assert torch.allclose(scores, torch.tensor([[1.0, 0.0, 0.25, 0.5]]), atol=1e-6)


def test_cmss_is_normalised_over_the_whole_batch_and_zero_when_flat():
    rgb = torch.tensor([[[1.0, -1.0]], [[2.0, -2.0]]])
    thermal = torch.tensor([[[1.0, -1.0]], [[2.0, -2.0]]])
    # raw 1 and 4 (sqrt(4 * 4)): the batch's minimum maps to 0, its maximum to 1.
    assert cmss_scores(rgb, thermal).flatten().tolist() == [0.0, 1.0]
    assert cmss_scores(rgb[:1], thermal[:1]).tolist() == [[0.0]]


def test_gmm_recovers_well_separated_means():
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([
        torch.randn(300, generator=generator) * 0.1 + 10.0,
        torch.randn(200, generator=generator) * 0.1,
        torch.randn(100, generator=generator) * 0.1 + 5.0,
    ])
    mixture = fit_gmm_1d(values, components=3, iterations=10)
    assert torch.allclose(mixture.means, torch.tensor([0.0, 5.0, 10.0]), atol=0.05)
    assert torch.allclose(mixture.weights, torch.tensor([2 / 6, 1 / 6, 3 / 6]), atol=0.01)
    assert torch.allclose(mixture.variances.sqrt(), torch.full((3,), 0.1), atol=0.03)
    assert mixture.responsibilities.shape == (600, 3)
    # Deterministic: the same data give the same fit.
    again = fit_gmm_1d(values, components=3, iterations=10)
    assert torch.equal(again.means, mixture.means)


def test_complementary_masks_never_overlap_and_cover_every_patch():
    cfg = CMSSConfig(mask_ratio=0.5)
    scores = torch.rand(4, 24, generator=torch.Generator().manual_seed(1))
    for progress in (0.0, 0.5, 1.0):
        rgb_mask, thermal_mask, _ = complementary_masks(scores, progress, cfg, torch.Generator().manual_seed(2))
        assert not (rgb_mask & thermal_mask).any()
        assert (rgb_mask | thermal_mask).all()
        # Even samples guide thermal, odd ones RGB: the guided modality masks exactly half.
        assert thermal_mask[0::2].sum(dim=1).tolist() == [12, 12]
        assert rgb_mask[1::2].sum(dim=1).tolist() == [12, 12]


def test_modality_drop_is_the_extreme_complementary_pair():
    rgb_mask = torch.zeros(64, 6, dtype=torch.bool)
    rgb_mask[:, :3] = True
    rgb_out, thermal_out, present = drop_modalities(rgb_mask, ~rgb_mask, 0.5, torch.Generator().manual_seed(0))
    assert not (rgb_out & thermal_out).any() and (rgb_out | thermal_out).all()
    rgb_dropped, thermal_dropped = ~present[:, 0], ~present[:, 1]
    assert not (rgb_dropped & thermal_dropped).any()
    assert rgb_out[rgb_dropped].all() and not rgb_out[thermal_dropped].any()  # all masked / all visible
    kept = present.all(dim=1)
    assert torch.equal(rgb_out[kept], rgb_mask[kept])
    assert 16 < int((~kept).sum()) < 48 and int(rgb_dropped.sum()) > 0 and int(thermal_dropped.sum()) > 0


def test_masking_moves_from_easy_to_hard_patches():
    cfg = CMSSConfig(mask_ratio=0.25)
    generator = torch.Generator().manual_seed(3)
    # Three clusters of CMSS values in every sample.
    low = torch.rand(8, 100, generator=generator) * 0.1
    mid = torch.rand(8, 100, generator=generator) * 0.1 + 0.45
    high = torch.rand(8, 100, generator=generator) * 0.1 + 0.9
    scores = torch.cat([low, mid, high], dim=1)
    easy_rgb, easy_thermal, _ = complementary_masks(scores, 0.0, cfg, torch.Generator().manual_seed(4))
    hard_rgb, hard_thermal, _ = complementary_masks(scores, 1.0, cfg, torch.Generator().manual_seed(4))
    guided_easy = torch.cat([easy_thermal[0::2], easy_rgb[1::2]])
    guided_hard = torch.cat([hard_thermal[0::2], hard_rgb[1::2]])
    ordered = torch.cat([scores[0::2], scores[1::2]])
    share_high_easy = (guided_easy & (ordered > 0.8)).sum() / guided_easy.sum()
    share_high_hard = (guided_hard & (ordered > 0.8)).sum() / guided_hard.sum()
    assert share_high_easy.item() == pytest.approx(0.6, abs=0.1)
    assert share_high_hard.item() == pytest.approx(0.1, abs=0.1)
    assert curriculum_target(0.5).tolist() == pytest.approx([0.35, 0.3, 0.35])


def test_patchify_layout_and_normalised_targets():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 4)
    assert patches[0, 0].tolist() == [0, 1, 4, 5]
    assert patches[0, 3].tolist() == [10, 11, 14, 15]
    targets = normalized_patch_targets(image, 2)
    # Every patch is (a, a+1, a+4, a+5): mean a+2.5, population variance (2 * 2.5² + 2 * 1.5²) / 4 = 4.25.
    expected = torch.tensor([-2.5, -1.5, 1.5, 2.5]) / math.sqrt(4.25 + 1e-6)
    assert torch.allclose(targets[0, 2], expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 1, 5, 4), 2)


def test_reconstruction_loss_counts_only_masked_patches():
    prediction = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[True, False, True]])
    # Per-patch MSE: 1, 9, 0; masked mean over patches 0 and 2: 0.5.
    assert masked_reconstruction_loss(prediction, target, mask).item() == pytest.approx(0.5)


def test_mask_token_replaces_masked_patch_embeddings_only():
    tokens = MaskTokens(dim=3)
    embed = torch.nn.Conv2d(1, 3, kernel_size=1)

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = embed

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).permute(0, 2, 3, 1)

    patch_embed = ChannelsLast()
    image = torch.rand(1, 1, 4, 6)
    mask = torch.tensor([[[True, False, False], [False, False, True]]])  # 2x3 grid over 4x6 tokens
    plain = patch_embed(image)
    with masked_patch_embedding(patch_embed, tokens, mask, "thermal"):
        masked = patch_embed(image)
    dense = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)[0]
    assert torch.equal(masked[0][~dense], plain[0][~dense])
    assert torch.allclose(masked[0][dense], tokens.tokens["thermal"].expand(int(dense.sum()), 3))
    # The hook is gone afterwards.
    assert torch.equal(patch_embed(image), plain)
