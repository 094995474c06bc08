"""Import of published SAM2 checkpoints (Meta's ``.pt`` or timm's ``.safetensors``).

Trunk tensors are renamed to timm's Hiera names; the mask decoder's two-way transformer,
output upscaling and ``conv_s0/conv_s1`` keep SAM2's names under ``semantic_head.``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from safetensors.torch import load_file

from rgbt_perception.io.weights import WeightsError

_META_TRUNK_PREFIX = "image_encoder.trunk."
# Parts of SAM2's mask decoder whose layout the semantic head keeps (same names below
# ``semantic_head.``); tokens, IoU head and hypernetworks are per-prompt in SAM2 and stay out.
_META_DECODER_PARTS = re.compile(r"^sam_mask_decoder\.((transformer|output_upscaling\.[013]|conv_s0|conv_s1)\..+)$")
SEMANTIC_HEAD_PREFIX = "semantic_head."


def _rename_trunk_key(key: str) -> str:
    key = key.replace("mlp.layers.0.", "mlp.fc1.").replace("mlp.layers.1.", "mlp.fc2.")
    return key


def _meta_trunk_key(key: str) -> str:
    """Inverse of :func:`_rename_trunk_key`, under Meta's ``image_encoder.trunk.`` prefix."""
    return _META_TRUNK_PREFIX + key.replace("mlp.fc1.", "mlp.layers.0.").replace("mlp.fc2.", "mlp.layers.1.")


