"""``rgbt-bench --flops``: FLOPs of one fused forward per variant, trunk against the rest."""
from __future__ import annotations

from typing import Any, Sequence

# Compute outside the trunk (necks, fusion, heads) should stay a small part of a fused forward.
REST_BUDGET = 0.20


def measure_flops(variants: Sequence[str], input_size: Sequence[int], seed: int = 0) -> list[dict[str, Any]]:
    """One row per variant: GFLOP of the whole fused forward (both modalities, batch 1, eval
    mode), of the trunk (both passes) and of the rest, at ``input_size = (H, W)``."""
    import gc

    import torch

    from rgbt_perception.bench.runners import build_model
    from rgbt_perception.model import count_flops, count_parameters

    rows = []
    for variant in variants:
        model, _ = build_model(variant, input_size, seed)
        split = count_flops(model, tuple(input_size))
        total, trainable = count_parameters(model)
        rows.append({
            "variant": variant,
            "input_size": list(input_size),
            "trunk_policy": model.cfg.trunk,
            "parameters_total": total,
            "parameters_trainable": trainable,
            "gflop_total": split.total / 1e9,
            "gflop_trunk": split.trunk / 1e9,
            "gflop_rest": split.rest / 1e9,
            "rest_fraction": split.rest_fraction,
        })
        del model
        gc.collect()
        torch.manual_seed(seed)
    return rows


def render_flops(rows: Sequence[dict[str, Any]], command: str) -> str:
    """Markdown table of :func:`measure_flops` rows."""
    lines = [
        f"FLOPs of one fused forward (RGB + thermal, batch 1, eval mode; `torch.utils.flop_counter`, "
        f"multiply-add = 2), from `{command}`. Trunk = both passes through the Hiera trunk with their "
        f"LoRA adapters; rest = necks, fusion and heads. Budget: rest <= {REST_BUDGET:.0%} of the total.",
        "",
        "| variant | input | trunk policy | GFLOP total | trunk | rest | rest share | within budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        height, width = row["input_size"]
        lines.append(
            f"| {row['variant']} | {height}x{width} | {row['trunk_policy']} | {row['gflop_total']:.1f} | "
            f"{row['gflop_trunk']:.1f} | {row['gflop_rest']:.1f} | {row['rest_fraction']:.1%} | "
            f"{'yes' if row['rest_fraction'] <= REST_BUDGET else 'no'} |"
        )
    return "\n".join(lines) + "\n"
