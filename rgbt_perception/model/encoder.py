"""SAM2 Hiera trunk shared by both modalities, with one peft LoRA adapter per modality.

The trunk policy (``ModelConfig.trunk``) decides what trains: ``frozen`` keeps the Hiera weights
fixed (only the LoRA adapters learn), ``full`` trains every trunk weight next to the adapters.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import timm
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.hieradet_sam2 import HieraDet
from torch import Tensor, nn

from rgbt_perception.core.defaults import CAMERAS

from .config import ModelConfig

MODALITIES = CAMERAS
TRUNK_PREFIX = "encoder.trunk."


def build_trunk(cfg: ModelConfig) -> HieraDet:
    """Build the randomly initialised Hiera trunk of ``cfg.variant`` without classifier head."""
    spec = cfg.trunk_spec
    if spec.timm_name is not None:
        trunk = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **spec.hiera_kwargs)
    else:
        trunk = HieraDet(num_classes=0, **spec.hiera_kwargs)
    # Only the stage features are used; dropping the head keeps the trunk's state dict equal to a
    # published SAM2 image_encoder.trunk (which has no head.norm).
    trunk.head = nn.Identity()
    return trunk


class RGBTEncoder(nn.Module):
    """Shared Hiera trunk + LoRA adapters ``"rgb"`` and ``"thermal"``.

    With ``cfg.trunk == "frozen"`` only the adapters are trainable; with ``"full"`` the trunk's own
    weights train too (shared by both modalities, the adapters keep a per-modality part).

    Inputs are ``[0, 1]`` images; ImageNet normalisation is applied here (thermal, ``B,1,H,W``, is
    replicated to three channels first). Output: the trunk's four stage maps, strides 4/8/16/32,
    ``B, C_i, H/s, W/s``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.trunk = build_trunk(cfg)
        self.channels: list[int] = [info["num_chs"] for info in self.trunk.feature_info]
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target,
        )
        with warnings.catch_warnings():
            # A second adapter on the same trunk is intended: one per modality.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in MODALITIES:
                inject_adapter_in_model(lora, self.trunk, adapter_name=name)
        self.adapted_modules: set[str] = {
            name for name, module in self.trunk.named_modules() if isinstance(module, LoraLayer)
        }
        if not self.adapted_modules:
            raise ValueError(f"LoRA target {cfg.lora_target!r} matches no module of the trunk")
        self.trunk_policy = cfg.trunk
        for name, param in self.trunk.named_parameters():
            param.requires_grad_(".lora_" in name or cfg.trunk == "full")
        self._layers = [module for module in self.trunk.modules() if isinstance(module, LoraLayer)]
        self._lora_params = [p for n, p in self.trunk.named_parameters() if ".lora_" in n]
        self.attention_block_index = int(self.trunk.global_att_blocks[-1])

    @property
    def attention_block(self) -> nn.Module:
        """The last global-attention block, whose attention ``encode_modality`` can return."""
        return self.trunk.blocks[self.attention_block_index]

    # -- adapters ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def use_adapter(self, modality: str | None) -> Iterator[None]:
        """Run the trunk with the adapter of ``modality`` (``None``: no adapter, the frozen trunk).

        peft's switching also rewrites ``requires_grad`` of adapter weights; the trainable state
        is restored afterwards so that both adapters stay trainable.
        """
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES} or None")
        flags = [(p, p.requires_grad) for p in self._lora_params]
        layers = self._layers
        try:
            for layer in layers:
                if modality is None:
                    layer.enable_adapters(False)
                else:
                    layer.enable_adapters(True)
                    layer.set_adapter(modality)
            for param, flag in flags:
                param.requires_grad_(flag)
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for param, flag in flags:
                param.requires_grad_(flag)

    def trunk_key_map(self) -> dict[str, str]:
        """``{timm trunk key: key in this module's state dict}`` for every trunk weight.

        Keys of the returned values are relative to this encoder's ``trunk.``; prefix them with
        :data:`TRUNK_PREFIX` inside an ``RGBTNet``.
        """
        out = {}
        for name, _ in self.trunk.named_parameters():
            if ".lora_" in name:
                continue
            plain = name.replace(".base_layer.", ".")
            out[plain] = name
        return out

    def load_trunk_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load plain timm ``sam2_hiera_*`` trunk weights (no prefix) into the LoRA-wrapped trunk.

        Raises ``ValueError`` naming missing, unexpected or mis-shaped keys.
        """
        key_map = self.trunk_key_map()
        ignored = {k for k in state_dict if k.startswith("head.")}
        missing = sorted(set(key_map) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(key_map) - ignored)
        if missing or unexpected:
            raise ValueError(f"trunk weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        params = dict(self.trunk.named_parameters())
        for plain, name in key_map.items():
            if tuple(state_dict[plain].shape) != tuple(params[name].shape):
                raise ValueError(
                    f"trunk weight {plain}: shape {tuple(state_dict[plain].shape)} != {tuple(params[name].shape)}"
                )
        with torch.no_grad():
            for plain, name in key_map.items():
                params[name].copy_(state_dict[plain])

    # -- forward ----------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """``B,1|3,H,W`` in [0, 1] -> ``B,3,H,W`` ImageNet-normalised."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected an image tensor B,1,H,W or B,3,H,W, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

    def _global_attention(self, qkv: Tensor, hw: tuple[int, int]) -> Tensor:
        """Attention map ``B, heads, N_q, N`` of the hooked global block from its qkv output."""
        attn = self.attention_block.attn
        batch = qkv.shape[0]
        qkv = qkv.reshape(batch, hw[0] * hw[1], 3, attn.num_heads, -1)
        q, k, _ = torch.unbind(qkv, 2)
        if attn.q_pool is not None:
            q = attn.q_pool(q.reshape(batch, hw[0], hw[1], -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            q = q.reshape(batch, -1, attn.num_heads, k.shape[-1])
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        return (q * attn.scale @ k.transpose(-1, -2)).softmax(dim=-1)

    def forward(
        self, x: Tensor, modality: str | None, return_attention: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        """Encode one modality.

        Args:
            x: ``B,3,H,W`` (RGB) or ``B,1,H,W`` (thermal) in [0, 1]; H, W multiples of 32.
            modality: ``"rgb"``, ``"thermal"`` or ``None`` (the trunk without adapter).
            return_attention: also return the last global-attention block's attention
                ``B, heads, N, N`` (N = tokens of its stride-16 map).
        Returns:
            ``[s4, s8, s16, s32]`` feature maps ``B, C_i, H/s, W/s`` (and the attention map).
        """
        check_input_size(x)
        captured: dict[str, Tensor] = {}
        handle = None
        if return_attention:

            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                captured["qkv"] = output
                captured["hw"] = inputs[0].shape[1:3]

            handle = self.attention_block.attn.qkv.register_forward_hook(hook)
        try:
            with self.use_adapter(modality):
                features = self.trunk.forward_intermediates(
                    self.normalize(x), intermediates_only=True, output_fmt="NCHW"
                )
        finally:
            if handle is not None:
                handle.remove()
        if not return_attention:
            return features
        return features, self._global_attention(captured["qkv"], tuple(captured["hw"]))


def check_input_size(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is ``B,C,H,W`` with H and W positive multiples of 32."""
    if x.dim() != 4:
        raise ValueError(f"expected a B,C,H,W tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % 32 or width % 32 or height == 0 or width == 0:
        raise ValueError(f"input size {height}x{width} is not a multiple of 32; resize it (the inference engine does)")