def import_sam2_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a published SAM2 checkpoint into timm trunk names.

    Accepts Meta's original ``.pt`` (``{"model": state_dict}``, trunk under
    ``image_encoder.trunk.``) or timm's converted ``.safetensors`` (trunk keys already timm
    names). Returns trunk tensors under timm names (``blocks.N.mlp.fc1.weight``, ...) and, when
    present, the mask decoder's two-way transformer, output upscaling and ``conv_s0/conv_s1``
    under :data:`SEMANTIC_HEAD_PREFIX` (the semantic head keeps SAM2's names).
    Everything else (prompt encoder, memory modules, SAM2.1 extras) is left out.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"SAM2 checkpoint {os.fspath(path)!r}: file not found")
    try:
        if os.fspath(path).endswith(".safetensors"):
            state = load_file(os.fspath(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, EOF)
        raise WeightsError(f"SAM2 checkpoint {os.fspath(path)!r}: cannot read it: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"SAM2 checkpoint {os.fspath(path)!r}: not a state dict of tensors")

    has_meta_trunk = any(k.startswith(_META_TRUNK_PREFIX) for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        decoder_part = _META_DECODER_PARTS.match(key)
        if decoder_part:
            out[SEMANTIC_HEAD_PREFIX + decoder_part.group(1)] = value
        elif has_meta_trunk:
            if key.startswith(_META_TRUNK_PREFIX):
                out[_rename_trunk_key(key[len(_META_TRUNK_PREFIX):])] = value
        elif _is_trunk_key(key):
            out[_rename_trunk_key(key)] = value
    if not any(_is_trunk_key(k) for k in out):
        raise WeightsError(f"SAM2 checkpoint {os.fspath(path)!r}: no Hiera trunk tensors found")
    return out


_TRUNK_KEY = re.compile(r"^(patch_embed\.|pos_embed|pos_embed_window|blocks\.\d+\.)")


def _is_trunk_key(key: str) -> bool:
    return bool(_TRUNK_KEY.match(key))


@dataclass
class LoadReport:
    """What :func:`load_sam2_into_model` / :func:`load_into_module` copied and what it left."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, not used (absent or shape differs)
    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint

    def __str__(self) -> str:
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, missing {len(self.missing)}"


def _canonical_name(name: str) -> str:
    """Module state-dict name as the plain (adapter-free) module would spell it."""
    name = name.replace("base_model.model.", "")
    return name.replace(".base_layer.", ".")


def load_into_module(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Copy tensors into ``module`` by name where shapes match, seeing through peft LoRA wrappers
    (``qkv.base_layer.weight`` takes ``qkv.weight``). LoRA tensors are never touched."""
    report = LoadReport()
    targets = {
        _canonical_name(name): tensor
        for name, tensor in module.state_dict(keep_vars=True).items()
        if "lora_" not in name
    }
    with torch.no_grad():
        for key, value in state.items():
            target = targets.get(key)
            if target is None or tuple(target.shape) != tuple(value.shape):
                report.skipped.append(key)
                continue
            target.copy_(value.to(dtype=target.dtype, device=target.device))
            report.loaded.append(key)
    report.missing = sorted(set(targets) - set(report.loaded))
    return report


def _find_trunk(model: torch.nn.Module) -> torch.nn.Module:
    from timm.models.hieradet_sam2 import HieraDet

    for module in model.modules():
        if isinstance(module, HieraDet):
            return module
    raise ValueError("model has no Hiera trunk")


def load_sam2_into_model(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, LoadReport]:
    """Load :func:`import_sam2_checkpoint` output into an RGBTNet (or a bare timm Hiera).

    The trunk takes the trunk tensors; the semantic head takes the mask-decoder tensors whose
    shapes match (all of them at ``decoder_dim=neck_dim=256``). LoRA adapters stay untouched.
    Returns one :class:`LoadReport` per part: ``"trunk"`` and ``"semantic_head"``.
    """
    trunk_state = {k: v for k, v in state.items() if not k.startswith(SEMANTIC_HEAD_PREFIX)}
    head_state = {k[len(SEMANTIC_HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(SEMANTIC_HEAD_PREFIX)}
    reports = {"trunk": load_into_module(_find_trunk(model), trunk_state)}
    head = getattr(model, SEMANTIC_HEAD_PREFIX.rstrip("."), None)
    if isinstance(head, torch.nn.Module):
        reports["semantic_head"] = load_into_module(head, head_state)
    else:
        reports["semantic_head"] = LoadReport(skipped=sorted(head_state))
    return reports


def _describe_trunk(state: Mapping[str, torch.Tensor]) -> str:
    """``"12 blocks, width 96"`` for trunk tensors under timm names."""
    blocks = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    embed = state.get("patch_embed.proj.weight")
    width = f"width {embed.shape[0]}" if embed is not None else "no patch embedding"
    return f"{len(blocks)} blocks, {width}"


def load_sam2_trunk(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, LoadReport]:
    """Load a SAM2 checkpoint into an RGBTNet only when its trunk is exactly the model's.

    As :func:`import_sam2_checkpoint` then :func:`load_sam2_into_model`, but every trunk tensor of
    the model must come from the file and every trunk tensor of the file must fit: a file of
    another size (SAM2-S into Hiera-T shares the first 12 blocks' shapes) would otherwise load in
    part and leave the rest random. ``WeightsError`` names the file, how many tensors fit and both
    trunks (blocks, width); the model may then hold part of the file and is to be discarded.
    Returns the reports of :func:`load_sam2_into_model` (``"trunk"``, ``"semantic_head"``).
    """
    state = import_sam2_checkpoint(path)
    reports = load_sam2_into_model(model, state)
    trunk = reports["trunk"]
    if trunk.missing or trunk.skipped:
        file_trunk = {k: v for k, v in state.items() if not k.startswith(SEMANTIC_HEAD_PREFIX)}
        own = {_canonical_name(k): v for k, v in _find_trunk(model).state_dict().items() if "lora_" not in k}
        raise WeightsError(
            f"SAM2 checkpoint {os.fspath(path)!r}: its trunk ({_describe_trunk(file_trunk)}) does not match the "
            f"model's ({_describe_trunk(own)}): {len(trunk.loaded)} of {len(own)} trunk tensors fit, "
            f"{len(trunk.skipped)} of the file's do not (e.g. {trunk.skipped[:2]}), {len(trunk.missing)} of the "
            "model's are not in the file; use the SAM2 checkpoint of the model's variant")
    return reports


def export_sam2_trunk(model: torch.nn.Module, merge_adapter: str | None = None) -> dict[str, torch.Tensor]:
    """The Hiera trunk of an RGBTNet (or a bare timm Hiera) as a state dict in Meta's SAM2 layout.

    Keys are ``image_encoder.trunk.<name>`` with SAM2's names (``mlp.layers.0``), so the result,
    saved as ``{"model": state}``, reads back through :func:`import_sam2_checkpoint` and loads
    strictly into Meta's ``Hiera``. ``merge_adapter`` (``"rgb"`` or ``"thermal"``) folds that LoRA
    adapter into the weights it adapts (``W + scale * B @ A``, as the inference merge does; LoRA
    variants such as DoRA are refused); ``None`` writes the base weights. Other adapters, a timm
    classifier head and every part outside the trunk stay out.
    """
    from peft.tuners.lora import LoraLayer

    from rgbt_perception.model.lora_merge import merged_base_layer

    trunk = _find_trunk(model)
    merged: dict[str, torch.Tensor] = {}
    if merge_adapter is not None:
        for name, module in trunk.named_modules():
            if isinstance(module, LoraLayer) and merge_adapter in module.lora_A:
                for param_name, tensor in merged_base_layer(module, merge_adapter).state_dict().items():
                    merged[f"{name}.{param_name}"] = tensor
        if not merged:
            raise ValueError(f"the trunk has no LoRA adapter named {merge_adapter!r}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in trunk.state_dict().items():
        key = _canonical_name(name)
        if "lora_" in name or key.startswith("head."):
            continue
        value = merged.get(key, tensor)
        out[_meta_trunk_key(key)] = value.detach().to("cpu", copy=True).contiguous()
    return out


def save_sam2_checkpoint(path: str | os.PathLike, model: torch.nn.Module, merge_adapter: str | None = None) -> str:
    """Write :func:`export_sam2_trunk` as a Meta-style ``.pt`` (``{"model": state}``); returns the path."""
    torch.save({"model": export_sam2_trunk(model, merge_adapter)}, path)
    return os.fspath(path)
