"""M3FD, the detection part of TarDAL (Liu et al., CVPR 2022)::

    root/Vis/<id>.png            RGB, 1024x768
    root/Ir/<id>.png             thermal (8-bit), registered to RGB
    root/Annotation/<id>.xml     Pascal VOC boxes: People, Car, Bus, Motorcycle, Lamp, Truck
    root/meta/{train,val}.txt    ids per split (optional, see below)

4,200 pairs with ids ``00000`` .. ``04199``. M3FD publishes no split. When ``meta/train.txt`` and
``meta/val.txt`` exist they are read; otherwise a seeded split (``val_fraction`` of the pairs,
default 20 %, ``split_seed`` 0) is made once and written to those two files, so every later
run, the validation during training and ``rgbt-eval`` see the same split.
"""
from __future__ import annotations

import os

import numpy as np

from rgbt_perception.core.classes import M3FD, ClassSet
from rgbt_perception.io.files import atomic_path
from training.datasets.base import DatasetError, FrameRecord, pair_folders, read_split_file, require_dir
from training.datasets.detection import BoxOnlyDataset
from training.datasets.registry import register_dataset
from training.datasets.voc import read_voc_xml

M3FD_SPLITS = ("train", "val")


def make_split(stems: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Seeded ``{"train": [...], "val": [...]}`` of ``stems`` (each sorted); val has
    ``round(len * val_fraction)`` frames, at least one, and train keeps at least one."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if len(stems) < 2:
        raise DatasetError(f"cannot split {len(stems)} frame(s) into train and val")
    ordered = sorted(stems)
    count = min(max(1, int(round(len(ordered) * val_fraction))), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in order[:count])
    train = sorted(ordered[i] for i in order[count:])
    return {"train": train, "val": val}


def write_split_files(meta_dir: str, splits: dict[str, list[str]], note: str) -> None:
    """Write ``<meta_dir>/<split>.txt`` (one id per line, after a ``#`` line saying how they were made)."""
    try:
        for split, stems in splits.items():
            with atomic_path(os.path.join(meta_dir, f"{split}.txt")) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(f"# {note}\n" + "".join(f"{stem}\n" for stem in stems))
    except OSError as err:
        raise DatasetError(
            f"M3FD has no meta/train.txt and meta/val.txt and they cannot be written to {meta_dir}: {err.strerror}; "
            f"write them yourself or pass meta_dir= a writable folder"
        ) from None


def _read_ids(path: str) -> list[str]:
    return [stem for stem in read_split_file(path) if not stem.startswith("#")]


class M3FDDataset(BoxOnlyDataset):
    """M3FD's train or val split (box-only: ``label`` is None).

    ``meta_dir`` (default ``root/meta``) holds the split files read or written.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        class_set: ClassSet = M3FD,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        meta_dir: str | None = None,
        clip_boxes: bool = False,
    ) -> None:
        if split not in M3FD_SPLITS:
            raise ValueError(f"M3FD split must be one of {', '.join(M3FD_SPLITS)}, got {split!r}")
        require_dir(root, "M3FD root")
        folders = {
            "rgb": require_dir(os.path.join(root, "Vis"), "M3FD Vis"),
            "thermal": require_dir(os.path.join(root, "Ir"), "M3FD Ir"),
        }
        annotations_dir = require_dir(os.path.join(root, "Annotation"), "M3FD Annotation")
        pairs = pair_folders(folders, required=("rgb", "thermal"))
        meta_dir = meta_dir or os.path.join(root, "meta")
        paths = {s: os.path.join(meta_dir, f"{s}.txt") for s in M3FD_SPLITS}
        present = [s for s, p in paths.items() if os.path.isfile(p)]
        if len(present) == 1:
            other = next(s for s in M3FD_SPLITS if s not in present)
            raise DatasetError(f"{paths[present[0]]} exists but {paths[other]} does not; give both or neither")
        if present:
            stems = _read_ids(paths[split])
            self.split_source = paths[split]
        else:
            splits = make_split(list(pairs), val_fraction, split_seed)
            write_split_files(meta_dir, splits, f"seeded M3FD split: val_fraction={val_fraction}, seed={split_seed}")
            stems = splits[split]
            self.split_source = f"{paths[split]} (written: seeded, val_fraction={val_fraction}, seed={split_seed})"
        records, annotations = [], {}
        for stem in stems:
            if stem not in pairs:
                raise DatasetError(f"frame {stem!r} of {paths[split]} has no Vis/Ir image pair in {root}")
            xml_path = os.path.join(annotations_dir, f"{stem}.xml")
            if not os.path.isfile(xml_path):
                raise DatasetError(f"missing annotation file: {xml_path} (for {pairs[stem]['rgb']})")
            annotations[stem] = read_voc_xml(xml_path, class_set, clip_boxes=clip_boxes)
            records.append(FrameRecord(stem, pairs[stem]["rgb"], pairs[stem]["thermal"]))
        self.root = root
        self.split = split
        super().__init__(records, class_set, annotations, clip_boxes=clip_boxes)


register_dataset("m3fd", M3FDDataset, M3FD, splits=M3FD_SPLITS)
