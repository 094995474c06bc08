"""What a training process runs on: precision, random state, DDP processes and the per-epoch batch order.

Shared by the supervised trainer (:mod:`training.engine`) and label-free pretraining
(:mod:`training.pretrain.loop`). The device itself comes from
:func:`rgbt_perception.core.device.resolve_device`, the one rule the node, the CLIs and
training share.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rgbt_perception.core.device import resolve_device


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` (``auto``: bf16 where supported, else fp16; none on CPU)."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process so far, MiB: the CUDA allocator's peak on a GPU, the resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' state, stored in checkpoints so a resumed run draws what an uninterrupted one would."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state` (its CUDA part only where CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    torch seeds each worker differently per epoch, but NumPy and ``random`` would otherwise
    repeat the parent's state in every worker (identical augmentations).
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def epoch_batches(loader: DataLoader, sampler: DistributedSampler | None, seed: int, epoch: int) -> Iterator[Any]:
    """The batches of one epoch, shuffled as a function of ``(seed, epoch)`` so a resumed run sees
    the same order as an uninterrupted one."""
    if sampler is not None:
        sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)
    yield from loader


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
        """Sum ``tensor`` (any shape) over all processes in place; returned for chaining."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class RunContext:
    """Where and how a training or pretraining run computes: ``dist`` (DDP rank/world), ``device``,
    ``show_progress`` (main process only) and ``amp_dtype`` (autocast dtype or ``None``)."""

    dist: DistributedContext
    device: torch.device
    show_progress: bool
    amp_dtype: torch.dtype | None


def start_run(threads: int, device: str, amp: str, show_progress: bool) -> RunContext:
    """Thread count, device (one resolver for the whole project), DDP context and autocast of a run."""
    if threads > 0:
        torch.set_num_threads(threads)
    context = DistributedContext(resolve_device(device))
    return RunContext(context, context.device, show_progress and context.is_main, resolve_amp(amp, context.device))
