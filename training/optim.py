"""AdamW parameter groups and the warm-up + poly learning-rate schedule."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from training.config import TrainConfig


def is_no_decay(name: str, param: Tensor) -> bool:
    """Biases, norm weights, LoRA-free 1-D tensors, tokens and embeddings get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower() or "token" in name or "pos_embed" in name


def build_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: (decay / no decay) x learning-rate multiplier by name prefix."""
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = 1.0
        for prefix, value in cfg.optim.lr_mult.items():
            if name.startswith(prefix) or f".{prefix}" in f".{name}":
                mult = float(value)
        groups.setdefault((is_no_decay(name, param), mult), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.optim.weight_decay,
         "lr": cfg.optim.lr * mult, "lr_mult": mult}
        for (no_decay, mult), params in sorted(groups.items())
    ]


class WarmupPoly:
    """Learning-rate factor: linear warm-up from ``warmup_ratio`` to 1, then ``(1 - t)^power``.

    Callable on the optimizer step index; ``min_ratio`` is the floor reached at the end.
    """

    def __init__(self, total_steps: int, warmup_steps: int, warmup_ratio: float = 1e-3,
                 power: float = 0.9, min_ratio: float = 0.0) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(min(int(warmup_steps), self.total_steps - 1), 0)
        self.warmup_ratio = warmup_ratio
        self.power = power
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """:class:`WarmupPoly` over ``total_steps`` optimizer steps from ``cfg.optim`` (``min_lr`` as a ratio of ``lr``)."""
    factor = WarmupPoly(total_steps, cfg.optim.warmup_iters, cfg.optim.warmup_ratio, cfg.optim.poly_power,
                        cfg.optim.min_lr / cfg.optim.lr if cfg.optim.lr > 0 else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
