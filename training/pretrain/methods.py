"""The label-free objectives ``rgbt-pretrain`` knows.

A module of its own, free of torch, because the ``rgbt-pretrain`` parser offers these names
before anything heavy is imported.
"""
from __future__ import annotations

#: ``pccl``: patch-wise cross-modal contrastive learning (:mod:`training.pretrain.pccl`);
#: ``cmss-mim``: CMSS-guided complementary masked image modelling (:mod:`training.pretrain.cmss`).
METHODS = ("pccl", "cmss-mim")
