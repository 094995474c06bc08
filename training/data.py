"""The data of a supervised run: augmented training view, validation set, label fractions and holdouts."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from rgbt_perception.core.preprocess import ThermalScaling
from training.config import TrainConfig
from training.datasets import build_dataset
from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset


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
    # Offset from the seed of select_fraction, so the two draws are not the same permutation.
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def build_datasets(cfg: TrainConfig, input_size: Sequence[int]) -> tuple[Any, Dataset, Dataset, Any]:
    """``(augmented training set, training view, validation set, class set)``.

    The training view applies ``train_fraction`` (and removes a ``holdout`` validation part);
    the first element is the underlying transformed data set whose ``set_epoch`` reseeds the
    augmentation. ``input_size`` is the model's ``(H, W)``: validation frames are resized to it, and
    training frames too unless ``data.train_size`` names another size.
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
    training = PairTransform(cfg.data.train_size or input_size, scaling, augment=augment)
    augmented = TransformedDataset(train_raw, training, seed=cfg.seed)
    train = Subset(augmented, select_fraction(train_indices, cfg.data.train_fraction, cfg.seed))
    return augmented, train, val, train_raw.class_set
