"""Label-free adaptation from unlabelled RGB-T pairs (``rgbt-pretrain``): ``pccl`` and ``cmss-mim``.

The names below are resolved from their submodules on first use: importing one light submodule
(``training.pretrain.methods`` for the ``rgbt-pretrain`` parser) must not load torch and every
objective through this package.
"""
from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "training.pretrain.adapters": ("AdapterFileError", "AdapterLoadReport", "load_adapters_into", "read_adapters",
                                   "save_adapters"),
    "training.pretrain.cmss": ("CMSSConfig", "CMSSMIMObjective", "cmss_scores", "complementary_masks", "fit_gmm_1d"),
    "training.pretrain.data": ("BagPairs", "DatasetPairs", "FolderPairs", "PairSourceConfig", "PairSourceError",
                               "PairTensors", "build_pair_source"),
    "training.pretrain.loop": ("PretrainConfig", "Pretrainer", "load_pretrain_config"),
    "training.pretrain.methods": ("METHODS",),
    "training.pretrain.pccl": ("PCCLConfig", "PCCLObjective", "attention_threshold_targets", "pccl_loss"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
