"""Model configuration: variants of the fused RGB-T network and their hyper-parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DEFAULT_LORA_TARGET = r"blocks\.\d+\.attn\.(qkv|proj)"
# Architecture generation written into every stored config. Design 1 (3x3 necks and fusion at
# 256 channels, one fusion for both heads, FCOS towers of 4 convs) is not buildable any more; its
# weights files still read (metadata), and loading their tensors names the design mismatch.
# MODEL_DESIGN is what a config without a ``design`` key builds (every design-2 file and recipe).
# Design 3 swaps the per-task fusion for a gated residual one (see :mod:`.fusion`): with one camera
# the fused map is that camera's own neck map, untouched.
MODEL_DESIGN = 2
BUILDABLE_DESIGNS = (2, 3)
FUSION_GATES = ("pixel", "channel")
TRUNK_POLICIES = ("frozen", "full")


def check_network_size(size: Any, what: str = "input_size") -> tuple[int, int]:
    """``(H, W)`` of ``size`` as ints; ``ValueError`` naming ``what`` unless both are positive
    multiples of 32 (the network's stride-32 constraint)."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (H, W) with positive multiples of 32, got {size!r}") from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"{what} must be (H, W) with positive multiples of 32, got {height}x{width}")
    return height, width


@dataclass(frozen=True)
class TrunkSpec:
    """How to build one Hiera trunk and the default widths of the parts after it.

    ``timm_name`` names a registered timm ``sam2_hiera_*`` model; ``hiera_kwargs`` are passed to it
    (or, for ``timm_name=None``, straight to ``timm.models.hieradet_sam2.HieraDet``).
    ``published``: SAM2 weights exist for this trunk, so by default it stays frozen and only the
    per-modality LoRA adapters adapt it.
    """

    timm_name: str | None
    hiera_kwargs: dict[str, Any]
    neck_dim: int
    highres_dims: tuple[int, int]
    decoder_dim: int
    decoder_heads: int
    decoder_mlp_dim: int
    box_dim: int
    box_tower_convs: int
    published: bool = True


_SAM2_WIDTHS = dict(
    neck_dim=256, highres_dims=(32, 64), decoder_dim=256, decoder_heads=8, decoder_mlp_dim=2048,
    box_dim=128, box_tower_convs=2,
)

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
        neck_dim=128,
        highres_dims=(16, 32),
        decoder_dim=128,
        decoder_heads=4,
        decoder_mlp_dim=256,
        box_dim=64,
        box_tower_convs=2,
        published=False,
    ),
    "tiny": TrunkSpec("sam2_hiera_tiny", {}, **_SAM2_WIDTHS),
    "small": TrunkSpec("sam2_hiera_small", {}, **_SAM2_WIDTHS),
    "base_plus": TrunkSpec("sam2_hiera_base_plus", {}, **_SAM2_WIDTHS),
    "large": TrunkSpec("sam2_hiera_large", {}, **_SAM2_WIDTHS),
}

_VARIANT_DEFAULTS = (
    "neck_dim", "highres_dims", "decoder_dim", "decoder_heads", "decoder_mlp_dim", "box_dim", "box_tower_convs",
)


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`~rgbt_perception.model.network.RGBTNet`.

    Fields left at ``None`` take the variant's defaults from :data:`VARIANTS`, so a stored config
    (``to_dict``) always holds concrete values.

    ``trunk`` is the trunk policy: ``"frozen"`` (Hiera weights fixed, only the per-modality LoRA
    adapters adapt the trunk; the default where SAM2 weights are published) or ``"full"`` (every
    trunk weight trains, LoRA included; the default for ``micro``, whose random trunk has nothing
    worth freezing). ``design``: 2 (rectify-and-gate fusion with a projection after it) or 3
    (gated residual fusion: each camera's map passes unchanged, the other camera adds a
    zero-initialised correction; :class:`~rgbt_perception.model.fusion.GatedResidualFusion`).
    ``neck_dim``: width of the stride-16/32 maps (fusion, decoder input); ``highres_dims``: widths
    ``(stride 4, stride 8)`` of the cheap high-resolution projections.
    """

    variant: str = "micro"
    num_classes: int = 9
    trunk: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = DEFAULT_LORA_TARGET
    neck_dim: int | None = None
    highres_dims: tuple[int, int] | None = None
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    decoder_mlp_dim: int | None = None
    decoder_depth: int = 2
    box_dim: int | None = None
    box_tower_convs: int | None = None
    fusion_reduction: int = 4
    # Design 3 only: "pixel" (one gate per pixel for all channels) or "channel" (one per channel and pixel).
    fusion_gate: str = "pixel"
    # Design 3 only: a conv, GroupNorm and GELU after the mix (design 2 has one), shared by the fused
    # map and each camera's map alone, so the heads read one space whatever cameras are present.
    fusion_project: bool = False
    input_size: tuple[int, int] = (480, 640)
    design: int = MODEL_DESIGN

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}; expected one of {sorted(VARIANTS)}")
        if int(self.design) not in BUILDABLE_DESIGNS:
            raise ValueError(
                f"model design {self.design} is not buildable by this software (designs {BUILDABLE_DESIGNS}); "
                "retrain or re-export the weights with this version"
            )
        self.design = int(self.design)
        if self.fusion_gate not in FUSION_GATES:
            raise ValueError(f"fusion_gate must be one of {FUSION_GATES}, got {self.fusion_gate!r}")
        if not isinstance(self.fusion_project, bool):
            raise ValueError(f"fusion_project must be true or false, got {self.fusion_project!r}")
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if int(self.lora_rank) < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        spec = VARIANTS[self.variant]
        if self.trunk is None:
            self.trunk = "frozen" if spec.published else "full"
        if self.trunk not in TRUNK_POLICIES:
            raise ValueError(f"trunk policy must be one of {TRUNK_POLICIES}, got {self.trunk!r}")
        for name in _VARIANT_DEFAULTS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(spec, name))
        self.highres_dims = tuple(int(v) for v in self.highres_dims)
        if len(self.highres_dims) != 2 or min(self.highres_dims) < 4:
            raise ValueError(f"highres_dims must be (stride-4 width, stride-8 width) >= 4, got {self.highres_dims}")
        self.input_size = check_network_size(self.input_size)
        heads = self.decoder_heads
        if self.decoder_dim % 8 or self.decoder_dim % heads or (self.decoder_dim // 2) % heads:
            raise ValueError(
                f"decoder_dim={self.decoder_dim} must be a multiple of 8, and decoder_heads={self.decoder_heads} "
                "must divide it and its half"
            )

    @property
    def trunk_spec(self) -> TrunkSpec:
        return VARIANTS[self.variant]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``ModelConfig.from_dict(cfg.to_dict()) == cfg``."""
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        out["highres_dims"] = list(self.highres_dims)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        A missing ``design`` means the current one (training configs leave it out); stored
        weights are checked for their design by :mod:`rgbt_perception.io.weights`.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)
