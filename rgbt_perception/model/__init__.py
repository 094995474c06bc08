"""The fused RGB-thermal network: config, encoder, neck, fusion, heads."""

from .config import VARIANTS, ModelConfig
from .encoder import MODALITIES, TRUNK_PREFIX, RGBTEncoder
from .network import RGBTNet, count_parameters

__all__ = ["MODALITIES", "ModelConfig", "RGBTEncoder", "RGBTNet", "TRUNK_PREFIX", "VARIANTS", "count_parameters"]
