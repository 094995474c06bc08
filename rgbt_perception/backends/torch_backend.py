"""The ``torch`` backend: what :class:`~rgbt_perception.inference.InferenceEngine` runs in PyTorch.

The engine keeps its PyTorch pipeline (autocast at the chosen precision, post-processing on the
device); this module gives it the inference form of the network: the LoRA adapters merged into the
trunk weights per modality, and on a GPU both cameras in one trunk pass
(:mod:`rgbt_perception.model.lora_merge`), checked against the network as trained when it is built.
"""
from __future__ import annotations

import os
from typing import Any

from rgbt_perception.model.lora_merge import MergeReport, inference_model

# Set to 0 to run the network exactly as trained (peft's unmerged adapters, a trunk pass per camera),
# e.g. to compare against it.
MERGE_ENV = "RGBT_MERGE_LORA"


def merge_enabled() -> bool:
    return os.environ.get(MERGE_ENV, "1").strip() not in ("0", "false", "no", "off")


def inference_network(
    model: Any, merge: bool | None = None, batch_modalities: bool | None = None
) -> tuple[Any, MergeReport | None]:
    """``(network to run, merge report)`` for an eval-mode ``RGBTNet`` on its device.

    With ``merge`` (default: on unless ``RGBT_MERGE_LORA=0``) a merged copy is returned (the
    original is not changed); otherwise the network itself and ``None``. ``batch_modalities``
    (default: on a GPU only): both cameras in one trunk pass. On the CPU a batch of two costs what
    two passes cost and PyTorch ran the two merged passes 2-9 % faster (docs/benchmarks.md), while
    a GPU is under-used by batch-1 passes.
    """
    if not (merge_enabled() if merge is None else merge):
        return model, None
    if batch_modalities is None:
        batch_modalities = next(model.parameters()).device.type == "cuda"
    return inference_model(model, batch_modalities=batch_modalities)
