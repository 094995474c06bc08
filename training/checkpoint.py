"""Checkpoint files and model state: atomic saves, the one checkpoint reader, resume, (partial) state dicts.

Shared by the supervised trainer, label-free pretraining and ``rgbt-export``. torch is imported
inside the functions, so ``rgbt-export`` reports a missing checkpoint before loading it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rgbt_perception.io.files import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

#: Entries every checkpoint of :class:`training.loop.EpochLoop` has, needed to continue a run.
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "global_step", "rng", "config")


def save_checkpoint_file(state: dict[str, Any], path: str) -> None:
    """``torch.save`` through a temporary file, so an interrupted save never leaves a torn checkpoint."""
    import torch

    with atomic_path(path, suffix=".pt.tmp") as tmp_path:
        torch.save(state, tmp_path)


def read_checkpoint(path: str, keys: Sequence[str] = (), written_by: str = "rgbt-train") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint_file` that holds ``keys``.

    A missing, unreadable or foreign file is a ``ValueError`` naming the file and the problem
    (``written_by``: the tool whose checkpoints hold ``keys``).
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises pickle, zip and EOF errors alike
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        needs = f" (needs keys {', '.join(keys)})" if keys else ""
        raise ValueError(f"checkpoint {path} is not an {written_by} checkpoint{needs}")
    return ckpt


def restore_optimisation(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                         scaler: torch.amp.GradScaler) -> tuple[int, int]:
    """Load optimizer, schedule and loss-scaler state; returns ``(start_epoch, global_step)``."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["epoch"]) + 1, int(ckpt["global_step"])


def trainable_state(model: nn.Module, include_frozen: bool) -> dict[str, Tensor]:
    """Trainable parameters and buffers (everything when ``include_frozen``), on CPU."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = {n for n, _ in model.named_parameters()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if include_frozen or k in trainable or k not in params}


def load_partial_state(model: nn.Module, state: dict[str, Tensor], what: str) -> int:
    """Copy the entries of ``state`` into ``model``; unknown keys or shape mismatches raise.

    ``what`` names the source in the error (e.g. ``"checkpoint RUN/last.pt"``). Returns the
    number of tensors copied.
    """
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{what}: {len(unknown)} keys not in the model, e.g. {unknown[:3]}")
    bad = [k for k, v in state.items() if own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{what}: shape mismatch for {bad[:3]} (checkpoint of another model variant?)")
    model.load_state_dict(state, strict=False)
    return len(state)


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load the keys of ``state`` that exist in ``model`` with the same shape; returns them."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return sorted(matched)


def read_tensor_file(path: str) -> dict[str, Tensor]:
    """A ``.safetensors`` file or a torch checkpoint (``state_dict``/``model`` key or flat)."""
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no tensor dictionary")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
