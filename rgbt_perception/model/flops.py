"""FLOPs of one fused forward, split into the Hiera trunk and everything after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FlopSplit:
    """Floating-point operations of one forward (multiply-add = 2, ``torch.utils.flop_counter``).

    ``trunk``: both modalities' passes through the Hiera trunk (LoRA adapters included);
    ``rest``: necks, fusion and heads (``total - trunk``).
    """

    total: int
    trunk: int

    @property
    def rest(self) -> int:
        return self.total - self.trunk

    @property
    def rest_fraction(self) -> float:
        return self.rest / self.total if self.total else 0.0


def count_flops(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> FlopSplit:
    """Count one eval-mode forward of ``model`` (an ``RGBTNet``) with both modalities.

    Inputs are ``batch,3,H,W`` and ``batch,1,H,W`` on the model's device (``input_size = (H, W)``,
    multiples of 32). The trunk's share is read from the counter's per-module table: the
    ``encoder`` entry (the trunk runs through ``forward_intermediates``, which module hooks do
    not see as a call of the trunk itself) sums both modality passes. The model is left in eval mode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    parameter = next(model.parameters())
    rgb = torch.rand(batch, 3, *input_size, device=parameter.device, dtype=parameter.dtype)
    thermal = torch.rand(batch, 1, *input_size, device=parameter.device, dtype=parameter.dtype)
    counter = FlopCounterMode(display=False)
    # Not under no_grad: the counter's module tracker hooks autograd on views of parameters.
    with counter:
        model(rgb, thermal)
    per_module = counter.get_flop_counts()
    trunk_keys = [k for k in per_module if k.endswith(".encoder") or k == "encoder"]
    if len(trunk_keys) != 1:
        raise RuntimeError(f"cannot find the trunk in the FLOP counter's modules {sorted(per_module)[:8]}")
    trunk = sum(per_module[trunk_keys[0]].values())
    return FlopSplit(total=int(counter.get_total_flops()), trunk=int(trunk))
