"""RGBTNet: LoRA-adapted SAM2 Hiera per modality, FPN necks, cross-modal fusion and three heads."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .encoder import MODALITIES, TRUNK_PREFIX, RGBTEncoder, check_input_size
from .fusion import CrossModalFusion
from .heads import AuxiliaryHead, BoxHead, SemanticHead
from .neck import FPNNeck


class RGBTNet(nn.Module):
    """Fused RGB-thermal semantic segmentation and box detection network.

    The frozen Hiera trunk is shared by both modalities; each modality runs it with its own
    LoRA adapter and has its own FPN neck. The two pyramids are fused per level (strides 4, 8,
    16) and feed the heads. Either modality may be absent (per call or per sample).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RGBTEncoder(cfg)
        self.necks = nn.ModuleDict({m: FPNNeck(self.encoder.channels, cfg.neck_dim) for m in MODALITIES})
        self.fusion = nn.ModuleList(CrossModalFusion(cfg.neck_dim, cfg.fusion_reduction) for _ in range(3))
        self.semantic_head = SemanticHead(
            cfg.neck_dim, cfg.num_classes, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_mlp_dim, cfg.decoder_depth
        )
        self.aux_head = AuxiliaryHead(cfg.neck_dim, cfg.num_classes)
        self.box_head = BoxHead(cfg.neck_dim, cfg.num_classes, num_convs=cfg.box_tower_convs)

    # -- parameters -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA, neck, fusion and head parameters (the trunk's own weights are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- encoding ---------------------------------------------------------------------------
    def encode_modality(
        self, x: Tensor, modality: str | None, return_attention: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        """Trunk features of one modality, see :meth:`RGBTEncoder.forward`.

        ``x``: ``B,3,H,W`` or ``B,1,H,W`` in [0, 1]. Returns ``[s4, s8, s16, s32]`` maps and, with
        ``return_attention``, the last global-attention block's attention ``B,heads,N,N``.
        """
        return self.encoder(x, modality, return_attention=return_attention)

    def load_trunk_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load plain timm ``sam2_hiera_*`` trunk weights (keys without prefix) into the encoder."""
        self.encoder.load_trunk_state_dict(state_dict)

    # -- forward ----------------------------------------------------------------------------
    def _presence(
        self, rgb: Tensor | None, thermal: Tensor | None, modality_mask: Tensor | None
    ) -> tuple[int, tuple[int, int], torch.device, Tensor]:
        given = [t for t in (rgb, thermal) if t is not None]
        if not given:
            raise ValueError("both modalities are missing: pass rgb, thermal or both")
        if rgb is not None and (rgb.dim() != 4 or rgb.shape[1] != 3):
            raise ValueError(f"rgb must be B,3,H,W, got shape {tuple(rgb.shape)}")
        if thermal is not None and (thermal.dim() != 4 or thermal.shape[1] != 1):
            raise ValueError(f"thermal must be B,1,H,W, got shape {tuple(thermal.shape)}")
        for tensor in given:
            check_input_size(tensor)
        if (
            rgb is not None
            and thermal is not None
            and (rgb.shape[0] != thermal.shape[0] or rgb.shape[-2:] != thermal.shape[-2:])
        ):
            raise ValueError(f"rgb {tuple(rgb.shape)} and thermal {tuple(thermal.shape)} differ in batch size or H, W")
        batch, size, device = given[0].shape[0], tuple(given[0].shape[-2:]), given[0].device
        # Built on the device without a host copy, and checked for empty rows only when a mask
        # can empty them: the plain forward then has no host sync (torch.compile, CUDA graphs).
        present = torch.ones(batch, 2, dtype=torch.bool, device=device)
        if rgb is None:
            present[:, 0] = False
        if thermal is None:
            present[:, 1] = False
        if modality_mask is not None:
            modality_mask = torch.as_tensor(modality_mask, device=device)
            if modality_mask.shape != (batch, 2):
                raise ValueError(f"modality_mask must be B,2 = ({batch}, 2), got {tuple(modality_mask.shape)}")
            present = present & modality_mask.bool()
            if not bool(present.any(dim=1).all()):
                raise ValueError("a sample has neither modality present (modality_mask row all False)")
        return batch, size, device, present

    def fuse(
        self, rgb: Tensor | None, thermal: Tensor | None, modality_mask: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Fused pyramid ``[s4, s8, s16]`` (``B,neck_dim,H/s,W/s``) and gates ``[B,2,H/s,W/s]``."""
        _, _, _, present = self._presence(rgb, thermal, modality_mask)
        pyramids: dict[str, list[Tensor] | None] = {}
        for modality, image in (("rgb", rgb), ("thermal", thermal)):
            pyramids[modality] = None if image is None else self.necks[modality](self.encoder(image, modality))
        reference = pyramids["rgb"] or pyramids["thermal"]
        fused, gates = [], []
        for level, fusion in enumerate(self.fusion):
            rgb_level = pyramids["rgb"][level] if pyramids["rgb"] is not None else torch.zeros_like(reference[level])
            th_level = (
                pyramids["thermal"][level] if pyramids["thermal"] is not None else torch.zeros_like(reference[level])
            )
            out, gate = fusion(rgb_level, th_level, present)
            fused.append(out)
            gates.append(gate)
        return fused, gates

    def forward(
        self, rgb: Tensor | None, thermal: Tensor | None, modality_mask: Tensor | None = None
    ) -> dict[str, Any]:
        """Run the network.

        Args:
            rgb: ``B,3,H,W`` float in [0, 1], or ``None`` when the RGB camera is missing.
            thermal: ``B,1,H,W`` float in [0, 1], or ``None``. H, W multiples of 32.
            modality_mask: optional ``B,2`` bool, ``[:, 0]`` RGB present, ``[:, 1]`` thermal present;
                a False entry makes the network ignore that sample's input of that modality.
        Returns:
            ``"semantic"``: ``B,K,H/4,W/4`` logits; ``"aux"``: ``B,K,H/4,W/4`` logits (training mode
            only); ``"boxes"``: raw box-head outputs for ``box_head.loss`` / ``box_head.decode``;
            ``"fused"``: ``[s4, s8, s16]`` fused maps ``B,neck_dim,H/s,W/s``; ``"gates"``: per-level
            modality weights ``B,2,H/s,W/s``.
        """
        fused, gates = self.fuse(rgb, thermal, modality_mask)
        outputs: dict[str, Any] = {
            "semantic": self.semantic_head(fused),
            "boxes": self.box_head(fused),
            "fused": fused,
            "gates": gates,
        }
        if self.training:
            outputs["aux"] = self.aux_head(fused)
        return outputs


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


__all__ = ["RGBTNet", "count_parameters", "TRUNK_PREFIX"]
