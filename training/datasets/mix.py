"""Training on several data sets at once: class lists mapped onto one, then concatenated.

A run trains one network, so every mixed-in data set is seen through the class list of the
run's main data set (``data.dataset``). Each entry of ``data.mix`` is a mapping::

    {dataset: llvip, root: /data/LLVIP, split: train,       # required: dataset, root
     classes: {bicycle: bike, dog: null},                 # optional renames; null drops a class
     drop_unmatched: false,                               # optional: drop classes with no match
     repeat: 1,                                           # optional: times the set is repeated
     options: {clip_boxes: true}}                         # optional: loader keyword arguments

A class of the mixed-in set maps, in this order, through ``classes`` (case-insensitive), to the
main class of the same name (case-insensitive, spaces and underscores alike), or - for its
background class - to the main background class. Any other class is an error naming it, unless
``drop_unmatched``. Boxes of dropped classes are removed; mask pixels of dropped classes become
ignore (255). Box-only sets contribute boxes only (their samples have no mask), so mask and box
data sets mix freely: the criterion masks the segmentation losses per sample.
"""
from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rgbt_perception.core.classes import IGNORE_INDEX, ClassSet

MIX_KEYS = ("dataset", "root", "split", "classes", "drop_unmatched", "repeat", "options")


def _key(name: str) -> str:
    return name.lower().replace(" ", "_")


def class_map(source: ClassSet, target: ClassSet, classes: Mapping[str, str | None] | None = None,
              drop_unmatched: bool = False) -> np.ndarray:
    """``K_source`` int64 table: target class id of each source class, -1 where it is dropped.

    Raises ``ValueError`` naming the source classes that have no target (see the module doc).
    """
    renames = {_key(k): v for k, v in (classes or {}).items()}
    unknown = sorted(set(renames) - {_key(n) for n in source.names})
    if unknown:
        raise ValueError(f"classes maps {unknown}, which the {source.name} class list does not have "
                         f"({', '.join(source.names)})")
    target_ids = {_key(n): i for i, n in enumerate(target.names)}
    table = np.full(source.num_classes, -1, np.int64)
    unmatched = []
    for i, name in enumerate(source.names):
        key = _key(name)
        if key in renames:
            wanted = renames[key]
            if wanted is None:
                continue
            if _key(wanted) not in target_ids:
                raise ValueError(f"classes maps {name!r} to {wanted!r}, which is not a {target.name} class "
                                 f"({', '.join(target.names)})")
            table[i] = target_ids[_key(wanted)]
        elif key in target_ids:
            table[i] = target_ids[key]
        elif i == source.background_id and target.background_id is not None:
            table[i] = target.background_id
        else:
            unmatched.append(name)
    if unmatched and not drop_unmatched:
        raise ValueError(
            f"{source.name} classes {unmatched} have no {target.name} counterpart ({', '.join(target.names)}); "
            f"map them in classes (null drops one) or set drop_unmatched"
        )
    return table


class ClassMappedDataset:
    """A data set whose samples are re-labelled into ``target`` by a :func:`class_map` table."""

    def __init__(self, dataset: Any, target: ClassSet, table: np.ndarray) -> None:
        source = dataset.class_set
        if len(table) != source.num_classes:
            raise ValueError(f"class table has {len(table)} entries for {source.num_classes} classes")
        self.dataset = dataset
        self.class_set = target
        self.table = np.asarray(table, np.int64)
        # Mask look-up table over all uint8 values: dropped classes and unknown values -> ignore.
        self._lut = np.full(256, IGNORE_INDEX, np.uint8)
        kept = self.table >= 0
        self._lut[np.flatnonzero(kept)] = self.table[kept].astype(np.uint8)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def names(self) -> list[str]:
        return list(self.dataset.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        labels = np.asarray(sample["box_labels"], np.int64)
        mapped = self.table[labels] if len(labels) else labels
        keep = mapped >= 0
        sample["boxes"] = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)[keep]
        sample["box_labels"] = mapped[keep]
        if sample.get("box_occlusion") is not None:
            sample["box_occlusion"] = np.asarray(sample["box_occlusion"])[keep]
        if sample.get("label") is not None:
            sample["label"] = self._lut[sample["label"]]
        return sample


