"""The supervised training loop: AdamW + warm-up/poly, AMP, accumulation, DDP, resume, best-by-val.

``Trainer(cfg).fit()`` runs a whole training; under ``torchrun`` every process runs it and
rank 0 writes logs, checkpoints and the exported weights file. Evaluation always uses the
validation split named in the config (``data.val_split``).
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from rgbt_perception.core.preprocess import ThermalScaling
from rgbt_perception.io.files import atomic_path
from training.config import TrainConfig, save_config
from training.datasets import build_dataset
from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset, collate
from training.losses import RGBTCriterion
from rgbt_perception.evaluation.metrics import SegmentationMetrics

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"


# ----------------------------------------------------------------------------- environment


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` (``auto``: bf16 where supported, else fp16; none on CPU)."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DistributedContext:
    """Rank/world of this process; initialises the process group under ``torchrun``."""

    def __init__(self, device: torch.device) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.owns_group = False
        if self.world_size > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
                self.owns_group = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- optimisation


def is_no_decay(name: str, param: Tensor) -> bool:
    """Biases, norm weights, LoRA-free 1-D tensors, tokens and embeddings get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower() or "token" in name or "pos_embed" in name


def build_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: (decay / no decay) x learning-rate multiplier by name prefix."""
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = 1.0
        for prefix, value in cfg.optim.lr_mult.items():
            if name.startswith(prefix) or f".{prefix}" in f".{name}":
                mult = float(value)
        groups.setdefault((is_no_decay(name, param), mult), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.optim.weight_decay,
         "lr": cfg.optim.lr * mult, "lr_mult": mult}
        for (no_decay, mult), params in sorted(groups.items())
    ]


class WarmupPoly:
    """Learning-rate factor: linear warm-up from ``warmup_ratio`` to 1, then ``(1 - t)^power``.

    Callable on the optimizer step index; ``min_ratio`` is the floor reached at the end.
    """

    def __init__(self, total_steps: int, warmup_steps: int, warmup_ratio: float = 1e-3,
                 power: float = 0.9, min_ratio: float = 0.0) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(min(int(warmup_steps), self.total_steps - 1), 0)
        self.warmup_ratio = warmup_ratio
        self.power = power
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    factor = WarmupPoly(total_steps, cfg.optim.warmup_iters, cfg.optim.warmup_ratio, cfg.optim.poly_power,
                        cfg.optim.min_lr / cfg.optim.lr if cfg.optim.lr > 0 else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sample_modality_mask(batch_size: int, modalities: str, dropout: float, generator: torch.Generator | None = None) -> Tensor:
    """``B, 2`` bool (rgb, thermal) availability: single-modality runs fix one column; with
    ``dropout`` > 0 a sample loses one modality (drawn uniformly) with that probability."""
    mask = torch.ones(batch_size, 2, dtype=torch.bool)
    if modalities == "rgb":
        mask[:, 1] = False
    elif modalities == "thermal":
        mask[:, 0] = False
    elif dropout > 0:
        drop = torch.rand(batch_size, generator=generator) < dropout
        which = torch.randint(0, 2, (batch_size,), generator=generator)
        mask[drop, which[drop]] = False
    return mask


# ----------------------------------------------------------------------------- checkpoints


def trainable_state(model: nn.Module, include_frozen: bool) -> dict[str, Tensor]:
    """Trainable parameters and buffers (everything when ``include_frozen``), on CPU."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = {n for n, _ in model.named_parameters()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if include_frozen or k in trainable or k not in params}


