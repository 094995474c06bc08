"""What the supervised trainer and label-free pretraining share: one epoch loop.

:class:`EpochLoop` is the base of :class:`training.engine.Trainer` and
:class:`training.pretrain.loop.Pretrainer`. It owns the run context (device, DDP, autocast),
the shuffled per-epoch data loader, the optimizer/schedule/loss-scaler trio and its update step
(with its guards: a non-finite loss or gradient skips the step and is counted, the run stops
with :class:`NonFiniteLossError` after ``max_nonfinite_steps`` of them), the per-step and per-epoch
logs and lines (rank 0 only), the progress bar, and the common part of checkpoints (save and resume).
A subclass builds its model, data and optimizer, then
implements :meth:`EpochLoop.run_epoch` (train, and validate where it does),
:meth:`EpochLoop.epoch_line`, :meth:`EpochLoop.checkpoint_state` (its own entries plus
:meth:`EpochLoop.optimisation_state`) and :meth:`EpochLoop.restore_state`.
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from training.checkpoint import RESUME_KEYS, read_checkpoint, restore_optimisation, save_checkpoint_file
from training.log import CsvLog
from training.runtime import epoch_batches, peak_memory_mib, rng_state, set_rng_state, start_run

CHECKPOINT_LAST = "last.pt"
#: Steps a run may skip for a non-finite loss or gradient before it stops (optim.max_nonfinite_steps).
DEFAULT_MAX_NONFINITE_STEPS = 20


class NonFiniteLossError(FloatingPointError):
    """A run skipped more non-finite steps than its limit allows; the message says where and what to change."""


class RunningMeans:
    """Means over an epoch's batches of the named loss terms."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, parts: dict[str, float]) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}


