"""What a supervised run will train, told before it starts: parameters per part, the trunk's source, the schedule.

``rgbt-train`` prints :func:`summary_lines` on rank 0 before the first step and keeps the same
content as ``model_summary.json`` in the run folder (the transfer study reads its counts there).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig

SUMMARY_FILE = "model_summary.json"
# Top-level parts of RGBTNet in the order of the forward pass; the encoder splits into its trunk and adapters.
PART_NAMES = {
    "trunk": "trunk (Hiera)", "lora": "LoRA adapters", "necks": "necks", "fusion": "mask fusion",
    "box_fusion": "box fusion", "semantic_head": "semantic head", "aux_head": "auxiliary head",
    "box_head": "box head",
}


def part_of(name: str) -> str:
    """The part a parameter belongs to: ``trunk``, ``lora`` or the network's top-level module name."""
    if ".lora_" in name:
        return "lora"
    if name.startswith("encoder."):
        return "trunk"
    return name.split(".", 1)[0]


def parameter_parts(model: nn.Module) -> list[dict[str, Any]]:
    """Per part: ``{"part", "trainable", "total"}`` parameter counts, in the network's order."""
    counts: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        entry = counts.setdefault(part_of(name), [0, 0])
        entry[0] += param.numel() if param.requires_grad else 0
        entry[1] += param.numel()
    order = list(PART_NAMES) + [p for p in counts if p not in PART_NAMES]
    return [{"part": p, "trainable": counts[p][0], "total": counts[p][1]} for p in order if p in counts]


def training_summary(model: nn.Module, cfg: TrainConfig, init_report: dict[str, Any], total_steps: int,
                     warmup: int, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """The JSON-ready summary of a run about to start.

    ``init_report``: what :func:`training.steps.build_model` loaded (``sam2``: load reports per part,
    ``adapters``: keys taken); ``warmup``: the warm-up steps the schedule uses.
    """
    parts = parameter_parts(model)
    trainable = sum(p["trainable"] for p in parts)
    total = sum(p["total"] for p in parts)
    model_cfg = model.cfg
    summary: dict[str, Any] = {
        "variant": model_cfg.variant, "trunk_policy": model_cfg.trunk, "lora_rank": model_cfg.lora_rank,
        "input_size": list(model_cfg.input_size), "parts": parts, "trainable": trainable, "total": total,
        "trainable_share": trainable / max(total, 1), "frozen_patterns": list(cfg.optim.freeze),
        "lr": cfg.optim.lr, "total_steps": total_steps, "warmup_steps": warmup,
        "warmup_rule": "optim.warmup_iters" if cfg.optim.warmup_iters >= 0 else "auto",
        "clip_grad_norm": cfg.optim.clip_grad_norm, "max_nonfinite_steps": cfg.optim.max_nonfinite_steps,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
        "aux_loss": cfg.loss.aux > 0,
    }
    if "sam2" in init_report:
        trunk, head = init_report["sam2"]["trunk"], init_report["sam2"]["semantic_head"]
        summary["sam2"] = {"file": cfg.init.sam2, "trunk_tensors": len(trunk.loaded),
                           "trunk_tensors_of_model": len(trunk.loaded) + len(trunk.missing),
                           "decoder_tensors": len(head.loaded)}
    if "adapters" in init_report:
        summary["adapters"] = {"file": cfg.init.adapters, "tensors": len(init_report["adapters"])}
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as the lines ``rgbt-train`` prints before training."""
    lines = [f"model: {summary['variant']}, trunk {summary['trunk_policy']}, LoRA rank {summary['lora_rank']}, "
             f"input {summary['input_size'][0]}x{summary['input_size'][1]}"]
    width = max(len(PART_NAMES.get(p["part"], p["part"])) for p in summary["parts"])
    for part in summary["parts"]:
        state = "frozen" if part["trainable"] == 0 else (
            "trains" if part["trainable"] == part["total"] else "trains in part")
        if part["part"] == "aux_head" and not summary["aux_loss"]:
            state += " (no loss: loss.aux is 0)"
        lines.append(f"  {PART_NAMES.get(part['part'], part['part']):<{width}}  {part['trainable']:>12,} of "
                     f"{part['total']:>12,} parameters train  {state}")
    lines.append(f"  {'all':<{width}}  {summary['trainable']:>12,} of {summary['total']:>12,} parameters train "
                 f"({100 * summary['trainable_share']:.2f} %)")
    if summary["frozen_patterns"]:
        lines.append(f"kept fixed by optim.freeze: {', '.join(summary['frozen_patterns'])}")
    sam2 = summary.get("sam2")
    if sam2:
        lines.append(f"trunk from SAM2 file {sam2['file']}: {sam2['trunk_tensors']} of "
                     f"{sam2['trunk_tensors_of_model']} trunk tensors, {sam2['decoder_tensors']} mask-decoder "
                     "tensors into the semantic head")
    else:
        lines.append("trunk: random initialisation (no init.sam2)")
    if "adapters" in summary:
        lines.append(f"from adapters file {summary['adapters']['file']}: {summary['adapters']['tensors']} tensors")
    lines.append(f"schedule: lr {summary['lr']:g}, {summary['total_steps']} optimizer steps, warm-up "
                 f"{summary['warmup_steps']} ({summary['warmup_rule']}), gradient clipping "
                 f"{summary['clip_grad_norm'] or 'off'}, mixed precision {summary['amp']}, up to "
                 f"{summary['max_nonfinite_steps']} non-finite steps skipped")
    return lines


def write_summary(summary: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=1)
