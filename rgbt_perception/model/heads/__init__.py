"""Heads of the fused network: semantic (SAM2-decoder style), auxiliary FPN, FCOS boxes."""

from .auxiliary import AuxiliaryHead
from .boxes import BoxHead
from .semantic import SemanticHead, TwoWayTransformer

__all__ = ["AuxiliaryHead", "BoxHead", "SemanticHead", "TwoWayTransformer"]
