"""RGBTNet: LoRA-adapted SAM2 Hiera per modality, lean necks, per-task cross-modal fusion, three heads."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rgbt_perception.core.defaults import BRANCHES

from .config import ModelConfig
from .encoder import MODALITIES, TRUNK_PREFIX, RGBTEncoder, check_input_size
from .fusion import CrossModalFusion, GatedResidualFusion
from .heads import AuxiliaryHead, BoxHead, SemanticHead
from .neck import LeanNeck


class RGBTNet(nn.Module):
    """Fused RGB-thermal semantic segmentation and box detection network.

    The Hiera trunk is shared by both modalities; each modality runs it with its own LoRA adapter
    and has its own 1x1 neck (strides 4, 8, 16 at ``highres_dims[0]``, ``highres_dims[1]`` and
    ``neck_dim`` channels). Each task has its own fusion of the two pyramids: the mask fusion
    (strides 4, 8, 16) feeds the semantic and auxiliary heads, the box fusion (strides 8, 16) the
    box head (design 2: :class:`CrossModalFusion`; design 3: :class:`GatedResidualFusion`, with
    which a single camera's maps reach the heads unchanged). Either modality may be absent (per call
    or per sample). Whether the trunk's own
    weights train is ``cfg.trunk`` (``frozen`` or ``full``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RGBTEncoder(cfg)
        dims = [cfg.highres_dims[0], cfg.highres_dims[1], cfg.neck_dim]
        self.level_dims = dims
        self.necks = nn.ModuleDict(
            {m: LeanNeck(self.encoder.channels, cfg.neck_dim, cfg.highres_dims, normalize=cfg.design >= 3)
             for m in MODALITIES}
        )
        if cfg.design >= 3:
            per_channel, project = cfg.fusion_gate == "channel", cfg.fusion_project
            self.fusion = nn.ModuleList(
                GatedResidualFusion(d, cfg.fusion_reduction, None, per_channel, project) for d in dims
            )
            self.box_fusion = nn.ModuleList(
                GatedResidualFusion(d, cfg.fusion_reduction, None, per_channel, project) for d in dims[1:]
            )
        else:
            self.fusion = nn.ModuleList(CrossModalFusion(d, cfg.fusion_reduction) for d in dims)
            self.box_fusion = nn.ModuleList(CrossModalFusion(d, cfg.fusion_reduction) for d in dims[1:])
        self.semantic_head = SemanticHead(
            dims, cfg.num_classes, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_mlp_dim, cfg.decoder_depth
        )
        self.aux_head = AuxiliaryHead(dims, cfg.num_classes)
        # The trainer turns this off when the auxiliary loss has weight 0, so its forward is not wasted.
        self.aux_in_training = True
        self.box_head = BoxHead(dims[1:], cfg.num_classes, dim=cfg.box_dim, num_convs=cfg.box_tower_convs)

    # -- parameters -------------------------------------------------------------------------
    @property
    def trunk_policy(self) -> str:
        """``"frozen"`` (only LoRA adapts the trunk) or ``"full"`` (the trunk trains too)."""
        return str(self.cfg.trunk)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: LoRA, necks, fusion and heads, plus the trunk under ``full``."""
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

    def encode(self, rgb: Tensor | None, thermal: Tensor | None) -> dict[str, list[Tensor] | None]:
        """Per-modality neck pyramids ``[s4, s8, s16]`` (``B,D_l,H/s,W/s``); ``None`` for an absent image."""
        return {
            modality: None if image is None else self.necks[modality](self.encoder(image, modality))
            for modality, image in (("rgb", rgb), ("thermal", thermal))
        }

    @staticmethod
    def _fuse_levels(
        pyramids: dict[str, list[Tensor] | None], present: Tensor, fusions: nn.ModuleList, first_level: int
    ) -> tuple[list[Tensor], list[Tensor]]:
        reference = pyramids["rgb"] or pyramids["thermal"]
        fused, gates = [], []
        for offset, fusion in enumerate(fusions):
            level = first_level + offset
            streams = [
                pyramid[level] if pyramid is not None else torch.zeros_like(reference[level])
                for pyramid in (pyramids["rgb"], pyramids["thermal"])
            ]
            out, gate = fusion(streams[0], streams[1], present)
            fused.append(out)
            gates.append(gate)
        return fused, gates

    def fuse(
        self, rgb: Tensor | None, thermal: Tensor | None, modality_mask: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Mask-fused pyramid ``[s4, s8, s16]`` (``B,D_l,H/s,W/s``) and its gates ``[B,2,H/s,W/s]``."""
        _, _, _, present = self._presence(rgb, thermal, modality_mask)
        return self._fuse_levels(self.encode(rgb, thermal), present, self.fusion, 0)

    def _heads(self, pyramids: dict[str, list[Tensor] | None], present: Tensor) -> dict[str, Any]:
        fused, gates = self._fuse_levels(pyramids, present, self.fusion, 0)
        box_fused, box_gates = self._fuse_levels(pyramids, present, self.box_fusion, 1)
        outputs: dict[str, Any] = {
            "semantic": self.semantic_head(fused),
            "boxes": self.box_head(box_fused),
            "fused": fused,
            "gates": gates,
            "box_gates": box_gates,
        }
        if self.training and self.aux_in_training:
            outputs["aux"] = self.aux_head(fused)
        return outputs

    def forward(
        self,
        rgb: Tensor | None,
        thermal: Tensor | None,
        modality_mask: Tensor | None = None,
        branches: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Run the network.

        Args:
            rgb: ``B,3,H,W`` float in [0, 1], or ``None`` when the RGB camera is missing.
            thermal: ``B,1,H,W`` float in [0, 1], or ``None``. H, W multiples of 32.
            modality_mask: optional ``B,2`` bool, ``[:, 0]`` RGB present, ``[:, 1]`` thermal present;
                a False entry makes the network ignore that sample's input of that modality.
        Returns:
            ``"semantic"``: ``B,K,H/4,W/4`` logits; ``"aux"``: ``B,K,H/4,W/4`` logits (training mode
            with ``aux_in_training`` only); ``"boxes"``: raw box-head outputs for ``box_head.loss`` /
            ``box_head.decode``;
            ``"fused"``: mask-fused ``[s4, s8, s16]`` maps ``B,D_l,H/s,W/s``; ``"gates"``: their
            per-level modality weights ``B,2,H/s,W/s``; ``"box_gates"``: the box fusion's (strides 8, 16).
            With ``branches`` (e.g. ``("fused", "rgb", "thermal")``): ``{branch: such outputs}``, see
            :meth:`forward_branches` (through ``forward`` so wrappers such as DDP see the call).
        """
        if branches is not None:
            return self.forward_branches(rgb, thermal, modality_mask, tuple(branches))
        _, _, _, present = self._presence(rgb, thermal, modality_mask)
        return self._heads(self.encode(rgb, thermal), present)

    def forward_branches(
        self,
        rgb: Tensor,
        thermal: Tensor,
        modality_mask: Tensor | None = None,
        branches: tuple[str, ...] = BRANCHES,
    ) -> dict[str, dict[str, Any]]:
        """Heads on the fused pyramid and on each camera alone, from one trunk pass per modality.

        ``"fused"`` honours ``modality_mask`` (``B,2`` bool, as in :meth:`forward`); ``"rgb"`` and
        ``"thermal"`` see only that camera, exactly as ``forward(rgb, None)`` /
        ``forward(None, thermal)`` would. Supervising all three teaches the shared heads to work
        with either camera missing, for the cost of the (cheap) fusion and heads only.

        Returns ``{branch: outputs of forward}`` for the requested ``branches``.
        """
        unknown = [b for b in branches if b not in BRANCHES]
        if unknown or not branches:
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {branches}")
        if rgb is None or thermal is None:
            raise ValueError("forward_branches needs both images (rgb B,3,H,W and thermal B,1,H,W)")
        _, _, device, present = self._presence(rgb, thermal, modality_mask)
        pyramids = self.encode(rgb, thermal)
        only = {
            "fused": present,
            "rgb": torch.tensor([[True, False]], device=device).expand_as(present),
            "thermal": torch.tensor([[False, True]], device=device).expand_as(present),
        }
        return {branch: self._heads(pyramids, only[branch]) for branch in branches}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


__all__ = ["BRANCHES", "RGBTNet", "count_parameters", "TRUNK_PREFIX"]
