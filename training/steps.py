"""The network of a supervised run and what one step does with a batch.

:func:`build_model` (also used by ``rgbt-export`` to rebuild a checkpoint's network), per-sample
modality masks, the forward pass on a collated batch and the box targets of the criterion.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from training.checkpoint import load_matching, read_tensor_file
from training.config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int, init_report: dict[str, Any] | None = None) -> nn.Module:
    """RGBTNet from ``cfg.model`` (the data set fixes ``num_classes``), with ``init.*`` applied.

    ``init_report``, when given, receives what was loaded: ``"sam2"`` (a ``LoadReport`` per part;
    a file whose trunk is not the variant's is refused) and ``"adapters"`` (the keys taken).
    """
    from rgbt_perception.model import ModelConfig, RGBTNet

    model_cfg = ModelConfig.from_dict({**cfg.model, "num_classes": num_classes})
    model = RGBTNet(model_cfg)
    report = init_report if init_report is not None else {}
    if cfg.init.sam2:
        from rgbt_perception.io.sam2_checkpoint import load_sam2_trunk

        report["sam2"] = load_sam2_trunk(model, cfg.init.sam2)
    if cfg.init.adapters:
        matched = load_matching(model, read_tensor_file(cfg.init.adapters))
        if not matched:
            raise ValueError(f"init.adapters {cfg.init.adapters}: no key matches the model")
        report["adapters"] = matched
    return model


def sample_modality_mask(batch_size: int, modalities: str, dropout: float,
                         generator: torch.Generator | None = None) -> Tensor:
    """``B, 2`` bool (rgb, thermal) availability: single-modality runs fix one column; with
    ``dropout`` > 0 a sample loses one modality (drawn uniformly) with that probability."""
    mask = torch.ones(batch_size, 2, dtype=torch.bool)
    if modalities == "rgb":
        mask[:, 1] = False
    elif modalities == "thermal":
        mask[:, 0] = False
    elif dropout > 0:
        drop = torch.rand(batch_size, generator=generator) < dropout
        which = torch.randint(0, 2, (batch_size,), generator=generator)
        mask[drop, which[drop]] = False
    return mask


def forward_model(model: nn.Module, batch: dict[str, Any], mask: Tensor, device: torch.device,
                  branches: tuple[str, ...] | None = None) -> dict:
    """Run the network on a collated batch with per-sample modality availability ``mask`` (``B, 2``).

    A modality no sample has is not passed at all; a full mask is passed as ``None`` so the
    network takes its fused path without masking. With ``branches`` (both images needed) the
    network returns ``{branch: outputs}``: the fused branch under ``mask`` and each camera alone.
    """
    if branches is not None:
        rgb = batch["rgb"].to(device, non_blocking=True)
        thermal = batch["thermal"].to(device, non_blocking=True)
        return model(rgb, thermal, modality_mask=None if bool(mask.all()) else mask.to(device), branches=branches)
    rgb = batch["rgb"].to(device, non_blocking=True) if bool(mask[:, 0].any()) else None
    thermal = batch["thermal"].to(device, non_blocking=True) if bool(mask[:, 1].any()) else None
    full = bool(mask.all())
    return model(rgb, thermal, modality_mask=None if full or rgb is None or thermal is None else mask.to(device))


def to_float(value: Any) -> Any:
    """Cast every floating tensor in a nested dict/list structure to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(v) for v in value)
    return value


def box_targets(batch: dict[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
    """Per-image ``{"boxes": N, 4 float32 xyxy px, "labels": N int64}`` of a collated batch, on ``device``."""
    return [{"boxes": torch.as_tensor(b, dtype=torch.float32, device=device),
             "labels": torch.as_tensor(labels, dtype=torch.int64, device=device)}
            for b, labels in zip(batch["boxes"], batch["box_labels"])]
