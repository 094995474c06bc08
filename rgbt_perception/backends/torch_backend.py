"""The ``torch`` backend: what :class:`~rgbt_perception.inference.InferenceEngine` runs in PyTorch.

The engine keeps its PyTorch pipeline (autocast at the chosen precision, post-processing on the
device); this module gives it the inference form of the network: the LoRA adapters merged into the
trunk weights per modality, and on a GPU both cameras in one trunk pass
(:mod:`rgbt_perception.model.lora_merge`), checked against the network as trained when it is built.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rgbt_perception.model.lora_merge import MergeReport, inference_model

# Layers whose weights autocast casts to the low precision on every call (its lower-precision ops:
# linear, convolutions); storing them in that precision once gives the same products without the casts.
AUTOCAST_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d)

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


def store_autocast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights and biases of ``model``'s linear and convolution layers in ``dtype`` (bf16/fp16).

    For a network that only ever runs under ``torch.autocast(dtype=dtype)``: autocast casts these
    weights to ``dtype`` at every call (about 5 % of a micro frame on the CPU); cast once, the same
    rounding gives identical outputs. Norms, embeddings and other parameters stay as they are
    (autocast runs norms in fp32). Returns the number of layers changed. Do not use the model
    without autocast afterwards.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"store_autocast_weights takes bfloat16 or float16, got {dtype}")
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AUTOCAST_WEIGHT_LAYERS):
                for name in ("weight", "bias"):
                    param = getattr(module, name, None)
                    if param is not None and param.is_floating_point():
                        param.data = param.data.to(dtype)
                changed += 1
    return changed