class EpochLoop:
    """Base of the training loops; ``cfg`` has ``name``, ``out_dir``, ``epochs``, ``seed``, ``device``,
    ``amp``, ``threads``, ``log_every`` and ``checkpoint_every`` (and ``save(path)``, ``to_dict()``).

    ``stop_after_epochs`` ends a ``fit`` call early (the schedule still spans ``cfg.epochs``).
    """

    #: Per-step and per-epoch CSV files in ``cfg.out_dir``; leading columns of the epoch file.
    STEP_LOG = "train_steps.csv"
    EPOCH_LOG = "train_epochs.csv"
    EPOCH_COLUMNS: list[str] | None = None

    def __init__(self, cfg: Any, stop_after_epochs: int | None, show_progress: bool) -> None:
        self.cfg = cfg
        self.stop_after_epochs = stop_after_epochs
        run = start_run(cfg.threads, cfg.device, cfg.amp, show_progress)
        self.dist, self.device = run.dist, run.device
        self.show_progress, self.amp_dtype = run.show_progress, run.amp_dtype
        self.start_epoch = 0
        self.global_step = 0
        self.sampler: DistributedSampler | None = None
        self.loader: DataLoader | None = None
        self.reseeded: Any = None
        # Steps skipped for a non-finite loss or gradient (over the run; kept in checkpoints).
        self.nonfinite_steps = 0
        self.max_nonfinite_steps = DEFAULT_MAX_NONFINITE_STEPS
        self.nonfinite_limit_key = "max_nonfinite_steps"
        self.grads_pending = False
        self.last_grad_norm = float("nan")

    # ------------------------------------------------------------------ set-up

    def distribute(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for gradient averaging across DDP processes (itself in a single process)."""
        if not self.dist.enabled:
            return module
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True)

    def make_loader(self, dataset: Any, batch_size: int, num_workers: int, drop_last: bool, reseeded: Any,
                    collate_fn: Callable[..., Any] | None = None,
                    worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
        """The training loader: this process's shard (DDP) or the whole set, reshuffled per epoch from ``cfg.seed``.

        ``reseeded``: the data set whose ``set_epoch`` reseeds the augmentation before each epoch.
        """
        seed = self.cfg.seed
        self.reseeded = reseeded
        if self.dist.enabled:
            self.sampler = DistributedSampler(dataset, self.dist.world_size, self.dist.rank, shuffle=True, seed=seed,
                                              drop_last=True)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=num_workers, collate_fn=collate_fn, drop_last=drop_last, worker_init_fn=worker_init_fn,
            persistent_workers=False, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed))
        return self.loader

    def set_optimisation(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_nonfinite_steps: int,
                         limit_key: str) -> None:
        """The optimizer, its per-step schedule, and the loss scaler (active only for fp16 autocast).

        ``max_nonfinite_steps``: steps the run may skip for a non-finite loss or gradient before it
        stops; ``limit_key``: the config key that sets it, named in the error.
        """
        if max_nonfinite_steps < 0:
            raise ValueError(f"{limit_key} must be >= 0, got {max_nonfinite_steps}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        # fp16 overflows where bf16 does not: its gradients are scaled up and checked before each step.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_limit_key = limit_key

    def open_logs(self) -> None:
        """On rank 0: the run folder's ``config.yaml`` and the step and epoch logs (continued on resume)."""
        if self.dist.is_main:
            self.cfg.save(os.path.join(self.cfg.out_dir, "config.yaml"))
            self.step_log = CsvLog(os.path.join(self.cfg.out_dir, self.STEP_LOG))
            self.epoch_log = CsvLog(os.path.join(self.cfg.out_dir, self.EPOCH_LOG), self.EPOCH_COLUMNS)

    # ------------------------------------------------------------------ steps

    def autocast(self) -> torch.autocast:
        """Mixed precision as ``cfg.amp`` resolved to; a no-op context where it is off."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def epoch_batches(self, epoch: int) -> Iterator[Any]:
        """The loader's batches of ``epoch`` (augmentation reseeded), in the order an uninterrupted run sees them."""
        self.reseeded.set_epoch(epoch)
        yield from epoch_batches(self.loader, self.sampler, self.cfg.seed, epoch)

    def backward(self, loss: Tensor, parts: dict[str, float], epoch: int, batch: int, scale: float = 1.0) -> bool:
        """Back-propagate ``scale * loss`` (through the loss scaler) unless the loss is NaN or infinite.

        Under DDP the processes agree first: when any one has a non-finite loss, every process
        skips this batch (a backward on one rank alone would leave the others waiting in the
        gradient all-reduce). A skipped batch is counted; returns whether the backward ran.
        """
        bad = torch.tensor([0.0 if math.isfinite(parts["total"]) else 1.0], device=self.device)
        if float(self.dist.all_reduce_sum(bad)) > 0:
            own = parts if not math.isfinite(parts["total"]) else None
            self.count_nonfinite("loss", epoch, batch, own)
            return False
        self.scaler.scale(loss * scale).backward()
        self.grads_pending = True
        return True

    def count_nonfinite(self, what: str, epoch: int, batch: int, parts: dict[str, float] | None) -> None:
        """Count a step skipped for a non-finite ``what`` (loss or gradient); past the limit, stop the run
        with :class:`NonFiniteLossError` naming where it happened, the non-finite terms and what to change."""
        self.nonfinite_steps += 1
        if self.nonfinite_steps <= self.max_nonfinite_steps:
            return
        terms = ""
        if parts is not None:
            bad = [k for k, v in parts.items() if k != "total" and isinstance(v, float) and not math.isfinite(v)]
            terms = f" (non-finite terms: {', '.join(bad)}; loss {parts['total']})"
        elif what == "loss":
            terms = " (on another process)"
        raise NonFiniteLossError(
            f"non-finite {what} at epoch {epoch + 1} batch {batch}{terms}: {self.nonfinite_steps} steps skipped, "
            f"more than {self.nonfinite_limit_key}={self.max_nonfinite_steps}, so the run stops; lower the "
            f"learning rate, lengthen the warm-up, clip gradients, or check the data of that batch")

    def apply_gradients(self, params: Iterable[nn.Parameter], clip_grad_norm: float, epoch: int, batch: int) -> None:
        """One optimizer step from the accumulated (scaled) gradients, then the schedule; grads are cleared.

        The gradient norm is measured on every step (clipped to ``clip_grad_norm`` when > 0). A
        non-finite norm skips the update and counts as a non-finite step; with fp16 the loss scaler
        makes that decision itself (it skips the step and lowers its scale, which is not counted).
        A group whose every batch was skipped updates nothing. The schedule advances either way,
        so it stays a function of the batch position.
        """
        stepped = False
        if self.grads_pending:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in params if p.grad is not None]
            if clip_grad_norm > 0:
                norm = nn.utils.clip_grad_norm_(params, clip_grad_norm)
            else:
                norm = nn.utils.get_total_norm([p.grad for p in params])
            self.last_grad_norm = float(norm)
            if math.isfinite(self.last_grad_norm) or self.scaler.is_enabled():
                self.scaler.step(self.optimizer)
                stepped = True
            else:
                self.count_nonfinite("gradient", epoch, batch, None)
            self.scaler.update()
        self.grads_pending = False
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            if not stepped:  # torch warns of a schedule step before any optimizer step; skipping one is intended
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        self.global_step += 1

    def record_step(self, epoch: int, batch: int, parts: dict[str, float], progress: tqdm | None) -> None:
        """Progress bar and (rank 0, every ``log_every`` batches and the last) the step log."""
        group = self.optimizer.param_groups[0]
        lr = group["lr"] / group.get("lr_mult", 1.0)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{parts['total']:.4f}", lr=f"{lr:.2e}")
        if self.dist.is_main and (batch % max(self.cfg.log_every, 1) == 0 or batch + 1 == len(self.loader)):
            self.step_log.write({"epoch": epoch + 1, "batch": batch, "step": self.global_step, "lr": lr, **parts,
                                 "grad_norm": self.last_grad_norm, "nonfinite_steps": self.nonfinite_steps})

    # ------------------------------------------------------------------ epochs

    @property
    def end_epoch(self) -> int:
        """The epoch this ``fit`` call stops before."""
        if self.stop_after_epochs is None:
            return self.cfg.epochs
        return min(self.cfg.epochs, self.start_epoch + self.stop_after_epochs)

    def run_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, Any]:
        """Train one epoch (and validate, where the loop does); returns its log row without ``seconds``."""
        raise NotImplementedError

    def epoch_line(self, row: dict[str, Any]) -> str:
        """The line shown after each epoch."""
        raise NotImplementedError

    def finish_epoch(self, row: dict[str, Any]) -> None:
        """Called with the complete row on every rank, before it is logged and ``last.pt`` is saved."""

    def run_epochs(self, description: str) -> None:
        """Epochs ``start_epoch .. end_epoch - 1`` under one progress bar; rank 0 logs each epoch, writes its
        line and saves ``last.pt`` every ``checkpoint_every`` epochs and after the last one."""
        progress = None
        batches = len(self.loader)
        if self.show_progress:
            progress = tqdm(total=batches * self.cfg.epochs, initial=batches * self.start_epoch, desc=description,
                            unit="batch", dynamic_ncols=True)
        end = self.end_epoch
        try:
            for epoch in range(self.start_epoch, end):
                started = time.time()
                row = self.run_epoch(epoch, progress)
                row["seconds"] = time.time() - started
                row["nonfinite_steps"] = self.nonfinite_steps
                row["peak_memory_mib"] = peak_memory_mib(self.device)
                self.finish_epoch(row)
                if self.dist.is_main:
                    self.epoch_log.write(row)
                    if (epoch + 1) % max(self.cfg.checkpoint_every, 1) == 0 or epoch + 1 == end:
                        self.save_checkpoint(os.path.join(self.cfg.out_dir, CHECKPOINT_LAST), epoch)
                    self.show_line(self.epoch_line(row), progress)
                self.dist.barrier()
        finally:
            if progress is not None:
                progress.close()

    def show_line(self, line: str, progress: tqdm | None) -> None:
        if progress is not None:
            progress.write(line)
        else:
            print(line, flush=True)

    # ------------------------------------------------------------------ checkpoints

    def optimisation_state(self, epoch: int) -> dict[str, Any]:
        """The checkpoint entries every loop writes: optimisation state, position, RNG and config."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "nonfinite_steps": self.nonfinite_steps,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
        }

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        raise NotImplementedError

    def save_checkpoint(self, path: str, epoch: int) -> None:
        save_checkpoint_file(self.checkpoint_state(epoch), path)

    def restore_state(self, ckpt: dict[str, Any], path: str) -> None:
        """Load the loop's own checkpoint entries (model, best scores, ...); refuse a checkpoint of another run."""
        raise NotImplementedError

    def load_checkpoint(self, path: str) -> None:
        """Continue from ``path``: the loop's own entries, then optimisation state, position and RNG."""
        ckpt = read_checkpoint(path, RESUME_KEYS)
        self.restore_state(ckpt, path)
        self.start_epoch, self.global_step = restore_optimisation(ckpt, self.optimizer, self.scheduler, self.scaler)
        self.nonfinite_steps = int(ckpt.get("nonfinite_steps", 0))
        set_rng_state(ckpt["rng"])

    def close(self) -> None:
        self.dist.close()
