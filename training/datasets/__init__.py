"""RGB-T data sets for training and evaluation; ``build_dataset`` picks one by name."""
from __future__ import annotations

from typing import Any

from rgbt_perception.core.classes import MFNET, SYNTHETIC

from training.datasets.base import DatasetError, FrameRecord, RGBTDataset
from training.datasets.boxes import CocoBoxes, boxes_from_label
from training.datasets.fmb import FMBDataset
from training.datasets.folder import FolderDataset
from training.datasets.mfnet import MFNetDataset
from training.datasets.pst900 import PST900Dataset
from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset, collate

DATASET_KINDS = ("mfnet", "synthetic", "pst900", "fmb", "folder")


def build_dataset(kind: str, root: str, split: str, **kwargs: Any) -> RGBTDataset:
    """A data set by kind: ``mfnet``, ``synthetic`` (rgbt-synth output: the MFNet layout with
    the synthetic class set), ``pst900``, ``fmb`` or ``folder``. ``kwargs`` go to the loader
    (e.g. ``thing_ids``, ``min_box_area``; ``thermal16`` for mfnet/synthetic)."""
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
    raise ValueError(f"unknown data set kind {kind!r}; known: {', '.join(DATASET_KINDS)}")


__all__ = [
    "DATASET_KINDS", "AugmentConfig", "CocoBoxes", "DatasetError", "FMBDataset", "FolderDataset", "FrameRecord",
    "MFNetDataset", "PST900Dataset", "PairTransform", "RGBTDataset", "TransformedDataset", "boxes_from_label",
    "build_dataset", "collate",
]