def load_partial_state(model: nn.Module, state: dict[str, Tensor], what: str) -> int:
    """Copy the entries of ``state`` into ``model``; unknown keys or shape mismatches raise."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{what}: {len(unknown)} keys not in the model, e.g. {unknown[:3]}")
    bad = [k for k, v in state.items() if own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{what}: shape mismatch for {bad[:3]} (checkpoint of another model variant?)")
    model.load_state_dict(state, strict=False)
    return len(state)


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load the keys of ``state`` that exist in ``model`` with the same shape; returns them."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return sorted(matched)


def read_tensor_file(path: str) -> dict[str, Tensor]:
    """A ``.safetensors`` file or a torch checkpoint (``state_dict``/``model`` key or flat)."""
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no tensor dictionary")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


# ----------------------------------------------------------------------------- model and data


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """RGBTNet from ``cfg.model`` (the data set fixes ``num_classes``), with ``init.*`` applied."""
    from rgbt_perception.model import ModelConfig, RGBTNet

    model_cfg = ModelConfig.from_dict({**cfg.model, "num_classes": num_classes})
    model = RGBTNet(model_cfg)
    if cfg.init.sam2:
        from rgbt_perception.io.sam2_checkpoint import import_sam2_checkpoint, load_sam2_into_model

        reports = load_sam2_into_model(model, import_sam2_checkpoint(cfg.init.sam2))
        if not reports["trunk"].loaded:
            raise ValueError(f"init.sam2 {cfg.init.sam2}: no trunk tensor matches the {model.cfg.variant} variant")
    if cfg.init.adapters:
        matched = load_matching(model, read_tensor_file(cfg.init.adapters))
        if not matched:
            raise ValueError(f"init.adapters {cfg.init.adapters}: no key matches the model")
    return model


def select_fraction(indices: Sequence[int], fraction: float, seed: int) -> list[int]:
    """A seeded subset of ``round(len(indices) * fraction)`` (at least 1) of ``indices``, sorted."""
    indices = list(indices)
    if fraction >= 1.0:
        return indices
    count = max(1, int(round(len(indices) * fraction)))
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:count]
    return sorted(indices[i] for i in order.tolist())


def split_holdout(length: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded ``(train, holdout)`` index lists; the holdout has ``ceil(length * fraction)`` frames."""
    count = min(max(1, math.ceil(length * fraction)), length - 1)
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_datasets(cfg: TrainConfig, input_size: Sequence[int]) -> tuple[Any, Dataset, Dataset, Any]:
    """``(augmented training set, training view, validation set, class set)``.

    The training view applies ``train_fraction`` (and removes a ``holdout`` validation part);
    the first element is the underlying transformed data set whose ``set_epoch`` reseeds the
    augmentation.
    """
    scaling = ThermalScaling.from_dict(cfg.data.thermal_scaling) if cfg.data.thermal_scaling else ThermalScaling()
    augment_args = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.augment.items()}
    augment = AugmentConfig(**augment_args)
    train_raw = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split)
    train_indices = list(range(len(train_raw)))
    evaluation = PairTransform(input_size, scaling, augment=None)
    if cfg.data.val_split == "holdout":
        train_indices, val_indices = split_holdout(len(train_raw), cfg.data.val_holdout, cfg.seed)
        val: Dataset = Subset(TransformedDataset(train_raw, evaluation), val_indices)
    else:
        val = TransformedDataset(build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split), evaluation)
    augmented = TransformedDataset(train_raw, PairTransform(input_size, scaling, augment=augment), seed=cfg.seed)
    train = Subset(augmented, select_fraction(train_indices, cfg.data.train_fraction, cfg.seed))
    return augmented, train, val, train_raw.class_set


def forward_model(model: nn.Module, batch: dict[str, Any], mask: Tensor, device: torch.device) -> dict:
    """Run the network on a collated batch with per-sample modality availability ``mask``."""
    rgb = batch["rgb"].to(device, non_blocking=True) if bool(mask[:, 0].any()) else None
    thermal = batch["thermal"].to(device, non_blocking=True) if bool(mask[:, 1].any()) else None
    full = bool(mask.all())
    return model(rgb, thermal, modality_mask=None if full or rgb is None or thermal is None else mask.to(device))


def to_float(value: Any) -> Any:
    """Cast every floating tensor in a nested dict/list structure to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(v) for v in value)
    return value


def box_targets(batch: dict[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
    return [{"boxes": torch.as_tensor(b, dtype=torch.float32, device=device),
             "labels": torch.as_tensor(l, dtype=torch.int64, device=device)}
            for b, l in zip(batch["boxes"], batch["box_labels"])]


# ----------------------------------------------------------------------------- logging


class CsvLog:
    """Append-only CSV whose columns are fixed by the first row (later unknown keys are added)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if os.path.isfile(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        extra = [k for k in row if k not in self.fields]
        if extra:
            self._widen(extra)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: _csv_value(row.get(k, "")) for k in self.fields})

    def _widen(self, extra: list[str]) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.fields = list(self.fields) + extra
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


# ----------------------------------------------------------------------------- trainer


def save_checkpoint_file(state: dict[str, Any], path: str) -> None:
    """``torch.save`` through a temporary file, so an interrupted save never leaves a torn checkpoint."""
    with atomic_path(path, suffix=".pt.tmp") as tmp_path:
        torch.save(state, tmp_path)


