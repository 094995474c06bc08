"""Turn a training checkpoint into the node weights file (safetensors + provenance metadata).

torch and the model code are imported inside the functions, so ``rgbt-export`` reports a missing
``--checkpoint`` without loading them.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rgbt_perception.core.classes import get_class_set
from training.checkpoint import load_partial_state, read_checkpoint

if TYPE_CHECKING:
    import torch

# What exporting needs of an rgbt-train checkpoint.
CHECKPOINT_KEYS = ("model", "config", "class_set", "epoch")


def git_commit(path: str | None = None) -> str | None:
    """The commit of the repository holding ``path`` (this package by default), or ``None``."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def model_from_checkpoint(ckpt: dict[str, Any], path: str = "<checkpoint>") -> tuple[torch.nn.Module, Any, Any]:
    """Rebuild the trained network: ``(model, TrainConfig, ClassSet)``."""
    import torch

    from training.config import TrainConfig
    from training.steps import build_model

    cfg = TrainConfig.from_dict(ckpt["config"])
    class_set = get_class_set(ckpt["class_set"])
    # Same seed as training, so a randomly initialised frozen trunk is rebuilt identically
    # when the checkpoint does not carry it.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, class_set.num_classes)
    load_partial_state(model, ckpt["model"], f"checkpoint {path}")
    model.eval()
    return model, cfg, class_set


def export_checkpoint(checkpoint: str, out: str, storage: str = "fp32", extra_provenance: dict[str, Any] | None = None,
                      export_command: str | None = None, input_size: Sequence[int] | None = None) -> str:
    """Write the node weights file for ``checkpoint`` to ``out``; returns ``out``.

    Provenance records the data set, the split the checkpoint was selected on, epochs,
    validation metrics, modalities, text encoder, git commit and command lines.
    ``input_size``: ``(H, W)`` the node resizes frames to (multiples of 32), instead of the
    training config's ``model.input_size``; the validation metrics recorded were measured at the
    latter (``provenance["validated_size"]``).
    """
    ckpt = read_checkpoint(checkpoint, CHECKPOINT_KEYS)
    from rgbt_perception.core.preprocess import ThermalScaling
    from rgbt_perception.io.weights import WeightsMetadata, save_weights

    model, cfg, class_set = model_from_checkpoint(ckpt, checkpoint)
    validated_size = list(model.cfg.input_size)
    if input_size is not None:
        # The network itself takes any multiple of 32; the size is what the node resizes frames to.
        model.cfg = dataclasses.replace(model.cfg, input_size=tuple(input_size))
    scaling = ThermalScaling.from_dict(cfg.data.thermal_scaling) if cfg.data.thermal_scaling else ThermalScaling()
    provenance = {
        "dataset": cfg.data.dataset,
        "data_root": cfg.data.root,
        "train_split": cfg.data.train_split,
        "train_fraction": cfg.data.train_fraction,
        "selection_split": cfg.data.val_split,
        "epochs": int(ckpt["epoch"]) + 1,
        "epochs_planned": cfg.epochs,
        "best_epoch": ckpt.get("best_epoch"),
        "metrics": {f"{cfg.data.val_split}_{k}": v for k, v in (ckpt.get("val") or {}).items()},
        "validated_size": validated_size,
        "train_size": list(cfg.data.train_size or validated_size),
        "modalities": cfg.run_inputs,
        "modality_dropout": cfg.modality_dropout,
        "text_encoder": ckpt.get("text_encoder"),
        "init_sam2": os.path.basename(cfg.init.sam2) if cfg.init.sam2 else None,
        "init_adapters": os.path.basename(cfg.init.adapters) if cfg.init.adapters else None,
        "git_commit": git_commit(),
        "train_command": ckpt.get("command_line"),
        # Processes of the run (DDP); None for checkpoints written before it was recorded.
        "train_processes": ckpt.get("world_size"),
        "export_command": export_command,
        "checkpoint": os.path.basename(checkpoint),
        "config_name": cfg.name,
    }
    provenance.update(extra_provenance or {})
    metadata = WeightsMetadata.for_model(model.cfg, class_set, scaling, provenance)
    save_weights(out, model, metadata, storage=storage)
    return out
