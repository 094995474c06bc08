"""Inference form of the network: per-modality LoRA merged into the trunk, one trunk pass for both cameras.

Training keeps peft's unmerged adapters on one shared trunk and switches them per modality, so a
frame costs two trunk passes plus the low-rank products. For inference, :func:`inference_model`
builds a copy of the network in which

- every peft LoRA layer of the encoder (found by type, whatever the config targets) becomes a
  :class:`ModalityLayer`: one base-layer copy per modality with ``W + scale * B @ A`` of that
  modality's adapter already added (a frozen or a fully trained trunk alike);
- the encoder runs both cameras as one batch ``[rgb; thermal]`` (``2B`` rows): each merged layer
  applies the RGB weights to the first half of its leading dimension and the thermal weights to
  the second half. Hiera keeps the batch-major order through its window partition (``B * windows``
  rows, the windows of sample 0 first), so the halves stay the two cameras in every block.

For a linear layer both halves go through one batched matrix product with the two merged weights
stacked (``2, C_in, C_out``), so the pass costs what one plain trunk pass of batch ``2B`` costs.

The copy is checked against the original at build time (:func:`check_equivalence`); if the network
ever computes something per modality that this module does not know about, the check fails and
:func:`inference_model` falls back to the merged layers with one trunk pass per camera (or, if
even that differs, to the original network), with a warning naming the cause.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from .encoder import MODALITIES

SPLIT = "split"
# Largest |difference| of any output against the unmerged network accepted as "the same" in fp32
# (merging reorders the sums of the trunk's products; measured ~1e-5 on micro).
DEFAULT_TOLERANCE = 1e-3


class MergeError(ValueError):
    """The network has LoRA layers of a kind this module cannot merge (the message names them)."""


class Router:
    """Which modality's weights the merged layers apply: ``"rgb"``, ``"thermal"`` or ``"split"``
    (first half of the leading dimension RGB, second half thermal). Shared by all layers of one
    network and set by :class:`BatchedEncoder` before each trunk pass."""

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = modalities
        self.mode: str = modalities[0]


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """``(qualified name, layer)`` of every peft LoRA layer under ``module``."""
    for name, child in module.named_modules():
        if isinstance(child, LoraLayer):
            yield name, child


def merged_base_layer(layer: LoraLayer, adapter: str | None) -> nn.Module:
    """A copy of ``layer``'s base layer with ``adapter``'s low-rank update added (``None``: plain)."""
    base = layer.get_base_layer()
    merged = copy.deepcopy(base)
    if adapter is None or adapter not in layer.lora_A:
        return merged
    variants = getattr(layer, "lora_variant", {}) or {}
    if adapter in variants or getattr(layer, "use_dora", {}).get(adapter, False):
        raise MergeError(f"adapter {adapter!r} of {type(layer).__name__} is a LoRA variant (e.g. DoRA); "
                         "only plain LoRA merges")
    with torch.no_grad():
        delta = layer.get_delta_weight(adapter)
        merged.weight.add_(delta.to(merged.weight.dtype))
        lora_b = layer.lora_B[adapter]
        bias = getattr(lora_b, "bias", None)
        if bias is not None:  # peft's lora_bias: B's bias adds to the base bias, scaled like the product
            if merged.bias is None:
                merged.bias = nn.Parameter(torch.zeros_like(bias))
            merged.bias.add_(bias * layer.scaling[adapter])
    return merged


class ModalityLayer(nn.Module):
    """One base layer per modality, each with that modality's adapter merged in.

    Input: any ``N, ...`` tensor the base layer takes; in ``split`` mode ``N`` is even and the
    first ``N/2`` rows belong to the first modality. Output: the base layer's output for the rows.
    """

    def __init__(self, layer: LoraLayer, router: Router) -> None:
        super().__init__()
        self.router = router
        self.per_modality = nn.ModuleDict({m: merged_base_layer(layer, m) for m in router.modalities})
        first = self.per_modality[router.modalities[0]]
        self.linear = isinstance(first, nn.Linear)
        if self.linear:
            # Stacked for one batched product over the two halves: ``M, C_in, C_out`` and ``M, 1, C_out``.
            weights = [self.per_modality[m].weight.t() for m in router.modalities]
            self.register_buffer("stacked_weight", torch.stack(weights).contiguous(), persistent=False)
            if first.bias is not None:
                biases = [self.per_modality[m].bias for m in router.modalities]
                self.register_buffer("stacked_bias", torch.stack(biases)[:, None, :].contiguous(), persistent=False)
            else:
                self.stacked_bias = None

    def forward(self, x: Tensor) -> Tensor:
        mode = self.router.mode
        if mode != SPLIT:
            return self.per_modality[mode](x)
        count = len(self.router.modalities)
        if x.shape[0] % count:
            raise ValueError(f"split mode needs a leading dimension divisible by {count}, got shape {tuple(x.shape)}")
        if self.linear:
            rows = x.reshape(count, -1, x.shape[-1])
            weight = self.stacked_weight.to(rows.dtype)
            if self.stacked_bias is None:
                out = torch.bmm(rows, weight)
            else:
                out = torch.baddbmm(self.stacked_bias.to(rows.dtype), rows, weight)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        halves = x.chunk(count, dim=0)
        return torch.cat([self.per_modality[m](h) for m, h in zip(self.router.modalities, halves)])


class BatchedEncoder(nn.Module):
    """Front of the network's encoder in the inference copy.

    ``prefetch(rgb, thermal)`` runs the trunk once on ``[rgb; thermal]`` (thermal replicated to three
    channels, which is what the encoder's own normalisation does) and keeps each half; the network's
    following ``encoder(image, modality)`` calls with those very tensors get them back. Any other call
    runs the wrapped encoder with the merged layers set to that modality.
    """

    def __init__(self, encoder: nn.Module, router: Router, batch_modalities: bool) -> None:
        super().__init__()
        self.inner = encoder
        self.router = router
        self.batch_modalities = batch_modalities
        self.trunk_passes = 0  # counted for tests and benchmarks
        self.has_merged_layers = any(isinstance(m, ModalityLayer) for m in encoder.modules())
        self._prefetched: dict[str, tuple[Tensor, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def prefetch(self, rgb: Tensor, thermal: Tensor) -> None:
        """Encode both cameras (``B,3,H,W`` and ``B,1,H,W``) in one trunk pass of batch ``2B``."""
        batch = rgb.shape[0]
        both = torch.cat([rgb, thermal.expand(-1, rgb.shape[1], -1, -1)])
        self.router.mode = SPLIT
        try:
            features = self.inner(both, self.router.modalities[0])
        finally:
            self.router.mode = self.router.modalities[0]
        self.trunk_passes += 1
        self._prefetched = {
            "rgb": (rgb, [f[:batch] for f in features]),
            "thermal": (thermal, [f[batch:] for f in features]),
        }

    def forward(self, x: Tensor, modality: str | None, return_attention: bool = False) -> Any:
        hit = self._prefetched.pop(modality, None) if modality is not None else None
        if hit is not None and hit[0] is x and not return_attention:
            return hit[1]
        if modality is None and self.has_merged_layers:
            raise MergeError("the merged trunk has no adapter-free form; use the original network")
        self.router.mode = modality if modality is not None else self.router.modalities[0]
        self.trunk_passes += 1
        return self.inner(x, modality, return_attention=return_attention)


class InferenceNet(nn.Module):
    """The inference copy: same call and outputs as ``RGBTNet`` (``net(rgb, thermal)``), merged LoRA,
    both cameras in one trunk pass when ``batch_modalities``. Attributes it does not have (``cfg``,
    ``box_head`` ...) are the wrapped network's."""

    def __init__(self, net: nn.Module, batch_modalities: bool) -> None:
        super().__init__()
        self.net = net
        self.batch_modalities = batch_modalities

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

    def forward(self, rgb: Tensor | None, thermal: Tensor | None, modality_mask: Tensor | None = None) -> Any:
        encoder = self.net.encoder
        if (self.batch_modalities and rgb is not None and thermal is not None and rgb.shape[0] == thermal.shape[0]
                and rgb.shape[-2:] == thermal.shape[-2:]):
            encoder.prefetch(rgb, thermal)
        try:
            return self.net(rgb, thermal, modality_mask)
        finally:
            encoder._prefetched = {}


@dataclass
class MergeReport:
    """What :func:`inference_model` built: merged layer count, whether both cameras share one trunk
    pass, the largest output difference against the original network, and why a fallback happened."""

    merged_layers: int = 0
    batched: bool = False
    max_abs_diff: float | None = None
    fallback: str | None = None


class CachedPositionEmbedding:
    """A Hiera trunk's ``_pos_embed`` with the position embedding computed once per grid.

    Hiera resizes its global position embedding to the stride-4 token grid (bicubic) and adds the
    tiled window embedding on every call: 3 ms per pass for micro at 480x640 on one CPU thread. With
    the trunk's weights fixed (the inference copy) the sum depends only on the grid, the dtype, the
    device and the autocast state, so it is kept per such key and added as the original adds it
    (bit-identical output). While a tracer records the graph (ONNX export) a kept embedding becomes
    a constant of the graph; nothing is kept from inside a trace.
    """

    def __init__(self, trunk: nn.Module) -> None:
        self.trunk = trunk
        self.compute = type(trunk)._pos_embed
        self.cache: dict[tuple[Any, ...], Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: ``B,H,W,C`` tokens after the patch embedding; returns ``x`` plus the position embedding."""
        device_type = x.device.type
        # int(): a tracer hands out sizes as tensors; the graph is recorded at a fixed size anyway.
        grid = tuple(int(v) for v in x.shape[1:])
        key = (grid, x.dtype, x.device, torch.is_autocast_enabled(device_type),
               torch.get_autocast_dtype(device_type))
        embedding = self.cache.get(key)
        if embedding is None:
            # Position embedding alone: the original adds it to zeros (exact), at batch 1.
            embedding = self.compute(self.trunk, x.new_zeros((1, *grid)))
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                self.cache[key] = embedding
        return x + embedding


def cache_position_embedding(net: nn.Module) -> int:
    """Install :class:`CachedPositionEmbedding` on every Hiera trunk in ``net`` (weights must stay fixed).

    Returns how many trunks were found (those without a ``pos_embed`` are left alone)."""
    count = 0
    for module in net.modules():
        if callable(getattr(type(module), "_pos_embed", None)) and hasattr(module, "pos_embed_window"):
            module._pos_embed = CachedPositionEmbedding(module)
            count += 1
    return count


def build_inference_copy(net: nn.Module, batch_modalities: bool = True) -> tuple[InferenceNet, int]:
    """Deep copy of ``net`` (eval mode, no grad) with its LoRA layers merged per modality and the
    trunk's position embedding kept per input size (:class:`CachedPositionEmbedding`).

    Returns ``(inference copy, number of merged layers)``. The original is left as it is.
    """
    modalities = tuple(MODALITIES)
    copied = copy.deepcopy(net).eval()
    for param in copied.parameters():
        param.requires_grad_(False)
    router = Router(modalities)
    layers = list(lora_layers(copied.encoder))
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        parent = copied.encoder.get_submodule(parent_name) if parent_name else copied.encoder
        setattr(parent, child, ModalityLayer(layer, router))
    cache_position_embedding(copied.encoder)
    copied.encoder = BatchedEncoder(copied.encoder, router, batch_modalities)
    return InferenceNet(copied, batch_modalities).eval(), len(layers)


def _probe_inputs(net: nn.Module, batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Small deterministic inputs for the equivalence check (one window grid of Hiera at stride 32)."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, 64, 96, generator=generator).to(device)
    thermal = torch.rand(batch, 1, 64, 96, generator=generator).to(device)
    return rgb, thermal


def _max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """TF32 off while comparing: the check is about the algebra of the rewrite, and on Ampere and
    later GPUs TF32 convolutions (cuDNN's default) alone make two exact rewrites differ by ~5e-3."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def check_equivalence(reference: nn.Module, candidate: nn.Module, inputs: tuple[Tensor, Tensor] | None = None) -> float:
    """Largest |difference| of ``semantic`` and ``boxes`` between the two networks (fp32, no autocast),
    over both cameras, RGB alone and thermal alone, on ``inputs`` (default: small random ones)."""
    rgb, thermal = inputs if inputs is not None else _probe_inputs(reference)
    worst = 0.0
    with torch.inference_mode(), _exact_fp32():
        for pair in ((rgb, thermal), (rgb, None), (None, thermal)):
            want, got = reference(*pair), candidate(*pair)
            for key in ("semantic", "boxes"):
                worst = max(worst, _max_abs_diff(want[key], got[key]))
    return worst


def _trunk_passes_for_pair(candidate: InferenceNet) -> int:
    encoder = candidate.net.encoder
    rgb, thermal = _probe_inputs(candidate)
    before = encoder.trunk_passes
    with torch.inference_mode():
        candidate(rgb, thermal)
    return encoder.trunk_passes - before


def inference_model(
    net: nn.Module, batch_modalities: bool = True, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[nn.Module, MergeReport]:
    """The fastest form of ``net`` whose outputs equal the original's within ``tolerance``.

    Tries merged LoRA with one trunk pass for both cameras (unless ``batch_modalities`` is off), then
    merged LoRA with a pass per camera, then the original network; each is checked with
    :func:`check_equivalence` on the device ``net`` lives on. Returns ``(model, report)``.
    """
    report = MergeReport()
    reference = net.eval()
    attempts = [True, False] if batch_modalities else [False]
    problems = []
    for batched in attempts:
        try:
            candidate, report.merged_layers = build_inference_copy(net, batched)
            diff = check_equivalence(reference, candidate)
        except (MergeError, RuntimeError, ValueError) as exc:
            problems.append(f"{'batched' if batched else 'per-camera'}: {exc}")
            continue
        if batched and _trunk_passes_for_pair(candidate) != 1:
            # The network reached the encoder with other tensors than it was given (e.g. it casts
            # them first): the prefetched pass would be wasted work, so run a pass per camera.
            problems.append("batched: the network does not call its encoder with its own inputs")
            continue
        if diff <= tolerance:
            report.batched, report.max_abs_diff = batched, diff
            if problems:
                report.fallback = "; ".join(problems)
            return candidate, report
        problems.append(f"{'batched' if batched else 'per-camera'} outputs differ by {diff:.3g} > {tolerance:g}")
    report.fallback = "; ".join(problems)
    warnings.warn(f"LoRA merge not used, the network runs unmerged: {report.fallback}", RuntimeWarning, stacklevel=2)
    return reference, report


def merged_layer_count(model: nn.Module) -> int:
    """Number of :class:`ModalityLayer` modules in ``model`` (0 for an unmerged network)."""
    return sum(1 for m in model.modules() if isinstance(m, ModalityLayer))


__all__ = [
    "BatchedEncoder", "CachedPositionEmbedding", "InferenceNet", "MergeError", "MergeReport", "ModalityLayer", "Router",
    "build_inference_copy", "cache_position_embedding", "check_equivalence", "inference_model", "lora_layers",
    "merged_layer_count",
]