class ConcatDataset:
    """Data sets one after the other; all must share one class list."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        if not datasets:
            raise ValueError("nothing to concatenate")
        names = {tuple(d.class_set.names) for d in datasets}
        if len(names) != 1:
            raise ValueError(f"concatenated data sets have different class lists: {sorted(names)}")
        self.datasets = list(datasets)
        self.class_set = datasets[0].class_set
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def names(self) -> list[str]:
        return [n for d in self.datasets for n in d.names]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        index %= len(self)
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[part][index - self.offsets[part]]


def check_mix_entries(entries: Any) -> list[dict[str, Any]]:
    """Validate ``data.mix`` (a list of mappings, see the module doc); errors name the entry."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"data.mix must be a list of data sets, got {type(entries).__name__}")
    checked = []
    for i, entry in enumerate(entries):
        where = f"data.mix[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with dataset and root, got {entry!r}")
        unknown = sorted(set(entry) - set(MIX_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {', '.join(MIX_KEYS)}")
        for key in ("dataset", "root"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ValueError(f"{where} needs {key} (a string)")
        from training.datasets.registry import dataset_kinds

        if entry["dataset"] not in dataset_kinds():
            raise ValueError(f"{where}.dataset must be one of {', '.join(dataset_kinds())}, got {entry['dataset']!r}")
        repeat = entry.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"{where}.repeat must be an integer >= 1, got {repeat!r}")
        classes = entry.get("classes") or {}
        if not isinstance(classes, Mapping) or not all(v is None or isinstance(v, str) for v in classes.values()):
            raise ValueError(f"{where}.classes must map class names to class names or null, got {classes!r}")
        options = entry.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}.options must be a mapping of loader arguments, got {options!r}")
        checked.append({"dataset": entry["dataset"], "root": entry["root"], "split": entry.get("split", "train"),
                        "classes": dict(classes), "drop_unmatched": bool(entry.get("drop_unmatched", False)),
                        "repeat": repeat, "options": dict(options)})
    return checked


def mix_datasets(main: Any, entries: Any) -> Any:
    """``main`` followed by the ``data.mix`` entries, each mapped onto ``main``'s class list.

    Returns ``main`` itself when there are no entries.
    """
    from training.datasets.registry import build_dataset

    checked = check_mix_entries(entries)
    if not checked:
        return main
    parts = [main]
    for i, entry in enumerate(checked):
        dataset = build_dataset(entry["dataset"], entry["root"], entry["split"], **entry["options"])
        try:
            table = class_map(dataset.class_set, main.class_set, entry["classes"], entry["drop_unmatched"])
        except ValueError as err:
            raise ValueError(f"data.mix[{i}] ({entry['dataset']}): {err}") from None
        mapped = ClassMappedDataset(dataset, main.class_set, table)
        parts.extend([mapped] * entry["repeat"])
    return ConcatDataset(parts)


def extend_training_view(augmented: Any, train_view: Any, entries: Any) -> Any:
    """Append the ``data.mix`` sets to a run's training data.

    ``augmented`` is the run's ``TransformedDataset`` (its ``dataset`` becomes the concatenation,
    so the mixed-in samples get the same augmentation and per-epoch reseeding) and
    ``train_view`` the ``Subset`` of it that trains (``train_fraction`` and a holdout apply to the
    main set only). Returns the new view; without entries, ``train_view`` itself.
    """
    from torch.utils.data import Subset

    main = augmented.dataset
    mixed = mix_datasets(main, entries)
    if mixed is main:
        return train_view
    augmented.dataset = mixed
    return Subset(augmented, list(train_view.indices) + list(range(len(main), len(mixed))))
