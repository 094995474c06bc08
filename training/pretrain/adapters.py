"""The adapters file written by ``rgbt-pretrain`` and read by ``rgbt-train`` (``init.adapters``).

One ``.safetensors`` holding model state-dict tensors under the model's own names:

* always the LoRA tensors of both adapters (``encoder.trunk.*.lora_*``);
* for ``cmss-mim`` also the neck and fusion (``neck*``, ``fusion*``), trained through the
  reconstruction;
* the frozen trunk itself unless it came from a published SAM2 checkpoint: LoRA deltas only
  mean something on the trunk they were trained on.

``__metadata__`` holds ``method``, ``epochs``, ``data`` as plain strings and ``rgbt_pretrain``, a
JSON record with those plus ``model`` (the ModelConfig dict), ``trunk`` and ``parts``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rgbt_perception.io.files import atomic_path

METADATA_KEY = "rgbt_pretrain"
FORMAT_VERSION = 1
# Model settings that must agree for the LoRA tensors to mean the same thing.
MATCHING_MODEL_KEYS = ("variant", "lora_rank", "lora_alpha", "lora_target")


class AdapterFileError(ValueError):
    """An adapters file that cannot be written or applied; the message names the file and the problem."""


@dataclass
class AdapterLoadReport:
    """Which tensors :func:`load_adapters_into` copied, and which it left."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}"


def select_state(model: nn.Module, parts: Iterable[str]) -> dict[str, torch.Tensor]:
    """Tensors of ``model``'s state dict in ``parts``: ``lora``, ``trunk`` (frozen trunk),
    or a module-name prefix such as ``neck`` or ``fusion``."""
    parts = list(parts)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        is_lora = ".lora_" in name
        is_trunk = name.startswith("encoder.trunk.") and not is_lora
        for part in parts:
            if (part == "lora" and is_lora) or (part == "trunk" and is_trunk) or (
                part not in ("lora", "trunk") and name.startswith(part)
            ):
                out[name] = tensor.detach().to("cpu").contiguous().clone()
                break
    return out


def save_adapters(
    path: str | os.PathLike,
    model: nn.Module,
    parts: Iterable[str],
    method: str,
    epochs: int,
    data: str,
    model_config: dict[str, Any],
    trunk: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the ``parts`` of ``model`` (see :func:`select_state`) with metadata; returns the record."""
    parts = list(parts)
    tensors = select_state(model, parts)
    if not any(".lora_" in k for k in tensors):
        raise AdapterFileError(f"adapters file {os.fspath(path)}: the model has no LoRA tensors to save")
    record = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "epochs": int(epochs),
        "data": data,
        "model": model_config,
        "trunk": trunk,
        "parts": parts,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    metadata = {"method": method, "epochs": str(int(epochs)), "data": data,
                METADATA_KEY: json.dumps(record, sort_keys=True)}
    with atomic_path(path, suffix=".safetensors.tmp") as tmp_path:
        save_file(tensors, tmp_path, metadata=metadata)
    return record


def read_adapters(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, record)`` of an adapters file; errors name the file and the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AdapterFileError(f"adapters file {path}: file not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise AdapterFileError(f"adapters file {path}: not a readable safetensors file ({exc})") from None
    if METADATA_KEY not in metadata:
        raise AdapterFileError(
            f"adapters file {path}: no '{METADATA_KEY}' metadata; it was not written by rgbt-pretrain"
        )
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        raise AdapterFileError(f"adapters file {path}: metadata '{METADATA_KEY}' is not valid JSON") from None
    if int(record.get("format_version", -1)) != FORMAT_VERSION:
        raise AdapterFileError(
            f"adapters file {path}: format version {record.get('format_version')} (this code reads {FORMAT_VERSION})"
        )
    return tensors, record


def load_adapters_into(model: nn.Module, path: str | os.PathLike, load_trunk: bool = True) -> AdapterLoadReport:
    """Copy an adapters file into ``model`` (an ``RGBTNet``) by tensor name.

    The file's model variant and LoRA settings must match ``model.cfg``, and every LoRA tensor
    of the file must exist in the model with the same shape; other tensors (neck, fusion,
    trunk) are copied where name and shape match and reported as skipped otherwise.
    ``load_trunk=False`` leaves the model's trunk alone (e.g. one loaded from SAM2).
    """
    tensors, record = read_adapters(path)
    config = getattr(model, "cfg", None)
    if config is not None:
        ours = config.to_dict()
        theirs = record.get("model", {})
        differing = [k for k in MATCHING_MODEL_KEYS if k in theirs and theirs[k] != ours.get(k)]
        if differing:
            details = ", ".join(f"{k}: file {theirs[k]!r} vs model {ours.get(k)!r}" for k in differing)
            raise AdapterFileError(f"adapters file {os.fspath(path)} was made for another model ({details})")
    state = model.state_dict()
    lora_problems = [k for k, v in tensors.items() if ".lora_" in k and (k not in state or state[k].shape != v.shape)]
    if lora_problems:
        raise AdapterFileError(
            f"adapters file {os.fspath(path)}: {len(lora_problems)} LoRA tensors do not fit the model "
            f"(first: {lora_problems[0]})"
        )
    report = AdapterLoadReport(metadata=record)
    with torch.no_grad():
        for key, value in tensors.items():
            target = state.get(key)
            is_trunk = key.startswith("encoder.trunk.") and ".lora_" not in key
            if target is None or target.shape != value.shape or (is_trunk and not load_trunk):
                report.skipped.append(key)
                continue
            target.copy_(value.to(dtype=target.dtype, device=target.device))
            report.loaded.append(key)
    return report
