"""The data-set registry: every data-set module registers its kind, and every kind builds a split
from the layout its own test writes (``make_<kind>(root)`` in one of the ``test_data_*.py`` modules)."""
from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from rgbt_perception.core.classes import FMB, LLVIP, MFNET, SYNTHETIC
from training.datasets import (
    BOX_ONLY_KINDS,
    DATASET_KINDS,
    DATASET_SPLITS,
    FMBDataset,
    FolderDataset,
    LLVIPDataset,
    MFNetDataset,
    build_dataset,
    dataset_kind,
    dataset_kinds,
    has_split,
)
from training.datasets.registry import PACKAGE, SUPPORT_MODULES, dataset_modules, register_dataset

TEST_DIR = os.path.dirname(os.path.abspath(__file__))


def layout_writers() -> dict[str, Callable[[str], Any]]:
    """``make_<kind>`` of the data-set tests, by kind."""
    writers = {}
    for path in sorted(glob.glob(os.path.join(TEST_DIR, "test_data_*.py"))):
        module = importlib.import_module(os.path.splitext(os.path.basename(path))[0])
        for kind in dataset_kinds():
            writer = getattr(module, f"make_{kind}", None)
            if callable(writer):
                writers[kind] = writer
    return writers


def test_every_data_set_module_registers_a_kind():
    package_dir = os.path.dirname(importlib.import_module(PACKAGE).__file__)
    files = {os.path.splitext(name)[0] for name in os.listdir(package_dir)
             if name.endswith(".py") and name != "__init__.py"}
    assert SUPPORT_MODULES <= files, "SUPPORT_MODULES names a module that does not exist"
    assert set(dataset_modules()) == files - SUPPORT_MODULES
    registered = {kind.module.rsplit(".", 1)[-1] for kind in dataset_kinds().values()}
    assert registered == files - SUPPORT_MODULES
    assert len(dataset_kinds()) == 9 and set(DATASET_KINDS) == set(dataset_kinds())


def test_registry_records_splits_classes_masks_and_loader():
    kinds = dataset_kinds()
    assert kinds["llvip"].splits == ("train", "test") and kinds["llvip"].class_set is LLVIP
    assert kinds["llvip"].loader is LLVIPDataset and not kinds["llvip"].has_masks
    assert kinds["synthetic"].loader is MFNetDataset and kinds["synthetic"].class_set is SYNTHETIC
    assert kinds["synthetic"].module == f"{PACKAGE}.synthetic" and kinds["mfnet"].module == f"{PACKAGE}.mfnet"
    assert kinds["fmb"].class_set is FMB and kinds["fmb"].has_masks
    assert kinds["folder"].loader is FolderDataset and kinds["folder"].splits is None
    assert kinds["folder"].class_set is MFNET
    assert set(BOX_ONLY_KINDS) == {"llvip", "flir_aligned", "m3fd", "kaist"}
    assert DATASET_SPLITS["m3fd"] == ("train", "val") and "folder" not in DATASET_SPLITS
    # Checkpoint selection needs a validation split; kinds without one use a holdout of train.
    assert has_split("mfnet", "val") and not has_split("pst900", "val") and has_split("folder", "night_run")


def test_a_kind_name_belongs_to_one_module():
    with pytest.raises(ValueError, match="'llvip' registered by both"):
        register_dataset("llvip", FMBDataset, FMB, splits=("train",), module="somewhere.else")
    assert dataset_kind("llvip").loader is LLVIPDataset
    with pytest.raises(ValueError, match="unknown data set kind 'kitti'; known: flir_aligned, fmb"):
        dataset_kind("kitti")


@pytest.mark.parametrize("kind", sorted(dataset_kinds()))
def test_each_kind_builds_from_the_layout_its_test_writes(kind, tmp_path):
    writers = layout_writers()
    assert kind in writers, f"no make_{kind}(root) in test/test_data_*.py writes a {kind} layout"
    spec = dataset_kind(kind)
    root = str(tmp_path / kind)
    writers[kind](root)
    split = spec.splits[0] if spec.splits else "train"
    dataset = build_dataset(kind, root, split)
    assert dataset.class_set is spec.class_set and len(dataset) >= 1
    if isinstance(spec.loader, type):
        assert isinstance(dataset, spec.loader)
    sample = dataset[0]
    height, width = sample["rgb"].shape[:2]
    assert sample["rgb"].shape == (height, width, 3) and sample["rgb"].dtype == np.uint8
    assert sample["thermal"].ndim == 2
    # Mask sets give a label of the RGB size; box-only sets none.
    assert (sample["label"] is not None) == spec.has_masks
    if spec.has_masks:
        assert sample["label"].shape == (height, width)
    assert sample["boxes"].shape[1:] == (4,) and len(sample["boxes"]) == len(sample["box_labels"])
    with pytest.raises(ValueError, match="split"):
        build_dataset(kind, root, "no_such_split")
