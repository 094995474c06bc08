"""CMSS-guided complementary masked image modelling (``cmss-mim``), after M-SpecGene.

Cross-Modality Structural Sparsity (CMSS) scores every aligned patch pair; a three-component
1-D Gaussian mixture fitted to each batch's scores splits the patches into low, middle and high
CMSS; masks are drawn from those components with proportions that move from easy (mostly high
CMSS: the other modality shows the same structure) to hard (mostly low CMSS) over training.
The two modalities get complementary masks, so every patch is visible in exactly one of them
and has to be reconstructed in the other from what fusion carries across.

The exact definitions are in docs/pretraining.md. Shapes: ``B`` batch, ``N`` mask units
(patches) per image, ``C`` channels, ``P`` mask-unit size in pixels.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rgbt_perception.core.defaults import CAMERAS

# Component proportions of the masked patches of the guided modality, ordered by component mean
# (low, middle, high CMSS). Easy: most masked patches are ones the other modality explains.
EASY_TARGET = (0.1, 0.3, 0.6)
HARD_TARGET = (0.6, 0.3, 0.1)


@dataclass
class CMSSConfig:
    """Hyper-parameters of CMSS-guided masking and reconstruction.

    ``patch_size``: mask unit in input pixels (a multiple of the trunk's stride 4).
    ``mask_ratio``: fraction of the guided modality's patches that are masked; the other
    modality masks the rest. ``gmm_iterations``: EM iterations per batch.
    ``modality_drop``: per-sample probability of the extreme complementary pair, one modality
    (drawn at random) masked entirely and marked absent in the fusion, the other fully visible,
    so the single-modality path of the network learns to carry the missing modality too.
    """

    patch_size: int = 16
    mask_ratio: float = 0.5
    modality_drop: float = 0.0
    gmm_components: int = 3
    gmm_iterations: int = 10
    easy_target: tuple[float, ...] = EASY_TARGET
    hard_target: tuple[float, ...] = HARD_TARGET

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.patch_size % 4:
            raise ValueError(f"cmss patch_size must be a positive multiple of 4, got {self.patch_size}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"cmss mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.modality_drop < 1.0:
            raise ValueError(f"cmss modality_drop must be in [0, 1), got {self.modality_drop}")
        for name in ("easy_target", "hard_target"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != self.gmm_components or min(value) < 0 or abs(sum(value) - 1.0) > 1e-6:
                raise ValueError(f"cmss {name} must be {self.gmm_components} non-negative numbers summing to 1, "
                                 f"got {value}")
            setattr(self, name, value)


def cmss_scores(rgb_tokens: Tensor, thermal_tokens: Tensor, eps: float = 1e-8) -> Tensor:
    """Cross-Modality Structural Sparsity of aligned patch pairs.

    For patch ``i`` with tokens ``r`` (RGB) and ``t`` (thermal):
    ``raw_i = cos(r, t) * sqrt(var(r) * var(t))`` with the variance over channels (population),
    then min-max normalised over the whole batch to ``[0, 1]`` (all zeros if every raw value is
    the same).

    Args:
        rgb_tokens: ``B, N, C``.
        thermal_tokens: ``B, N, C``.

    Returns:
        ``B, N`` scores in ``[0, 1]``.
    """
    if rgb_tokens.shape != thermal_tokens.shape or rgb_tokens.dim() != 3:
        raise ValueError(
            f"rgb and thermal tokens must both be B,N,C; got {tuple(rgb_tokens.shape)} and "
            f"{tuple(thermal_tokens.shape)}"
        )
    rgb_tokens = rgb_tokens.float()
    thermal_tokens = thermal_tokens.float()
    agreement = F.cosine_similarity(rgb_tokens, thermal_tokens, dim=-1, eps=eps)
    spread = (rgb_tokens.var(dim=-1, unbiased=False) * thermal_tokens.var(dim=-1, unbiased=False)).sqrt()
    raw = agreement * spread
    low, high = raw.min(), raw.max()
    if float(high - low) <= eps:
        return torch.zeros_like(raw)
    return (raw - low) / (high - low)


@dataclass
class GaussianMixture1D:
    """A fitted 1-D mixture; components ordered by increasing mean.

    ``means``, ``variances``, ``weights``: ``K``; ``responsibilities``: ``M, K`` for the fitted
    values.
    """

    means: Tensor
    variances: Tensor
    weights: Tensor
    responsibilities: Tensor


def _log_gaussian(values: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``M, K`` log densities of ``M`` values under ``K`` Gaussians."""
    diff = values[:, None] - means[None, :]
    return -0.5 * (diff * diff / variances[None, :] + variances.log()[None, :] + torch.log(torch.tensor(2 * torch.pi)))


def fit_gmm_1d(
    values: Tensor, components: int = 3, iterations: int = 10, variance_floor: float = 1e-6
) -> GaussianMixture1D:
    """Fit a 1-D Gaussian mixture with EM, deterministically.

    Initialisation: means at the ``(2k + 1) / (2K)`` quantiles of the values, every variance the
    values' variance (floored), equal weights. ``iterations`` EM steps follow.

    Args:
        values: any shape; flattened to ``M`` values.
    """
    values = values.detach().float().flatten()
    if values.numel() < components:
        raise ValueError(f"need at least {components} values to fit {components} components, got {values.numel()}")
    quantiles = (torch.arange(components, dtype=torch.float32, device=values.device) * 2 + 1) / (2 * components)
    means = torch.quantile(values, quantiles)
    variances = values.var(unbiased=False).clamp_min(variance_floor).expand(components).clone()
    weights = torch.full((components,), 1.0 / components, device=values.device)
    responsibilities = torch.full((values.numel(), components), 1.0 / components, device=values.device)
    for _ in range(iterations):
        log_joint = _log_gaussian(values, means, variances) + weights.clamp_min(1e-12).log()[None, :]
        responsibilities = log_joint.softmax(dim=1)
        counts = responsibilities.sum(dim=0).clamp_min(1e-8)
        weights = counts / values.numel()
        means = (responsibilities * values[:, None]).sum(dim=0) / counts
        diff = values[:, None] - means[None, :]
        variances = ((responsibilities * diff * diff).sum(dim=0) / counts).clamp_min(variance_floor)
    log_joint = _log_gaussian(values, means, variances) + weights.clamp_min(1e-12).log()[None, :]
    responsibilities = log_joint.softmax(dim=1)
    order = means.argsort()
    return GaussianMixture1D(means[order], variances[order], weights[order], responsibilities[:, order])


def curriculum_target(
    progress: float, easy: Sequence[float] = EASY_TARGET, hard: Sequence[float] = HARD_TARGET
) -> Tensor:
    """Component proportions at ``progress`` in ``[0, 1]``: linear from ``easy`` to ``hard``."""
    progress = min(max(float(progress), 0.0), 1.0)
    easy_t = torch.tensor(easy, dtype=torch.float32)
    hard_t = torch.tensor(hard, dtype=torch.float32)
    return (1.0 - progress) * easy_t + progress * hard_t


def complementary_masks(
    scores: Tensor,
    progress: float,
    cfg: CMSSConfig,
    generator: torch.Generator | None = None,
    guided_offset: int = 0,
) -> tuple[Tensor, Tensor, GaussianMixture1D]:
    """Draw complementary RGB / thermal masks from the batch's CMSS mixture.

    Per sample, one modality is guided (thermal for even ``b + guided_offset``, RGB for odd):
    ``round(mask_ratio * N)`` of its patches are masked, drawn without replacement with
    probability ``w_i = sum_k target_k * gamma_ik / n_k`` (``gamma`` the responsibilities,
    ``n_k`` the component's soft count, ``target`` from :func:`curriculum_target`), so the
    expected share of masked patches from component ``k`` is ``target_k``. The other modality
    masks exactly the remaining patches.

    Args:
        scores: ``B, N`` CMSS values.

    Returns:
        ``(rgb_mask, thermal_mask, mixture)``: ``B, N`` bool masks (True = masked),
        ``rgb_mask ^ thermal_mask`` is all True.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be B,N, got shape {tuple(scores.shape)}")
    batch, num_patches = scores.shape
    mixture = fit_gmm_1d(scores, cfg.gmm_components, cfg.gmm_iterations)
    gamma = mixture.responsibilities.view(batch, num_patches, -1)
    soft_counts = gamma.sum(dim=(0, 1)).clamp_min(1e-8)
    target = curriculum_target(progress, cfg.easy_target, cfg.hard_target).to(scores.device)
    weights = (gamma * (target / soft_counts)[None, None, :]).sum(dim=-1).clamp_min(1e-12)
    # Gumbel top-k: sampling without replacement proportional to the weights.
    uniform = torch.rand(weights.shape, generator=generator, device="cpu").to(weights.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    num_masked = min(max(int(round(cfg.mask_ratio * num_patches)), 1), num_patches - 1)
    chosen = (weights.log() + gumbel).topk(num_masked, dim=1).indices
    guided_mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=scores.device)
    guided_mask.scatter_(1, chosen, True)
    thermal_guided = ((torch.arange(batch, device=scores.device) + guided_offset) % 2 == 0)[:, None]
    thermal_mask = torch.where(thermal_guided, guided_mask, ~guided_mask)
    return ~thermal_mask, thermal_mask, mixture


def drop_modalities(
    rgb_mask: Tensor, thermal_mask: Tensor, probability: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Turn some samples' masks into the extreme complementary pair: one modality all masked.

    With ``probability`` per sample, RGB or thermal (even odds) is masked entirely and the other
    not at all; the masks stay complementary.

    Returns:
        ``(rgb_mask, thermal_mask, present)``; ``present`` is ``B, 2`` bool (rgb, thermal), False
        for the dropped modality, for ``RGBTNet.fuse(modality_mask=...)``.
    """
    batch = rgb_mask.shape[0]
    draws = torch.rand(batch, 2, generator=generator).to(rgb_mask.device)
    dropped = draws[:, 0] < probability
    drop_rgb = dropped & (draws[:, 1] < 0.5)
    drop_thermal = dropped & ~drop_rgb
    rgb_mask = torch.where(drop_rgb[:, None], True, torch.where(drop_thermal[:, None], False, rgb_mask))
    thermal_mask = ~rgb_mask
    present = torch.stack([~drop_rgb, ~drop_thermal], dim=1)
    return rgb_mask, thermal_mask, present


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``B, C, H, W`` -> ``B, N, P*P*C`` non-overlapping patches, row-major over the patch grid."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def normalized_patch_targets(images: Tensor, patch_size: int, eps: float = 1e-6) -> Tensor:
    """Reconstruction targets: each patch standardised by its own mean and variance (``B, N, P*P*C``)."""
    patches = patchify(images.float(), patch_size)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_reconstruction_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per patch, averaged over the masked patches only.

    Args:
        prediction, target: ``B, N, D``.
        mask: ``B, N`` bool, True = masked (scored).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def unit_tokens(token_map: Tensor, unit: int) -> Tensor:
    """Average ``B, H, W, C`` patch-embedding tokens over ``unit x unit`` cells -> ``B, N, C``."""
    pooled = F.avg_pool2d(token_map.permute(0, 3, 1, 2).float(), unit)
    return pooled.flatten(2).transpose(1, 2)


class MaskTokens(nn.Module):
    """One learned mask token per modality, written into masked patch-embedding positions."""

    def __init__(self, dim: int, modalities: Sequence[str] = CAMERAS) -> None:
        super().__init__()
        self.tokens = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in modalities})
        for token in self.tokens.values():
            nn.init.trunc_normal_(token, std=0.02)

    def fill(self, tokens: Tensor, mask: Tensor, modality: str) -> Tensor:
        """Replace masked positions.

        Args:
            tokens: ``B, H, W, C`` patch embeddings (Hiera's channels-last layout).
            mask: ``B, h, w`` bool on the mask-unit grid; ``H, W`` must be multiples of ``h, w``.
        """
        batch, height, width, _ = tokens.shape
        grid_h, grid_w = mask.shape[-2:]
        if height % grid_h or width % grid_w:
            raise ValueError(f"token grid {height}x{width} is not a multiple of the mask grid {grid_h}x{grid_w}")
        dense = mask.repeat_interleave(height // grid_h, dim=1).repeat_interleave(width // grid_w, dim=2)
        token = self.tokens[modality].to(tokens.dtype)
        return torch.where(dense[..., None], token, tokens)


@contextmanager
def masked_patch_embedding(
    patch_embed: nn.Module, mask_tokens: MaskTokens, mask: Tensor, modality: str
) -> Iterator[None]:
    """While active, ``patch_embed``'s output has ``mask`` (``B, h, w``) replaced by the modality's token.

    The replacement happens before the positional embedding is added and before any window
    partition, so Hiera's windows and strides stay intact.
    """

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        return mask_tokens.fill(output, mask, modality)

    handle = patch_embed.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class PixelDecoder(nn.Module):
    """Light decoder: a stride-``P`` feature map -> normalised pixel patches of one modality.

    Input ``B, C, h, w``; output ``B, h*w, P*P*out_channels``.
    """

    def __init__(self, in_dim: int, patch_size: int, out_channels: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden_dim, patch_size * patch_size * out_channels, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features).flatten(2).transpose(1, 2)


@contextmanager
def masked_encoding(encoder: nn.Module, mask_tokens: MaskTokens, masks: dict[str, Tensor]) -> Iterator[None]:
    """While active, every ``encoder(x, modality)`` call masks ``masks[modality]`` (``B, h, w``).

    The modality is read from the encoder call itself, so the order in which a network encodes
    its modalities does not matter; calls for a modality without a mask run unmasked.
    """
    current: dict[str, str | None] = {"modality": None}

    def remember(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        current["modality"] = kwargs.get("modality", args[1] if len(args) > 1 else None)

    def fill(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor | None:
        modality = current["modality"]
        if modality not in masks:
            return None
        return mask_tokens.fill(output, masks[modality], modality)

    handles = [encoder.register_forward_pre_hook(remember, with_kwargs=True),
               encoder.trunk.patch_embed.register_forward_hook(fill)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class CMSSMIMObjective(nn.Module):
    """``cmss-mim`` on an ``RGBTNet``.

    Per batch: CMSS of the frozen patch embeddings (pooled per mask unit) -> GMM -> complementary
    masks -> both modalities encoded with their adapters and masked patches replaced by mask
    tokens -> necks + fusion -> one light decoder per modality reconstructs that modality's
    normalised pixel patches at its masked units. Trains LoRA, necks, fusion, the mask tokens and
    the decoders (the last two stay in the checkpoint only).
    """

    method = "cmss-mim"
    export_parts = ("lora", "necks", "fusion")

    def __init__(self, cfg: CMSSConfig, embed_dim: int, neck_dim: int, decoder_dim: int = 128) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_tokens = MaskTokens(embed_dim)
        self.decoders = nn.ModuleDict({
            "rgb": PixelDecoder(neck_dim, cfg.patch_size, 3, decoder_dim),
            "thermal": PixelDecoder(neck_dim, cfg.patch_size, 1, decoder_dim),
        })

    def prepare(self, model: nn.Module) -> None:
        """Nothing to freeze: the CMSS tokens come from the frozen patch embedding itself."""

    def trainable(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        own = [(n, p) for n, p in model.named_parameters()
               if ".lora_" in n or n.startswith("necks.") or n.startswith("fusion.")]
        return own + [(f"objective.{n}", p) for n, p in self.named_parameters()]

    @torch.no_grad()
    def unit_scores(self, model: nn.Module, rgb: Tensor, thermal: Tensor) -> Tensor:
        """``B, N`` CMSS of the frozen patch embeddings averaged per mask unit."""
        encoder = model.encoder
        unit = self.cfg.patch_size // 4
        rgb_tokens = encoder.trunk.patch_embed(encoder.normalize(rgb))
        thermal_tokens = encoder.trunk.patch_embed(encoder.normalize(thermal))
        return cmss_scores(unit_tokens(rgb_tokens, unit), unit_tokens(thermal_tokens, unit))

    def _decoder_input(self, fused: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        """The fused map at the mask-unit stride (pooled from the finest level that divides it)."""
        patch = self.cfg.patch_size
        for feature in reversed(fused):
            stride = image_hw[0] // feature.shape[-2]
            if patch % stride == 0:
                return feature if stride == patch else F.avg_pool2d(feature, patch // stride)
        raise ValueError(f"no fused map has a stride dividing the patch size {patch}")

    def forward(self, model: nn.Module, rgb: Tensor, thermal: Tensor, progress: float = 0.0,
                step: int = 0, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """``rgb`` ``B,3,H,W`` and ``thermal`` ``B,1,H,W`` in [0, 1] -> (loss, logged parts)."""
        batch, _, height, width = rgb.shape
        patch = self.cfg.patch_size
        grid = (height // patch, width // patch)
        scores = self.unit_scores(model, rgb, thermal)
        rgb_mask, thermal_mask, mixture = complementary_masks(scores, progress, self.cfg, generator, guided_offset=step)
        present = None
        if self.cfg.modality_drop > 0:
            rgb_mask, thermal_mask, present = drop_modalities(rgb_mask, thermal_mask, self.cfg.modality_drop, generator)
        masks = {"rgb": rgb_mask.view(batch, *grid), "thermal": thermal_mask.view(batch, *grid)}
        with masked_encoding(model.encoder, self.mask_tokens, masks):
            fused, _ = model.fuse(rgb, thermal, modality_mask=present)
        features = self._decoder_input(fused, (height, width))
        rgb_loss = masked_reconstruction_loss(
            self.decoders["rgb"](features).float(), normalized_patch_targets(rgb, patch), rgb_mask)
        thermal_loss = masked_reconstruction_loss(
            self.decoders["thermal"](features).float(), normalized_patch_targets(thermal, patch), thermal_mask)
        loss = rgb_loss + thermal_loss
        parts = {"total": float(loss.detach()), "rec_rgb": float(rgb_loss.detach()),
                 "rec_thermal": float(thermal_loss.detach())}
        for k, mean in enumerate(mixture.means.tolist()):
            parts[f"gmm_mean_{k}"] = mean
        return loss, parts
