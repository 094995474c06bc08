"""The supervised training loop: AdamW + warm-up/poly, AMP, accumulation, DDP, resume, best-by-val.

``Trainer(cfg).fit()`` runs a whole training; under ``torchrun`` every process runs it and
rank 0 writes logs, checkpoints and the exported weights file. Evaluation always uses the
validation split named in the config (``data.val_split``). The pieces it is built from live in
:mod:`training.runtime` (device, precision, RNG, DDP), :mod:`training.data`, :mod:`training.steps`,
:mod:`training.optim`, :mod:`training.checkpoint` and :mod:`training.log`.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from rgbt_perception.evaluation.metrics import DetectionMetrics, SegmentationMetrics
from training.checkpoint import (
    load_partial_state,
    read_checkpoint_file,
    restore_optimisation,
    save_checkpoint_file,
    trainable_state,
)
from training.config import DEFAULT_INPUT_SIZE, TrainConfig, save_config
from training.data import build_datasets
from training.datasets.mix import extend_training_view
from training.datasets.transforms import collate
from training.export import export_checkpoint
from training.log import CsvLog
from training.losses import RGBTCriterion
from training.optim import build_param_groups, build_scheduler
from training.runtime import (
    epoch_batches,
    rng_state,
    seed_everything,
    seed_worker,
    set_rng_state,
    start_run,
)
from training.steps import box_targets, build_model, forward_model, sample_modality_mask, to_float
from training.text_embeddings import load_text_embeddings

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"
# Box score threshold of validation mAP (as rgbt-eval's default): low, so the whole PR curve counts.
VAL_SCORE_THRESHOLD = 0.0  # mAP over the whole score range
BRANCHES = ("fused", "rgb", "thermal")
# train_epochs.csv: these columns first, in this order, in every run (other terms follow).
EPOCH_COLUMNS = [
    "epoch", "seconds", "train_total", "train_ce_main", "train_jaccard", "train_ce_aux", "train_box", "train_box_cls",
    "train_box_box", "train_box_ctr", "train_lang", "train_rgb_total", "train_thermal_total", "val_miou",
    "val_miou_no_bg", "val_macc", "val_pixel_acc", "val_map_50", "val_map_50_95",
]
# The epoch line: (row key, label, scale) for the loss terms and scores a run has.
EPOCH_LINE = [
    ("train_total", "loss", 1), ("train_ce_main", "ce", 1), ("train_jaccard", "jaccard", 1),
    ("train_ce_aux", "aux", 1), ("train_box", "box", 1),
    ("train_lang", "lang", 1), ("train_rgb_total", "rgb", 1), ("train_thermal_total", "thermal", 1),
    ("val_miou", "val mIoU", 100), ("val_map_50", "mAP@0.5", 100),
]


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss terms, validation mIoU and mAP@0.5 (when scored) and seconds."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key, label, scale in EPOCH_LINE:
        value = row.get(key)
        if isinstance(value, float) and value == value:
            parts.append(f"{label} {scale * value:.2f}" if scale != 1 else f"{label} {value:.4f}")
    parts.append(f"{row.get('seconds', float('nan')):.0f} s")
    return " | ".join(parts)


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
        run = start_run(cfg.threads, cfg.device, cfg.amp, show_progress)
        self.dist, self.device = run.dist, run.device
        self.show_progress, self.amp_dtype = run.show_progress, run.amp_dtype
        seed_everything(cfg.seed)

        self.model_input_size = tuple(cfg.model.get("input_size", DEFAULT_INPUT_SIZE))
        self.augmented, self.train_set, self.val_set, self.class_set = build_datasets(cfg, self.model_input_size)
        # data.mix: further training sets (mask or box-only) mapped onto the main class list.
        self.train_set = extend_training_view(self.augmented, self.train_set, cfg.data.mix)
        # best.pt is picked by mIoU, or by box mAP@0.5 when the data set has no masks.
        self.select_on = cfg.select_on if cfg.select_on != "auto" else (
            "miou" if self.class_set.has_masks else "map_50")
        # The model (frozen trunk included) is built from the same seed on every rank.
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.class_set.num_classes).to(self.device)
        self.raw_model = self.model
        self.raw_model.aux_in_training = cfg.loss.aux > 0
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

        text = None
        self.text_encoder: str | None = None
        if cfg.text_embeddings and cfg.loss.lang > 0:
            text, self.text_encoder = load_text_embeddings(cfg.text_embeddings, self.class_set.names)
        self.criterion = RGBTCriterion(cfg.loss, text).to(self.device)

        self.sampler = DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True) if self.dist.enabled else None
        self.loader = DataLoader(
            self.train_set, batch_size=cfg.data.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=cfg.data.num_workers, collate_fn=collate, drop_last=len(self.train_set) >= cfg.data.batch_size,
            worker_init_fn=seed_worker, persistent_workers=False, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed))
        if len(self.loader) == 0:
            raise ValueError(f"training split has {len(self.train_set)} samples, fewer than one batch per process")
        self.optimizer = torch.optim.AdamW(build_param_groups(self.raw_model, cfg), lr=cfg.optim.lr,
                                           betas=cfg.optim.betas)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.optim.grad_accum)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.start_epoch = 0
        self.global_step = 0
        self.best_score = -1.0
        self.best_epoch = -1
        self.last_val: dict[str, Any] = {}
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume:
            self.load_checkpoint(resume)
        if self.dist.is_main:
            save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
            self.step_log = CsvLog(os.path.join(cfg.out_dir, "train_steps.csv"))
            self.epoch_log = CsvLog(os.path.join(cfg.out_dir, "train_epochs.csv"), EPOCH_COLUMNS)

    # ------------------------------------------------------------------ checkpointing

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": trainable_state(self.raw_model, include_frozen=not self.cfg.init.sam2),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "select_on": self.select_on,
            "best_score": self.best_score,
            # Older readers know only this key; it holds the best mIoU when mIoU selects.
            "best_miou": self.best_score if self.select_on == "miou" else -1.0,
            "best_epoch": self.best_epoch,
            "val": self.last_val,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "class_set": self.class_set.name,
            "command_line": self.command_line,
            # DDP processes: the global batch is data.batch_size times this.
            "world_size": self.dist.world_size,
            "text_encoder": self.text_encoder,
        }

    def save_checkpoint(self, path: str, epoch: int) -> None:
        save_checkpoint_file(self.checkpoint_state(epoch), path)

    def load_checkpoint(self, path: str) -> None:
        ckpt = read_checkpoint_file(path)
        load_partial_state(self.raw_model, ckpt["model"], f"checkpoint {path}")
        self.start_epoch, self.global_step = restore_optimisation(ckpt, self.optimizer, self.scheduler, self.scaler)
        self.best_score = float(ckpt.get("best_score", ckpt["best_miou"]))
        self.best_epoch = int(ckpt["best_epoch"])
        self.last_val = ckpt.get("val", {})
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ loops

    def _autocast(self) -> torch.autocast:
        """Mixed precision as ``cfg.amp`` resolved to; a no-op context where it is off."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

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
            # Per-camera supervision: the heads also run on each camera alone (same trunk pass).
            single = cfg.loss.single if cfg.modalities == "both" else 0.0
            branches = BRANCHES if single > 0 else None
            with self._autocast():
                outputs = forward_model(self.model, batch, mask, self.device, branches)
            if self.amp_dtype is not None:
                # Losses (focal, GIoU, softmax statistics) are computed in fp32.
                outputs = to_float(outputs)
            targets, has_mask = box_targets(batch, self.device), batch["has_mask"].to(self.device)
            # Samples without a mask (box-only sets) are left out of the segmentation losses.
            loss, parts = self.criterion(outputs["fused"] if branches else outputs, label, targets,
                                         self.raw_model.box_head.loss, has_mask=has_mask)
            for name in (branches or ())[1:]:
                extra, extra_parts = self.criterion(outputs[name], label, targets, self.raw_model.box_head.loss,
                                                    has_mask=has_mask)
                loss = loss + single * extra
                parts[f"{name}_total"] = extra_parts["total"]
            parts["total"] = float(loss.detach())
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
        """Segmentation metrics and box mAP of the current model on the validation split (all ranks
        share work). Boxes are scored at the network input size, where the targets are."""
        model = self.raw_model
        model.eval()
        metrics = SegmentationMetrics(self.class_set.num_classes, self.class_set.names, self.class_set.background_id)
        detection = DetectionMetrics(self.class_set.names)
        indices = list(range(len(self.val_set)))
        if self.cfg.max_eval_samples > 0:
            indices = indices[: self.cfg.max_eval_samples]
        shard = Subset(self.val_set, indices[self.dist.rank :: self.dist.world_size])
        loader = DataLoader(shard, batch_size=self.cfg.data.batch_size, shuffle=False,
                            num_workers=self.cfg.data.num_workers, collate_fn=collate)
        for batch in loader:
            label = batch["label"]
            mask = sample_modality_mask(label.shape[0], self.cfg.modalities, 0.0)
            with self._autocast():
                outputs = to_float(forward_model(model, batch, mask, self.device))
            logits = torch.nn.functional.interpolate(outputs["semantic"], size=label.shape[-2:], mode="bilinear",
                                                     align_corners=False)
            # Mask-less samples have an all-ignore label, which adds nothing to the confusion matrix.
            metrics.update(logits.argmax(1).cpu(), label, condition=batch.get("condition"))
            # mAP sees every candidate: no confidence threshold, no per-class cap below COCO's 100.
            decoded = model.box_head.decode(outputs["boxes"], score_threshold=VAL_SCORE_THRESHOLD, max_per_class=100)
            detection.update([{k: v.cpu() for k, v in d.items()} for d in decoded],
                             [{"boxes": boxes, "labels": labels}
                              for boxes, labels in zip(batch["boxes"], batch["box_labels"])],
                             condition=batch.get("condition"))
        model.train()
        confusion = torch.as_tensor(metrics.confusion)
        self.dist.all_reduce_sum(confusion)
        metrics.confusion = confusion.numpy()
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch_dist.all_gather_object(gathered, detection.images)
            detection.images = [image for part in gathered for image in part]
        result = metrics.compute()["overall"]
        boxes = detection.compute()["overall"]
        return {"miou": result["miou"], "miou_no_bg": result["miou_no_bg"], "macc": result["macc"],
                "pixel_acc": result["pixel_acc"], "map_50": boxes["map_50"], "map_50_95": boxes["map_50_95"]}

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        end_epoch = cfg.epochs
        if self.stop_after_epochs is not None:
            end_epoch = min(cfg.epochs, self.start_epoch + self.stop_after_epochs)
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
                    score = self.last_val[self.select_on]
                    if score == score and score > self.best_score:
                        self.best_score, self.best_epoch = score, epoch + 1
                        if self.dist.is_main:
                            self.save_checkpoint(os.path.join(out, CHECKPOINT_BEST), epoch)
                row["seconds"] = time.time() - started
                if self.dist.is_main:
                    self.epoch_log.write(row)
                    if (epoch + 1) % max(cfg.checkpoint_every, 1) == 0 or last or epoch + 1 == end_epoch:
                        self.save_checkpoint(os.path.join(out, CHECKPOINT_LAST), epoch)
                    # With or without the progress bar: one line per epoch.
                    line = epoch_line(row if self.class_set.has_masks else
                                      {k: v for k, v in row.items() if k != "val_miou"}, cfg.epochs)
                    if progress is not None:
                        progress.write(line)
                    else:
                        print(line, flush=True)
                self.dist.barrier()
            if cfg.eval_every <= 0 and self.dist.is_main and end_epoch == cfg.epochs:
                # Without validation the final model is the one kept.
                self.save_checkpoint(os.path.join(out, CHECKPOINT_BEST), end_epoch - 1)
        finally:
            if progress is not None:
                progress.close()
        summary = {"select_on": self.select_on, "best_score": self.best_score, "best_epoch": self.best_epoch,
                   "best_miou": self.best_score if self.select_on == "miou" else float("nan"),
                   "epochs_run": end_epoch - self.start_epoch,
                   "last": os.path.join(out, CHECKPOINT_LAST), "best": os.path.join(out, CHECKPOINT_BEST)}
        if cfg.export and self.dist.is_main and end_epoch == cfg.epochs:
            best = summary["best"] if os.path.isfile(summary["best"]) else summary["last"]
            summary["export"] = export_checkpoint(best, cfg.export)
        self.dist.barrier()
        return summary

    def close(self) -> None:
        self.dist.close()
