"""RGB-T data sets for training and evaluation; ``build_dataset`` picks one by name.

The kinds come from :mod:`training.datasets.registry`: each data-set module registers its own.
"""
from __future__ import annotations

from training.datasets.base import DatasetError, FrameRecord, RGBTDataset
from training.datasets.boxes import CocoBoxes, boxes_from_label
from training.datasets.detection import BoxOnlyDataset, FrameBoxes
from training.datasets.flir_aligned import FLIRAlignedDataset
from training.datasets.fmb import FMBDataset
from training.datasets.folder import FolderDataset
from training.datasets.kaist import KAISTDataset
from training.datasets.llvip import LLVIPDataset
from training.datasets.m3fd import M3FDDataset
from training.datasets.mfnet import MFNetDataset
from training.datasets.mix import (
    ClassMappedDataset,
    ConcatDataset,
    check_mix_entries,
    class_map,
    extend_training_view,
    mix_datasets,
)
from training.datasets.pst900 import PST900Dataset
from training.datasets.registry import DatasetKind, build_dataset, dataset_kind, dataset_kinds, has_split
from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset, collate

# Derived from the registry (each data-set module registers its kind).
DATASET_KINDS = tuple(dataset_kinds())
# The splits each kind has; kinds without "val" select checkpoints on a holdout of train. The
# folder layout takes any split name and is not listed.
DATASET_SPLITS: dict[str, tuple[str, ...]] = {k.name: k.splits for k in dataset_kinds().values() if k.splits}
BOX_ONLY_KINDS = tuple(k.name for k in dataset_kinds().values() if not k.has_masks)


__all__ = [
    "BOX_ONLY_KINDS", "DATASET_KINDS", "DATASET_SPLITS", "AugmentConfig", "BoxOnlyDataset", "ClassMappedDataset",
    "CocoBoxes", "ConcatDataset", "DatasetError", "DatasetKind", "FLIRAlignedDataset", "FMBDataset", "FolderDataset",
    "FrameBoxes", "FrameRecord", "KAISTDataset", "LLVIPDataset", "M3FDDataset", "MFNetDataset", "PST900Dataset",
    "PairTransform", "RGBTDataset", "TransformedDataset", "boxes_from_label", "build_dataset", "check_mix_entries",
    "class_map", "collate", "dataset_kind", "dataset_kinds", "extend_training_view", "has_split", "mix_datasets",
]
