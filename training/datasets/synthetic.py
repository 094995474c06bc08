"""The scenes of ``rgbt-synth``: the MFNet layout (:mod:`training.datasets.mfnet`) with the synthetic class set."""
from __future__ import annotations

from rgbt_perception.core.classes import SYNTHETIC
from training.datasets.mfnet import MFNET_SPLITS, MFNetDataset
from training.datasets.registry import register_dataset

register_dataset("synthetic", MFNetDataset, SYNTHETIC, splits=MFNET_SPLITS, module=__name__)
