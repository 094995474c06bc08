"""AdamW parameter groups, parameters kept fixed, and the warm-up + poly learning-rate schedule."""
from __future__ import annotations

import re
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


def freeze_parameters(model: nn.Module, patterns: list[str]) -> int:
    """Turn off the gradient of every trainable parameter whose name matches one of ``patterns``
    (``re.search``); returns how many parameters that froze. A pattern that matches no trainable
    parameter is a ``ValueError`` naming it (a misspelt name would otherwise train everything)."""
    frozen = 0
    for pattern in patterns:
        compiled = re.compile(pattern)
        matched = [p for n, p in model.named_parameters() if p.requires_grad and compiled.search(n)]
        if not matched:
            raise ValueError(f"optim.freeze: {pattern!r} matches no trainable parameter")
        for param in matched:
            param.requires_grad_(False)
        frozen += len(matched)
    return frozen


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


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """Warm-up length in optimizer steps: ``optim.warmup_iters``, or with -1 one sized to the run.

    AdamW's second-moment average spans about ``1 / (1 - beta2)`` steps; until it has, the update
    size is poorly estimated, and a linear warm-up over ``2 / (1 - beta2)`` steps (2000 at 0.999)
    is the untuned rule of Ma and Yarats (2021, "On the adequacy of untuned warmup for adaptive
    optimization"). It is capped at ``optim.warmup_fraction`` of the run's ``total_steps``, so a
    short run on a small data set still spends most of its steps at the full learning rate.
    """
    if cfg.optim.warmup_iters >= 0:
        return cfg.optim.warmup_iters
    untuned = round(2.0 / (1.0 - cfg.optim.betas[1]))
    return max(1, min(untuned, round(cfg.optim.warmup_fraction * total_steps)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """:class:`WarmupPoly` over ``total_steps`` optimizer steps from ``cfg.optim`` (``min_lr`` as a ratio of ``lr``;
    warm-up from :func:`warmup_steps`)."""
    factor = WarmupPoly(total_steps, warmup_steps(cfg, total_steps), cfg.optim.warmup_ratio, cfg.optim.poly_power,
                        cfg.optim.min_lr / cfg.optim.lr if cfg.optim.lr > 0 else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