def read_checkpoint_file(path: str) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint_file`; a missing file is a ``ValueError``."""
    if not os.path.isfile(path):
        raise ValueError(f"resume checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def restore_optimisation(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                         scaler: torch.amp.GradScaler) -> tuple[int, int]:
    """Load optimizer, schedule and loss-scaler state; returns ``(start_epoch, global_step)``."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["epoch"]) + 1, int(ckpt["global_step"])


def epoch_batches(loader: DataLoader, sampler: DistributedSampler | None, seed: int, epoch: int) -> Iterator[Any]:
    """The batches of one epoch, shuffled as a function of ``(seed, epoch)`` so a resumed run sees
    the same order as an uninterrupted one."""
    if sampler is not None:
        sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)
    yield from loader


class Trainer:
    """Supervised training of :class:`RGBTNet` from a :class:`TrainConfig`.

    ``resume``: a checkpoint written by this class (``last.pt``); training continues from the
    epoch after it with identical optimizer, scheduler, scaler and RNG state.
    ``stop_after_epochs``: end after that many epochs of this call (the schedule still spans
    ``cfg.epochs``), used to interrupt a run deliberately.
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None, stop_after_epochs: int | None = None,
                 show_progress: bool = True, command_line: str | None = None) -> None:
        self.cfg = cfg
        self.resume_path = resume
        self.stop_after_epochs = stop_after_epochs
        self.command_line = command_line
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.dist = DistributedContext(resolve_device(cfg.device))
        self.device = self.dist.device
        self.show_progress = show_progress and self.dist.is_main
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        seed_everything(cfg.seed)

        self.model_input_size = tuple(cfg.model.get("input_size", (480, 640)))
        self.augmented, self.train_set, self.val_set, self.class_set = build_datasets(cfg, self.model_input_size)
        # The model (frozen trunk included) is built from the same seed on every rank.
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.class_set.num_classes).to(self.device)
        self.raw_model = self.model
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

        text = None
        self.text_encoder: str | None = None
        if cfg.text_embeddings and cfg.loss.lang > 0:
            from training.text_embeddings import load_text_embeddings

            text, self.text_encoder = load_text_embeddings(cfg.text_embeddings, self.class_set.names)
        self.criterion = RGBTCriterion(cfg.loss, text).to(self.device)

        self.sampler = DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True) if self.dist.enabled else None
        self.loader = DataLoader(
            self.train_set, batch_size=cfg.data.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=cfg.data.num_workers, collate_fn=collate, drop_last=len(self.train_set) >= cfg.data.batch_size,
            worker_init_fn=_worker_init, persistent_workers=False, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed))
        if len(self.loader) == 0:
            raise ValueError(f"training split has {len(self.train_set)} samples, fewer than one batch per process")
        self.optimizer = torch.optim.AdamW(build_param_groups(self.raw_model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.optim.grad_accum)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.start_epoch = 0
        self.global_step = 0
        self.best_miou = -1.0
        self.best_epoch = -1
        self.last_val: dict[str, Any] = {}
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume:
            self.load_checkpoint(resume)
        if self.dist.is_main:
            save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
            self.step_log = CsvLog(os.path.join(cfg.out_dir, "train_steps.csv"))
            self.epoch_log = CsvLog(os.path.join(cfg.out_dir, "train_epochs.csv"))

    # ------------------------------------------------------------------ checkpointing

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": trainable_state(self.raw_model, include_frozen=not self.cfg.init.sam2),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "best_miou": self.best_miou,
            "best_epoch": self.best_epoch,
            "val": self.last_val,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "class_set": self.class_set.name,
            "command_line": self.command_line,
            "text_encoder": self.text_encoder,
        }

    def save_checkpoint(self, path: str, epoch: int) -> None:
        save_checkpoint_file(self.checkpoint_state(epoch), path)

    def load_checkpoint(self, path: str) -> None:
        ckpt = read_checkpoint_file(path)
        load_partial_state(self.raw_model, ckpt["model"], f"checkpoint {path}")
        self.start_epoch, self.global_step = restore_optimisation(ckpt, self.optimizer, self.scheduler, self.scaler)
        self.best_miou = float(ckpt["best_miou"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.last_val = ckpt.get("val", {})
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ loops

    def _batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        self.augmented.set_epoch(epoch)
        yield from epoch_batches(self.loader, self.sampler, self.cfg.seed, epoch)

    def train_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        accum = cfg.optim.grad_accum
        batches = len(self.loader)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self._batches(epoch)):
            label = batch["label"].to(self.device, non_blocking=True)
            mask = sample_modality_mask(label.shape[0], cfg.modalities, cfg.modality_dropout)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                outputs = forward_model(self.model, batch, mask, self.device)
            if self.amp_dtype is not None:
                # Losses (focal, GIoU, softmax statistics) are computed in fp32.
                outputs = to_float(outputs)
            loss, parts = self.criterion(outputs, label, box_targets(batch, self.device), self.raw_model.box_head.loss)
            if not math.isfinite(parts["total"]):
                raise FloatingPointError(f"loss is {parts['total']} at epoch {epoch} batch {i}: {parts}")
            # The last group of an epoch may hold fewer batches than grad_accum.
            group = min(accum, batches - (i // accum) * accum)
            self.scaler.scale(loss / group).backward()
            if (i + 1) % accum == 0 or i + 1 == batches:
                if cfg.optim.clip_grad_norm > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.optim.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_mult", 1.0)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch + 1, loss=f"{parts['total']:.3f}", lr=f"{lr:.2e}")
            if self.dist.is_main and (i % max(cfg.log_every, 1) == 0 or i + 1 == batches):
                self.step_log.write({"epoch": epoch + 1, "batch": i, "step": self.global_step, "lr": lr, **parts})
        return {k: v / max(count, 1) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Segmentation metrics of the current model on the validation split (all ranks share work)."""
        model = self.raw_model
        model.eval()
        metrics = SegmentationMetrics(self.class_set.num_classes, self.class_set.names, self.class_set.background_id)
        indices = list(range(len(self.val_set)))
        if self.cfg.max_eval_samples > 0:
            indices = indices[: self.cfg.max_eval_samples]
        shard = Subset(self.val_set, indices[self.dist.rank :: self.dist.world_size])
        loader = DataLoader(shard, batch_size=self.cfg.data.batch_size, shuffle=False,
                            num_workers=self.cfg.data.num_workers, collate_fn=collate)
        for batch in loader:
            label = batch["label"]
            mask = sample_modality_mask(label.shape[0], self.cfg.modalities, 0.0)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                logits = forward_model(model, batch, mask, self.device)["semantic"]
            logits = torch.nn.functional.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
            metrics.update(logits.argmax(1).cpu(), label, condition=batch.get("condition"))
        model.train()
        confusion = torch.as_tensor(metrics.confusion)
        self.dist.all_reduce_sum(confusion)
        metrics.confusion = confusion.numpy()
        result = metrics.compute()
        return {"miou": result["overall"]["miou"], "miou_no_bg": result["overall"]["miou_no_bg"],
                "macc": result["overall"]["macc"], "pixel_acc": result["overall"]["pixel_acc"]}

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        end_epoch = cfg.epochs if self.stop_after_epochs is None else min(cfg.epochs, self.start_epoch + self.stop_after_epochs)
        progress = None
        if self.show_progress:
            progress = tqdm(total=len(self.loader) * cfg.epochs, initial=len(self.loader) * self.start_epoch,
                            desc=cfg.name, unit="batch", dynamic_ncols=True)
        out = cfg.out_dir
        try:
            for epoch in range(self.start_epoch, end_epoch):
                started = time.time()
                train = self.train_epoch(epoch, progress)
                row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()}}
                last = epoch + 1 == cfg.epochs
                if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
                    self.last_val = self.evaluate()
                    row.update({f"val_{k}": v for k, v in self.last_val.items()})
                    score = self.last_val["miou"]
                    if score == score and score > self.best_miou:
                        self.best_miou, self.best_epoch = score, epoch + 1
                        if self.dist.is_main:
                            self.save_checkpoint(os.path.join(out, CHECKPOINT_BEST), epoch)
                row["seconds"] = time.time() - started
                if self.dist.is_main:
                    self.epoch_log.write(row)
                    if (epoch + 1) % max(cfg.checkpoint_every, 1) == 0 or last or epoch + 1 == end_epoch:
                        self.save_checkpoint(os.path.join(out, CHECKPOINT_LAST), epoch)
                    if progress is not None:
                        msg = f"epoch {epoch + 1}/{cfg.epochs} loss {train.get('total', float('nan')):.4f}"
                        if "val_miou" in row:
                            msg += f" val({cfg.data.val_split}) mIoU {100 * row['val_miou']:.2f}"
                        progress.write(msg)
                self.dist.barrier()
            if cfg.eval_every <= 0 and self.dist.is_main and end_epoch == cfg.epochs:
                # Without validation the final model is the one kept.
                self.save_checkpoint(os.path.join(out, CHECKPOINT_BEST), end_epoch - 1)
        finally:
            if progress is not None:
                progress.close()
        summary = {"best_miou": self.best_miou, "best_epoch": self.best_epoch, "epochs_run": end_epoch - self.start_epoch,
                   "last": os.path.join(out, CHECKPOINT_LAST), "best": os.path.join(out, CHECKPOINT_BEST)}
        if cfg.export and self.dist.is_main and end_epoch == cfg.epochs:
            from training.export import export_checkpoint

            best = summary["best"] if os.path.isfile(summary["best"]) else summary["last"]
            summary["export"] = export_checkpoint(best, cfg.export)
        self.dist.barrier()
        return summary

    def close(self) -> None:
        self.dist.close()
