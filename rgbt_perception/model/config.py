"""Model configuration: variants of the fused RGB-T network and their hyper-parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DEFAULT_LORA_TARGET = r"blocks\.\d+\.attn\.(qkv|proj)"


@dataclass(frozen=True)
class TrunkSpec:
    """How to build one Hiera trunk and the default widths of the parts after it.

    ``timm_name`` names a registered timm ``sam2_hiera_*`` model; ``hiera_kwargs`` are passed to it
    (or, for ``timm_name=None``, straight to ``timm.models.hieradet_sam2.HieraDet``).
    """

    timm_name: str | None
    hiera_kwargs: dict[str, Any]
    neck_dim: int
    decoder_dim: int
    decoder_heads: int
    decoder_mlp_dim: int
    box_tower_convs: int


VARIANTS: dict[str, TrunkSpec] = {
    # Same HieraDet code path as the SAM2 sizes, four stages, one global-attention block; the
    # whole network stays below 2.4 M parameters so the shipped demo weights stay small.
    "micro": TrunkSpec(
        timm_name=None,
        hiera_kwargs=dict(
            embed_dim=24,
            num_heads=1,
            stages=(1, 2, 3, 1),
            global_att_blocks=(5,),
            window_spec=(8, 4, 8, 4),
            global_pos_size=(7, 7),
        ),
        neck_dim=48,
        decoder_dim=64,
        decoder_heads=4,
        decoder_mlp_dim=256,
        box_tower_convs=2,
    ),
    "tiny": TrunkSpec("sam2_hiera_tiny", {}, 256, 256, 8, 2048, 4),
    "small": TrunkSpec("sam2_hiera_small", {}, 256, 256, 8, 2048, 4),
    "base_plus": TrunkSpec("sam2_hiera_base_plus", {}, 256, 256, 8, 2048, 4),
    "large": TrunkSpec("sam2_hiera_large", {}, 256, 256, 8, 2048, 4),
}


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`~rgbt_perception.model.network.RGBTNet`.

    Width fields left at ``None`` take the variant's defaults from :data:`VARIANTS`, so a stored
    config (``to_dict``) always holds concrete numbers.
    """

    variant: str = "micro"
    num_classes: int = 9
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = DEFAULT_LORA_TARGET
    neck_dim: int | None = None
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    decoder_mlp_dim: int | None = None
    decoder_depth: int = 2
    box_tower_convs: int | None = None
    fusion_reduction: int = 4
    input_size: tuple[int, int] = (480, 640)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}; expected one of {sorted(VARIANTS)}")
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if int(self.lora_rank) < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        spec = VARIANTS[self.variant]
        for name in ("neck_dim", "decoder_dim", "decoder_heads", "decoder_mlp_dim", "box_tower_convs"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(spec, name))
        self.input_size = tuple(int(v) for v in self.input_size)
        if len(self.input_size) != 2 or any(v <= 0 or v % 32 for v in self.input_size):
            raise ValueError(f"input_size must be (H, W) with positive multiples of 32, got {self.input_size}")
        if self.decoder_dim % self.decoder_heads or (self.decoder_dim // 2) % self.decoder_heads:
            raise ValueError(
                f"decoder_heads={self.decoder_heads} must divide decoder_dim={self.decoder_dim} and its half"
            )

    @property
    def trunk_spec(self) -> TrunkSpec:
        return VARIANTS[self.variant]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``ModelConfig.from_dict(cfg.to_dict()) == cfg``."""
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)
