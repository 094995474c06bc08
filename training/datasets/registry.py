"""The data-set kinds ``build_dataset`` knows, each registered by its own module.

A data-set module ends with one :func:`register_dataset` call naming its kind, its class set, its
splits and its loader::

    register_dataset("pst900", PST900Dataset, PST900, splits=PST900_SPLITS)

Every module of :mod:`training.datasets` outside :data:`SUPPORT_MODULES` is a data-set module
and is imported the first time the registry is asked, so a new data set is one new file (and its
test); nothing else lists the kinds.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rgbt_perception.core.classes import ClassSet

PACKAGE = "training.datasets"
#: Modules of the package that hold shared machinery, not a data set.
SUPPORT_MODULES = frozenset({"base", "boxes", "detection", "mix", "registry", "synthetic_layouts", "transforms", "voc"})


@dataclass(frozen=True)
class DatasetKind:
    """One data-set kind: ``loader(root, split, class_set=..., **options)`` builds a split.

    ``splits``: the split names the layout has (``None``: any name, e.g. the folder layout); a
    kind without ``val`` selects checkpoints on a holdout of train. ``class_set``: the classes
    its samples are labelled with (the loader's default; ``has_masks`` False for box-only sets).
    ``module``: the module that registered it.
    """

    name: str
    loader: Callable[..., Any]
    class_set: ClassSet
    splits: tuple[str, ...] | None
    module: str

    @property
    def has_masks(self) -> bool:
        return self.class_set.has_masks

    def has_split(self, split: str) -> bool:
        return self.splits is None or split in self.splits


_KINDS: dict[str, DatasetKind] = {}
_discovered = False


def register_dataset(name: str, loader: Callable[..., Any], class_set: ClassSet,
                     splits: tuple[str, ...] | None, module: str | None = None) -> DatasetKind:
    """Add a kind; ``module`` defaults to the loader's module. A name taken by another module is an error."""
    kind = DatasetKind(name, loader, class_set, tuple(splits) if splits is not None else None,
                       module or loader.__module__)
    known = _KINDS.get(name)
    if known is not None and known.module != kind.module:
        raise ValueError(f"data set kind {name!r} registered by both {known.module} and {kind.module}")
    _KINDS[name] = kind
    return kind


def dataset_modules() -> list[str]:
    """Names of the data-set modules of the package (every module but :data:`SUPPORT_MODULES`), sorted."""
    package = importlib.import_module(PACKAGE)
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__) if info.name not in SUPPORT_MODULES)


def _discover() -> None:
    global _discovered
    if not _discovered:
        for name in dataset_modules():
            importlib.import_module(f"{PACKAGE}.{name}")
        _discovered = True


def dataset_kinds() -> dict[str, DatasetKind]:
    """Every registered kind by name, sorted by name."""
    _discover()
    return dict(sorted(_KINDS.items()))


def dataset_kind(name: str) -> DatasetKind:
    """The kind called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    kinds = dataset_kinds()
    if name not in kinds:
        raise ValueError(f"unknown data set kind {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


def has_split(kind: str, split: str) -> bool:
    """Whether data sets of ``kind`` have a split named ``split`` (True for any-split layouts and unknown kinds)."""
    known = dataset_kinds().get(kind)
    return known is None or known.has_split(split)


def build_dataset(kind: str, root: str, split: str, **kwargs: Any) -> Any:
    """A split of a data set by kind. ``kwargs`` go to the kind's loader (e.g. ``thing_ids``,
    ``min_box_area``; ``thermal16`` for mfnet/synthetic; ``clip_boxes`` for the box-only sets;
    ``image_set``, ``annotations`` for kaist); ``class_set`` defaults to the kind's."""
    spec = dataset_kind(kind)
    kwargs.setdefault("class_set", spec.class_set)
    return spec.loader(root, split, **kwargs)
