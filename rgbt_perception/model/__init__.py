"""The fused RGB-thermal network: config, encoder, neck, fusion, heads."""

from .config import MODEL_DESIGN, TRUNK_POLICIES, VARIANTS, ModelConfig
from .encoder import MODALITIES, TRUNK_PREFIX, RGBTEncoder
from .flops import count_flops
from .network import BRANCHES, RGBTNet, count_parameters

__all__ = [
    "BRANCHES", "MODALITIES", "MODEL_DESIGN", "ModelConfig", "RGBTEncoder", "RGBTNet", "TRUNK_POLICIES",
    "TRUNK_PREFIX", "VARIANTS", "count_flops", "count_parameters",
]
