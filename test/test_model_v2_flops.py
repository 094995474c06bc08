"""FLOP budget: compute outside the trunk stays a small, size-stable share of the fused forward.

Counted with ``torch.utils.flop_counter`` on tiny at 128x160 and 192x256 rather than at 480x640
(which takes too long for a test): the share hardly moves with the input size (tiny: 8.6 % at
128x160, 8.2 % at 256x320, 9.1 % at 480x640; base_plus 3.3 / 3.2 / 3.7 %, docs/benchmarks.md),
because trunk, necks, fusion and heads all grow with the pixel count.
"""
from __future__ import annotations

import torch

from rgbt_perception.bench.flops import REST_BUDGET
from rgbt_perception.model import ModelConfig, RGBTNet, count_flops


def test_tiny_spends_at_most_a_fifth_outside_the_trunk_at_two_sizes():
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="tiny", num_classes=9, input_size=(128, 160)))
    small = count_flops(model, (128, 160))
    larger = count_flops(model, (192, 256))
    for split in (small, larger):
        assert 0 < split.trunk < split.total
        assert split.rest_fraction <= REST_BUDGET
    # Size-stable: the share at the smaller size stands for the share at 480x640.
    assert abs(small.rest_fraction - larger.rest_fraction) < 0.02
    # Pixel count x2.4 -> FLOPs grow alike (the trunk's global attention a little faster).
    assert 2.2 < larger.total / small.total < 2.8


def test_trunk_share_is_exactly_the_two_encoder_passes():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=(64, 96))).eval()
    split = count_flops(model, (64, 96))
    counter = FlopCounterMode(display=False)
    with counter:
        model.encoder(torch.rand(1, 3, 64, 96), "rgb")
        model.encoder(torch.rand(1, 1, 64, 96), "thermal")
    assert split.trunk == counter.get_total_flops()
    assert split.rest == split.total - split.trunk > 0
