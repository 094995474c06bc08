"""Heads: SAM2 two-way transformer parity, semantic/aux shapes, FCOS box loss and decoding."""

import torch
from sam2.modeling.sam.transformer import TwoWayTransformer as Sam2TwoWayTransformer

from rgbt_perception.model.heads import AuxiliaryHead, BoxHead, SemanticHead, TwoWayTransformer


def test_sam2_mask_decoder_transformer_weights_load_and_match():
    torch.manual_seed(0)
    reference = Sam2TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048).eval()
    ours = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048).eval()
    assert set(ours.state_dict()) == set(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    image = torch.randn(2, 256, 6, 8)
    image_pe = torch.randn(2, 256, 6, 8)
    tokens = torch.randn(2, 5, 256)
    with torch.no_grad():
        expected_tokens, expected_image = reference(image, image_pe, tokens)
        got_tokens, got_image = ours(image, image_pe, tokens)
    torch.testing.assert_close(got_tokens, expected_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_image, expected_image, rtol=0, atol=1e-6)
    # The semantic head holds that transformer under "transformer." (mask decoder naming).
    head = SemanticHead(256, num_classes=3, dim=256, num_heads=8, mlp_dim=2048)
    head.transformer.load_state_dict(reference.state_dict(), strict=True)
    assert {"conv_s0.weight", "conv_s1.weight", "output_upscaling.0.weight", "output_upscaling.3.weight"} <= set(
        head.state_dict()
    )


def test_semantic_and_aux_heads_give_stride4_logits_per_class():
    torch.manual_seed(0)
    # Lean pyramid: narrow high-resolution levels, the wide map at stride 16.
    fused = [torch.randn(2, d, 96 // s, 64 // s) for d, s in zip((8, 16, 32), (4, 8, 16))]
    semantic = SemanticHead((8, 16, 32), num_classes=4, dim=64, num_heads=4, mlp_dim=128)
    aux = AuxiliaryHead((8, 16, 32), num_classes=4)
    logits = semantic(fused)
    assert logits.shape == (2, 4, 24, 16)
    assert aux(fused).shape == (2, 4, 24, 16)
    # Class tokens make the classes differ, and each sample only sees its own features.
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    single = semantic([f[1:] for f in fused])
    torch.testing.assert_close(single, logits[1:], rtol=1e-4, atol=1e-5)


def _toy_features(dim=16, height=128, width=128):
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(1, dim, height // s, width // s, generator=generator) for s in (4, 8, 16)]


def test_box_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    head = BoxHead(16, num_classes=3, num_convs=1)
    fused = _toy_features(height=64, width=96)
    targets = [
        {"boxes": torch.tensor([[4.0, 8.0, 36.0, 40.0], [44.0, 12.0, 92.0, 60.0]]), "labels": torch.tensor([1, 2])}
    ]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        losses = head.loss(head(fused), targets)
        assert set(losses) == {"loss_cls", "loss_box", "loss_ctr", "loss"}
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_box"] > 0  # both boxes got positive locations
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.5 * history[0]
    # After fitting, the decoded top detections are the two boxes with their classes.
    detections = head.decode(head(fused), score_threshold=0.05, nms_iou=0.5, max_detections=10)[0]
    assert set(detections["labels"][:2].tolist()) == {1, 2}
    # An image without boxes gives a pure background loss.
    empty = head.loss(head(fused), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert torch.isfinite(empty["loss"]) and empty["loss_box"] == 0


def test_box_targets_respect_level_size_ranges():
    head = BoxHead(16, num_classes=2, num_convs=1)
    outputs = head(_toy_features(height=256, width=256))
    points = head._points(outputs)
    sizes = [len(p) for p in points]
    small = head._targets(points, torch.tensor([[100.0, 100.0, 140.0, 140.0]]), torch.tensor([1]))[0]
    large = head._targets(points, torch.tensor([[10.0, 10.0, 250.0, 250.0]]), torch.tensor([0]))[0]
    small_levels = [int((c >= 0).sum()) for c in small.split(sizes)]
    large_levels = [int((c >= 0).sum()) for c in large.split(sizes)]
    assert small_levels[0] > 0 and small_levels[2] == 0
    assert large_levels[2] > 0 and large_levels[0] == 0
    assert set(small[small >= 0].tolist()) == {1} and set(large[large >= 0].tolist()) == {0}


def test_decode_returns_boxes_inside_the_image():
    torch.manual_seed(0)
    head = BoxHead(16, num_classes=3, num_convs=1).eval()
    height, width = 64, 96
    outputs = head(_toy_features(height=height, width=width))
    # Large regressions push raw boxes beyond the borders; decode clips them.
    outputs["reg"] = [r * 0 + 500.0 for r in outputs["reg"]]
    outputs["cls"] = [c * 0 + 3.0 for c in outputs["cls"]]
    results = head.decode(outputs, score_threshold=0.1, nms_iou=0.5, max_detections=7)
    assert len(results) == 1
    boxes = results[0]["boxes"]
    assert 0 < len(boxes) <= 7
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert results[0]["scores"].shape == results[0]["labels"].shape == (len(boxes),)
    assert (results[0]["scores"][:-1] >= results[0]["scores"][1:]).all()
    nothing = head.decode(outputs, score_threshold=1.1, nms_iou=0.5, max_detections=7)[0]
    assert nothing["boxes"].shape == (0, 4)
