"""Semantic head in the style of SAM2's mask decoder: one learned token per class.

The class tokens and the fused stride-16 map pass through a two-way transformer whose module and
parameter names follow SAM2's mask-decoder transformer, so Meta's ``sam_mask_decoder.transformer.*``
weights load into :class:`TwoWayTransformer` by name at ``embedding_dim=256``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Plain MLP with ``layers.{i}`` linears and ReLU between them (SAM2's naming)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = embedding_dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, inner)
        self.k_proj = nn.Linear(embedding_dim, inner)
        self.v_proj = nn.Linear(embedding_dim, inner)
        self.out_proj = nn.Linear(inner, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q: B,Nq,D``, ``k, v: B,Nk,D`` -> ``B,Nq,D``."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention."""

    def __init__(
        self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, tokens: Tensor, image: Tensor, token_pe: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens: B,K,D``, ``image: B,N,D`` (with their positional encodings) -> updated pair."""
        if self.skip_first_layer_pe:
            # The first layer's tokens are the positional encoding themselves.
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            query = tokens + token_pe
            tokens = tokens + self.self_attn(query, query, tokens)
        tokens = self.norm1(tokens)

        image_key = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image_key, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image_key, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """Two-way transformer between a few query tokens and a dense image map (SAM2's layout)."""

    def __init__(
        self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, index == 0)
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """``image_embedding, image_pe: B,D,h,w``; ``point_embedding: B,K,D``.

        Returns tokens ``B,K,D`` and image features ``B,h*w,D``.
        """
        image = image_embedding.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        tokens = point_embedding
        for layer in self.layers:
            tokens, image = layer(tokens, image, point_embedding, image_pe)
        attended = self.final_attn_token_to_image(tokens + point_embedding, image + image_pe, image)
        return self.norm_final_attn(tokens + attended), image


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``B,C,H,W`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        # A constant shape (not one read from the input) keeps the ONNX export static.
        self.normalized_shape = (channels,)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed 2-D sine/cosine encoding ``1, dim, height, width`` over normalised coordinates.

    Depends only on the map size, so any input size works and no buffer has to be stored.
    """
    if dim % 4:
        raise ValueError(f"positional encoding width must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    ys = ys[:, None] * freqs[None] * 16
    xs = xs[:, None] * freqs[None] * 16
    y_enc = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    x_enc = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([y_enc, x_enc], dim=2).permute(2, 0, 1)[None].to(dtype)


class SemanticHead(nn.Module):
    """Class tokens -> two-way transformer over the stride-16 map -> per-class hypernetwork masks.

    As in SAM2's mask decoder, the transformed image map is upscaled twice with transposed
    convolutions, adding projected stride-8 (``conv_s1``) and stride-4 (``conv_s0``) features: the
    high-resolution path that keeps thin structures (poles, cones, kerbs). Each class token's
    hypernetwork MLP gives the weights of a dot product against that stride-4 map.

    ``in_dims``: widths of the fused ``[s4, s8, s16]`` maps (an int: the same for all three).
    """

    def __init__(
        self,
        in_dims: Sequence[int] | int,
        num_classes: int,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        depth: int = 2,
    ) -> None:
        super().__init__()
        dims = [in_dims] * 3 if isinstance(in_dims, int) else list(in_dims)
        if len(dims) != 3:
            raise ValueError(f"in_dims must give the widths of 3 levels, got {dims}")
        self.input_proj = nn.Identity() if dims[2] == dim else nn.Conv2d(dims[2], dim, kernel_size=1)
        self.class_tokens = nn.Embedding(num_classes, dim)
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dims[0], dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dims[1], dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, num_layers=3) for _ in range(num_classes)
        )

    def forward(self, fused: list[Tensor]) -> Tensor:
        """``fused = [s4, s8, s16]`` (``B,D_l,H/s,W/s``) -> class logits ``B,K,H/4,W/4``."""
        feat_s4, feat_s8, feat_s16 = fused
        image = self.input_proj(feat_s16)
        batch, dim, height, width = image.shape
        image_pe = sine_position_encoding(height, width, dim, image.device, image.dtype)
        tokens = self.class_tokens.weight[None].expand(batch, -1, -1)
        tokens, image = self.transformer(image, image_pe.expand(batch, -1, -1, -1), tokens)
        image = image.transpose(1, 2).reshape(batch, dim, height, width)

        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        upscaled = act1(norm1(deconv1(image) + self.conv_s1(feat_s8)))
        upscaled = act2(deconv2(upscaled) + self.conv_s0(feat_s4))

        hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        batch, channels, out_h, out_w = upscaled.shape
        return (hyper @ upscaled.flatten(2)).view(batch, -1, out_h, out_w)
