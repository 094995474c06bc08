"""Unlabelled aligned RGB-T pairs for label-free adaptation.

Three sources, one output: every source yields raw pairs ``{"rgb": HxWx3 uint8, "thermal": hxw
uint8|uint16, "homography": 3x3 | None, "name": str}`` and :class:`PairTensors` turns them into
network inputs with the shared ``registration`` and ``preprocess`` functions.

* :class:`DatasetPairs`: any data set of ``training.datasets`` (labels are ignored).
* :class:`FolderPairs`: a plain folder ``rgb/`` + ``thermal/`` with matching file stems
  (optional ``homography.txt`` at the top).
* :class:`BagPairs`: rosbag2 recordings, paired by the node's synchroniser
  (``rgbt_perception.core.sync.ApproximateTimeSynchronizer``) fed in recording order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rgbt_perception.core.defaults import SYNC_QUEUE_SIZE, SYNC_SLOP
from rgbt_perception.core.preprocess import ThermalScaling
from rgbt_perception.core.registration import read_homography_file, warp_thermal_to_rgb

Pair = dict[str, Any]
SOURCE_KINDS = ("dataset", "folder", "bag")


class PairSourceError(ValueError):
    """Unlabelled pairs cannot be read as configured; the message names the source and the problem."""


@dataclass
class PairSourceConfig:
    """Where the unlabelled pairs come from (the ``data`` section of a pretraining YAML).

    ``kind``: ``dataset`` (``dataset`` names a layout of ``training.datasets``, ``split`` its
    split), ``folder`` (``root`` holds ``rgb/`` and ``thermal/``) or ``bag`` (``bags`` lists
    rosbag2 paths). ``max_pairs`` (0 = all) and ``every`` (keep one pair in ``every``) thin a
    long recording. ``homography``: a 3x3 text file for thermal->RGB registration of folder and
    bag pairs (a data set brings its own).
    """

    kind: str = "dataset"
    dataset: str = "synthetic"
    root: str = ""
    split: str = "train"
    bags: list[str] = field(default_factory=list)
    rgb_topic: str = "rgb/image"
    thermal_topic: str = "thermal/image"
    slop: float = SYNC_SLOP
    queue_size: int = SYNC_QUEUE_SIZE
    homography: str = ""
    max_pairs: int = 0
    every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise PairSourceError(f"data.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind in ("dataset", "folder") and not self.root:
            raise PairSourceError(f"data.kind={self.kind} needs data.root")
        if self.kind == "bag" and not self.bags:
            raise PairSourceError("data.kind=bag needs data.bags (one or more rosbag2 paths)")
        if self.max_pairs < 0 or self.every < 1:
            raise PairSourceError(f"data.max_pairs must be >= 0 and data.every >= 1, "
                                  f"got {self.max_pairs}, {self.every}")

    def describe(self) -> str:
        """One line naming the source (stored in the output's metadata)."""
        if self.kind == "dataset":
            return f"dataset:{self.dataset}:{self.root}:{self.split}"
        if self.kind == "folder":
            return f"folder:{self.root}"
        return "bag:" + ",".join(self.bags)


def _thin(items: list, every: int, max_pairs: int) -> list:
    items = items[::every]
    return items[:max_pairs] if max_pairs else items


class DatasetPairs:
    """Pairs of a labelled data set with the labels dropped."""

    def __init__(self, dataset: Sequence[dict[str, Any]], every: int = 1, max_pairs: int = 0) -> None:
        self.dataset = dataset
        self.indices = _thin(list(range(len(dataset))), every, max_pairs)
        if not self.indices:
            raise PairSourceError("the data set has no frames")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Pair:
        sample = self.dataset[self.indices[index]]
        return {"rgb": sample["rgb"], "thermal": sample["thermal"], "homography": sample.get("homography"),
                "name": str(sample.get("name", index))}


class FolderPairs:
    """A folder ``root/rgb/*`` + ``root/thermal/*`` paired by file stem.

    Thermal files keep their bit depth (8 or 16 bit); ``root/homography.txt`` (or the
    ``homography`` argument) registers thermal onto RGB.
    """

    def __init__(self, root: str, homography: str = "", every: int = 1, max_pairs: int = 0) -> None:
        from training.datasets.base import DatasetError, pair_folders

        self.root = root
        rgb_dir, thermal_dir = os.path.join(root, "rgb"), os.path.join(root, "thermal")
        for folder in (rgb_dir, thermal_dir):
            if not os.path.isdir(folder):
                raise PairSourceError(f"pair folder {root} lacks {os.path.basename(folder)}/ "
                                      f"(expected rgb/ and thermal/)")
        try:
            pairs = pair_folders({"rgb": rgb_dir, "thermal": thermal_dir}, required=("rgb", "thermal"))
        except DatasetError as err:
            raise PairSourceError(str(err)) from None
        self.items = _thin(sorted(pairs.items()), every, max_pairs)
        homography_path = homography or os.path.join(root, "homography.txt")
        self.homography = None
        if homography or os.path.isfile(homography_path):
            try:
                self.homography = read_homography_file(homography_path)
            except ValueError as err:
                raise PairSourceError(str(err)) from None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        from training.datasets.base import DatasetError, read_rgb, read_thermal

        name, paths = self.items[index]
        try:
            rgb, thermal = read_rgb(paths["rgb"]), read_thermal(paths["thermal"])
        except DatasetError as err:
            raise PairSourceError(str(err)) from None
        return {"rgb": rgb, "thermal": thermal, "homography": self.homography, "name": name}


class BagPairs:
    """Pairs from rosbag2 recordings, matched by ``rgbt_perception.core.sync`` like the node does.

    Images are registered (thermal onto the RGB grid) and resized to ``store_size`` once while
    reading, so memory holds ``len(self)`` pairs at the model's input size, thermal counts kept.
    """

    def __init__(
        self,
        bags: Sequence[str],
        rgb_topic: str = "rgb/image",
        thermal_topic: str = "thermal/image",
        slop: float = SYNC_SLOP,
        queue_size: int = SYNC_QUEUE_SIZE,
        homography: str = "",
        store_size: Sequence[int] | None = None,
        every: int = 1,
        max_pairs: int = 0,
        progress: bool = False,
    ) -> None:
        from rgbt_perception.core.sync import ApproximateTimeSynchronizer, SimpleFilter
        from rgbt_perception.io.bag import BagError, BagReader

        self.homography = None
        if homography:
            try:
                self.homography = read_homography_file(homography)
            except ValueError as err:
                raise PairSourceError(str(err)) from None
        self.store_size = None if store_size is None else (int(store_size[0]), int(store_size[1]))
        self.items: list[Pair] = []
        self.frames_read = {"rgb": 0, "thermal": 0}
        self.pairs_matched = 0
        rgb_input, thermal_input = SimpleFilter(), SimpleFilter()
        sync = ApproximateTimeSynchronizer([rgb_input, thermal_input], queue_size, slop)
        sync.registerCallback(self._on_pair)
        self._every, self._max_pairs = int(every), int(max_pairs)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc="reading bags", unit="msg")
        for path in bags:
            try:
                with BagReader(path) as reader:
                    reader.require_topics([rgb_topic, thermal_topic])
                    for frame in reader.frames([rgb_topic, thermal_topic]):
                        is_rgb = frame.topic == rgb_topic.lstrip("/")
                        self.frames_read["rgb" if is_rgb else "thermal"] += 1
                        # A bag frame carries its message header: the synchroniser reads its stamp.
                        (rgb_input if is_rgb else thermal_input).signalMessage(frame)
                        if bar is not None:
                            bar.update(1)
                        if self._max_pairs and len(self.items) >= self._max_pairs:
                            break
            except BagError as err:
                raise PairSourceError(str(err)) from None
            if self._max_pairs and len(self.items) >= self._max_pairs:
                break
        if bar is not None:
            bar.close()
        if not self.items:
            raise PairSourceError(
                f"no RGB-thermal pairs within slop {slop} s in {', '.join(map(str, bags))} "
                f"({self.frames_read['rgb']} {rgb_topic} and {self.frames_read['thermal']} {thermal_topic} messages)"
            )

    def _on_pair(self, rgb_frame: Any, thermal_frame: Any) -> None:
        self.pairs_matched += 1
        if (self.pairs_matched - 1) % self._every or (self._max_pairs and len(self.items) >= self._max_pairs):
            return
        rgb = rgb_frame.image
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        elif rgb_frame.encoding.startswith("bgr"):
            rgb = rgb[:, :, 2::-1]
        rgb = np.ascontiguousarray(rgb[:, :, :3])
        thermal = thermal_frame.image
        if thermal.ndim == 3:
            thermal = thermal[:, :, 0]
        thermal = warp_thermal_to_rgb(thermal, self.homography, rgb.shape[:2])
        if self.store_size is not None:
            height, width = self.store_size
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            thermal = cv2.resize(thermal, (width, height), interpolation=cv2.INTER_AREA)
        self.items.append({"rgb": rgb, "thermal": thermal, "homography": None,
                           "name": f"{rgb_frame.stamp_ns}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        return self.items[index]


def build_pair_source(cfg: PairSourceConfig, store_size: Sequence[int] | None = None, progress: bool = False):
    """The pair source ``cfg`` describes (``store_size``: the model input size, for bags)."""
    if cfg.kind == "folder":
        return FolderPairs(cfg.root, cfg.homography, cfg.every, cfg.max_pairs)
    if cfg.kind == "bag":
        return BagPairs(cfg.bags, cfg.rgb_topic, cfg.thermal_topic, cfg.slop, cfg.queue_size, cfg.homography,
                        store_size, cfg.every, cfg.max_pairs, progress)
    try:
        from training.datasets import build_dataset
    except ImportError as err:
        raise PairSourceError(f"data.kind=dataset needs training.datasets.build_dataset: {err}") from None
    try:
        dataset = build_dataset(cfg.dataset, cfg.root, cfg.split)
    except (ValueError, OSError) as err:
        raise PairSourceError(f"data set {cfg.dataset} at {cfg.root} ({cfg.split}): {err}") from None
    return DatasetPairs(dataset, cfg.every, cfg.max_pairs)


class PairTensors(Dataset):
    """Raw pairs -> ``{"rgb": 3,H,W, "thermal": 1,H,W}`` float32 ``[0, 1]`` at ``input_size``.

    The pairs go through the training transform (``training.datasets.transforms.PairTransform``:
    thermal registered onto the RGB grid, pair-consistent flip and scale-crop, photometric
    jitter on RGB only, the shared ``preprocess``), or only the evaluation resize when
    ``augment`` is ``None``. Draws depend on ``(seed, epoch, index)`` only.
    """

    def __init__(self, source: Sequence[Pair], input_size: Sequence[int], scaling: ThermalScaling = ThermalScaling(),
                 augment: dict[str, Any] | None = None, seed: int = 0) -> None:
        from training.datasets.transforms import AugmentConfig, PairTransform, TransformedDataset

        if augment is not None:
            try:
                augment_cfg = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})
            except TypeError as err:
                raise PairSourceError(f"augment: {err}") from None
        else:
            augment_cfg = None
        self.source = source
        self.frames = TransformedDataset(source, PairTransform(input_size, scaling, augment_cfg, seed), seed)

    def set_epoch(self, epoch: int) -> None:
        self.frames.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.frames[index]
        return {"rgb": sample["rgb"], "thermal": sample["thermal"]}
