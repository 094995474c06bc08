"""RGB-T data sets for training and evaluation; ``build_dataset`` picks one by name."""
from __future__ import annotations

from typing import Any

from rgbt_perception.core.classes import MFNET, SYNTHETIC
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
from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset, collate

DATASET_KINDS = ("mfnet", "synthetic", "pst900", "fmb", "folder", "llvip", "flir_aligned", "m3fd", "kaist")
# The splits each kind has, and whether it ships a validation split (the others select checkpoints
# on a holdout of train). The folder layout takes any split name.
DATASET_SPLITS: dict[str, tuple[str, ...]] = {
    "mfnet": ("train", "val", "test", "trainval"),
    "synthetic": ("train", "val", "test", "trainval"),
    "pst900": ("train", "test"),
    "fmb": ("train", "test"),
    "llvip": ("train", "test"),
    "flir_aligned": ("train", "val"),
    "m3fd": ("train", "val"),
    "kaist": ("train", "test"),
}
BOX_ONLY_KINDS = ("llvip", "flir_aligned", "m3fd", "kaist")


def has_split(kind: str, split: str) -> bool:
    """Whether data sets of ``kind`` have a split named ``split`` (always True for ``folder``)."""
    return kind not in DATASET_SPLITS or split in DATASET_SPLITS[kind]


def build_dataset(kind: str, root: str, split: str, **kwargs: Any) -> RGBTDataset:
    """A data set by kind: ``mfnet``, ``synthetic`` (rgbt-synth output: the MFNet layout with
    the synthetic class set), ``pst900``, ``fmb``, ``folder``, or one of the box-only detection
    sets ``llvip``, ``flir_aligned``, ``m3fd``, ``kaist``. ``kwargs`` go to the loader (e.g.
    ``thing_ids``, ``min_box_area``; ``thermal16`` for mfnet/synthetic; ``clip_boxes`` for the
    detection sets; ``image_set``, ``annotations`` for kaist)."""
    if kind == "mfnet":
        return MFNetDataset(root, split, class_set=kwargs.pop("class_set", MFNET), **kwargs)
    if kind == "synthetic":
        return MFNetDataset(root, split, class_set=kwargs.pop("class_set", SYNTHETIC), **kwargs)
    if kind == "pst900":
        return PST900Dataset(root, split, **kwargs)
    if kind == "fmb":
        return FMBDataset(root, split, **kwargs)
    if kind == "folder":
        return FolderDataset(root, split, **kwargs)
    if kind == "llvip":
        return LLVIPDataset(root, split, **kwargs)
    if kind == "flir_aligned":
        return FLIRAlignedDataset(root, split, **kwargs)
    if kind == "m3fd":
        return M3FDDataset(root, split, **kwargs)
    if kind == "kaist":
        return KAISTDataset(root, split, **kwargs)
    raise ValueError(f"unknown data set kind {kind!r}; known: {', '.join(DATASET_KINDS)}")


__all__ = [
    "BOX_ONLY_KINDS", "DATASET_KINDS", "DATASET_SPLITS", "AugmentConfig", "BoxOnlyDataset", "ClassMappedDataset",
    "CocoBoxes", "ConcatDataset", "DatasetError", "FLIRAlignedDataset", "FMBDataset", "FolderDataset", "FrameBoxes",
    "FrameRecord", "KAISTDataset", "LLVIPDataset", "M3FDDataset", "MFNetDataset", "PST900Dataset", "PairTransform",
    "RGBTDataset", "TransformedDataset", "boxes_from_label", "build_dataset", "check_mix_entries", "class_map",
    "collate", "extend_training_view", "has_split", "mix_datasets",
]
