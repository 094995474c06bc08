"""The supervised training loop: AdamW + warm-up/poly, AMP, accumulation, DDP, resume, best-by-val.

``Trainer(cfg).fit()`` runs a whole training; under ``torchrun`` every process runs it and
rank 0 writes logs, checkpoints and the exported weights file. Evaluation always uses the
validation split named in the config (``data.val_split``). The epoch loop, optimizer step,
logs and checkpoints it shares with label-free pretraining live in :mod:`training.loop`; the
other pieces in :mod:`training.runtime` (device, precision, RNG, DDP), :mod:`training.data`,
:mod:`training.steps`, :mod:`training.optim`, :mod:`training.checkpoint` and :mod:`training.log`.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rgbt_perception.core.defaults import BRANCHES, MAP_SCORE_THRESHOLD, MAX_DETECTIONS, NMS_IOU
from rgbt_perception.evaluation.metrics import DetectionMetrics, SegmentationMetrics
from training.checkpoint import load_partial_state, trainable_state
from training.config import DEFAULT_INPUT_SIZE, TrainConfig
from training.data import build_datasets
from training.datasets.mix import extend_training_view
from training.datasets.transforms import collate
from training.export import export_checkpoint
from training.loop import CHECKPOINT_LAST, EpochLoop, RunningMeans
from training.losses import RGBTCriterion
from training.optim import build_param_groups, build_scheduler, freeze_parameters, warmup_steps
from training.runtime import seed_everything, seed_worker
from training.steps import box_targets, build_model, forward_model, sample_modality_mask, to_float
from training.summary import SUMMARY_FILE, summary_lines, training_summary, write_summary
from training.text_embeddings import load_text_embeddings

CHECKPOINT_BEST = "best.pt"
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
    if row.get("nonfinite_steps"):
        parts.append(f"{row['nonfinite_steps']} non-finite steps skipped")
    parts.append(f"{row.get('seconds', float('nan')):.0f} s")
    return " | ".join(parts)


class Trainer(EpochLoop):
    """Supervised training of :class:`RGBTNet` from a :class:`TrainConfig`.

    ``resume``: a checkpoint written by this class (``last.pt``); training continues from the
    epoch after it with identical optimizer, scheduler, scaler and RNG state.
    ``stop_after_epochs``: end after that many epochs of this call (the schedule still spans
    ``cfg.epochs``), used to interrupt a run deliberately.
    """

    EPOCH_COLUMNS = EPOCH_COLUMNS

    def __init__(self, cfg: TrainConfig, resume: str | None = None, stop_after_epochs: int | None = None,
                 show_progress: bool = True, command_line: str | None = None) -> None:
        super().__init__(cfg, stop_after_epochs, show_progress)
        self.resume_path = resume
        self.command_line = command_line
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
        init_report: dict[str, Any] = {}
        self.raw_model = build_model(cfg, self.class_set.num_classes, init_report).to(self.device)
        freeze_parameters(self.raw_model, cfg.optim.freeze)
        self.raw_model.aux_in_training = cfg.loss.aux > 0
        self.model = self.distribute(self.raw_model)

        text = None
        self.text_encoder: str | None = None
        if cfg.text_embeddings and cfg.loss.lang > 0:
            text, self.text_encoder = load_text_embeddings(cfg.text_embeddings, self.class_set.names)
        self.criterion = RGBTCriterion(cfg.loss, text).to(self.device)

        loader = self.make_loader(self.train_set, cfg.data.batch_size, cfg.data.num_workers,
                                  drop_last=len(self.train_set) >= cfg.data.batch_size, reseeded=self.augmented,
                                  collate_fn=collate, worker_init_fn=seed_worker)
        if len(loader) == 0:
            raise ValueError(f"training split has {len(self.train_set)} samples, fewer than one batch per process")
        optimizer = torch.optim.AdamW(build_param_groups(self.raw_model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.steps_per_epoch = math.ceil(len(loader) / cfg.optim.grad_accum)
        total_steps = self.steps_per_epoch * cfg.epochs
        self.set_optimisation(optimizer, build_scheduler(optimizer, cfg, total_steps), cfg.optim.max_nonfinite_steps,
                              "optim.max_nonfinite_steps")
        # What this run trains, said before it starts (and kept as model_summary.json).
        self.model_summary = training_summary(self.raw_model, cfg, init_report, total_steps,
                                              warmup_steps(cfg, total_steps), self.amp_dtype)

        self.best_score = -1.0
        self.best_epoch = -1
        self.last_val: dict[str, Any] = {}
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume:
            self.load_checkpoint(resume)
        self.open_logs()
        if self.dist.is_main:
            write_summary(self.model_summary, os.path.join(cfg.out_dir, SUMMARY_FILE))
            print("\n".join(summary_lines(self.model_summary)), flush=True)

    # ------------------------------------------------------------------ checkpointing

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": trainable_state(self.raw_model, include_frozen=not self.cfg.init.sam2),
            **self.optimisation_state(epoch),
            "select_on": self.select_on,
            "best_score": self.best_score,
            # Older readers know only this key; it holds the best mIoU when mIoU selects.
            "best_miou": self.best_score if self.select_on == "miou" else -1.0,
            "best_epoch": self.best_epoch,
            "val": self.last_val,
            "class_set": self.class_set.name,
            "command_line": self.command_line,
            # DDP processes: the global batch is data.batch_size times this.
            "world_size": self.dist.world_size,
            "text_encoder": self.text_encoder,
        }

    def restore_state(self, ckpt: dict[str, Any], path: str) -> None:
        load_partial_state(self.raw_model, ckpt["model"], f"checkpoint {path}")
        self.best_score = float(ckpt.get("best_score", ckpt["best_miou"]))
        self.best_epoch = int(ckpt["best_epoch"])
        self.last_val = ckpt.get("val", {})

    # ------------------------------------------------------------------ loops

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """The loss of one training batch (fused, plus each camera alone under per-camera supervision)."""
        cfg = self.cfg
        label = batch["label"].to(self.device, non_blocking=True)
        mask = sample_modality_mask(label.shape[0], cfg.run_inputs, cfg.modality_dropout)
        # Per-camera supervision: the heads also run on each camera alone (same trunk pass).
        single = cfg.loss.single if cfg.run_inputs == "both" else 0.0
        branches = BRANCHES if single > 0 else None
        with self.autocast():
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
        return loss, parts

    def train_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, float]:
        accum = self.cfg.optim.grad_accum
        batches = len(self.loader)
        means = RunningMeans()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.epoch_batches(epoch)):
            loss, parts = self.batch_loss(batch)
            # The last group of an epoch may hold fewer batches than grad_accum.
            group = min(accum, batches - (i // accum) * accum)
            # A NaN or infinite loss is skipped (and counted), not back-propagated.
            if self.backward(loss, parts, epoch, i, scale=1.0 / group):
                means.add(parts)
            if (i + 1) % accum == 0 or i + 1 == batches:
                self.apply_gradients(self.raw_model.parameters(), self.cfg.optim.clip_grad_norm, epoch, i)
            self.record_step(epoch, i, parts, progress)
        return means.means()

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
            mask = sample_modality_mask(label.shape[0], self.cfg.run_inputs, 0.0)
            with self.autocast():
                outputs = to_float(forward_model(model, batch, mask, self.device))
            logits = torch.nn.functional.interpolate(outputs["semantic"], size=label.shape[-2:], mode="bilinear",
                                                     align_corners=False)
            # Mask-less samples have an all-ignore label, which adds nothing to the confusion matrix.
            metrics.update(logits.argmax(1).cpu(), label, condition=batch.get("condition"))
            # As rgbt-eval scores: mAP's score floor, no per-class cap below COCO's 100.
            decoded = model.box_head.decode(outputs["boxes"], score_threshold=MAP_SCORE_THRESHOLD, nms_iou=NMS_IOU,
                                            max_detections=MAX_DETECTIONS, max_per_class=MAX_DETECTIONS)
            detection.update([{k: v.cpu() for k, v in d.items()} for d in decoded],
                             [{"boxes": boxes, "labels": labels}
                              for boxes, labels in zip(batch["boxes"], batch["box_labels"])],
                             condition=batch.get("condition"))
        model.train()
        return self._gather_scores(metrics, detection)

    def _gather_scores(self, metrics: SegmentationMetrics, detection: DetectionMetrics) -> dict[str, Any]:
        """The validation scores over every process's share."""
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

    def run_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, Any]:
        """Train one epoch, validate every ``eval_every`` epochs and keep the best in ``best.pt``."""
        cfg = self.cfg
        started = time.time()
        train = self.train_epoch(epoch, progress)
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                               "seconds_train": time.time() - started}
        last = epoch + 1 == cfg.epochs
        if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
            self.last_val = self.evaluate()
            row.update({f"val_{k}": v for k, v in self.last_val.items()})
            score = self.last_val[self.select_on]
            if score == score and score > self.best_score:
                self.best_score, self.best_epoch = score, epoch + 1
                if self.dist.is_main:
                    self.save_checkpoint(os.path.join(cfg.out_dir, CHECKPOINT_BEST), epoch)
        return row

    def epoch_line(self, row: dict[str, Any]) -> str:
        return epoch_line(row if self.class_set.has_masks else {k: v for k, v in row.items() if k != "val_miou"},
                          self.cfg.epochs)

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or ``stop_after_epochs``); rank 0 writes the weights file of
        ``cfg.export`` from the best checkpoint at the end. Returns a summary (best score, paths)."""
        cfg = self.cfg
        end_epoch = self.end_epoch
        out = cfg.out_dir
        self.run_epochs(cfg.name)
        if cfg.eval_every <= 0 and self.dist.is_main and end_epoch == cfg.epochs:
            # Without validation the final model is the one kept.
            self.save_checkpoint(os.path.join(out, CHECKPOINT_BEST), end_epoch - 1)
        summary = {"select_on": self.select_on, "best_score": self.best_score, "best_epoch": self.best_epoch,
                   "best_miou": self.best_score if self.select_on == "miou" else float("nan"),
                   "epochs_run": end_epoch - self.start_epoch,
                   "last": os.path.join(out, CHECKPOINT_LAST), "best": os.path.join(out, CHECKPOINT_BEST)}
        if cfg.export and self.dist.is_main and end_epoch == cfg.epochs:
            best = summary["best"] if os.path.isfile(summary["best"]) else summary["last"]
            summary["export"] = export_checkpoint(best, cfg.export, storage=cfg.export_storage)
        self.dist.barrier()
        return summary
