"""Where calibration pairs come from and where the result goes.

* Folder splits (``DIR/rgb/<stem>.*`` + ``DIR/thermal/<stem>.*``, 8- or 16-bit thermal),
  paired by file stem through :func:`rgbt_perception.io.images.pair_folders`.
* rosbag2 recordings: every thermal frame with the RGB frame nearest in stamp (within the
  node's slop), the best-synchronised pair of each stretch of the recording.
* A prior homography: 9 numbers, a text file of 9 numbers, or a parameters YAML holding
  ``thermal_to_rgb`` (identity means "same field of view", as in the node).
* The output: a parameters file the node loads as it is.

Every failure raises :class:`CalibrationInputError` (a ``ValueError``) naming the file or bag.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from rgbt_perception.calibration import features as ft
from rgbt_perception.core.defaults import SYNC_SLOP

#: Node name and parameter the output file sets (see rgbt_perception/node/logic.py PARAMETERS).
NODE_NAME = "rgbt_perception"
PARAMETER = "thermal_to_rgb"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class CalibrationInputError(ValueError):
    """Input that cannot be used (missing, unreadable, unpaired, inconsistent)."""


@dataclass
class PairSet:
    """Loaded pairs: ``rgb[k]`` ``H, W, 3`` uint8 RGB, ``thermal[k]`` ``h, w`` raw thermal
    (uint8, uint16 or float32), ``names[k]`` the stem or stamp; ``available`` pairs existed
    before thinning to the ``max_pairs`` loaded."""

    names: list[str] = field(default_factory=list)
    rgb: list[np.ndarray] = field(default_factory=list)
    thermal: list[np.ndarray] = field(default_factory=list)
    available: int = 0
    described: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, rgb: np.ndarray, thermal: np.ndarray) -> None:
        if self.rgb and (rgb.shape[:2] != self.rgb[0].shape[:2] or thermal.shape[:2] != self.thermal[0].shape[:2]):
            raise CalibrationInputError(
                f"pair {name}: RGB {rgb.shape[1]}x{rgb.shape[0]} and thermal {thermal.shape[1]}x{thermal.shape[0]} "
                f"differ from the first pair {self.names[0]} (RGB {self.rgb[0].shape[1]}x{self.rgb[0].shape[0]}, "
                f"thermal {self.thermal[0].shape[1]}x{self.thermal[0].shape[0]}): calibrate one camera pair at a time")
        self.names.append(name)
        self.rgb.append(rgb)
        self.thermal.append(thermal)


def _evenly(items: list, limit: int) -> list:
    if limit <= 0 or len(items) <= limit:
        return items
    keep = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[k] for k in keep]


def load_folders(folders: Sequence[str], max_pairs: int = 0, pairs: PairSet | None = None,
                 progress: Callable[[int], None] | None = None) -> PairSet:
    """Read ``DIR/rgb`` + ``DIR/thermal`` splits paired by stem, thinned evenly to ``max_pairs``."""
    from rgbt_perception.io.images import DatasetError, pair_folders, read_rgb, read_thermal

    pairs = PairSet() if pairs is None else pairs
    listed: list[tuple[str, dict[str, str]]] = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise CalibrationInputError(f"pair folder {folder} does not exist")
        roles = {role: os.path.join(folder, role) for role in ("rgb", "thermal")}
        for role, path in roles.items():
            if not os.path.isdir(path):
                raise CalibrationInputError(f"pair folder {folder} lacks {role}/ (expected rgb/<stem>.* and "
                                            "thermal/<stem>.*)")
        try:
            found = pair_folders(roles, required=("rgb", "thermal"))
        except DatasetError as exc:
            raise CalibrationInputError(str(exc)) from None
        prefix = os.path.basename(os.path.normpath(folder)) + "/" if len(folders) > 1 else ""
        listed += [(prefix + stem, files) for stem, files in found.items()]
        pairs.described.append(f"{folder} ({len(found)} pairs)")
    pairs.available += len(listed)
    for name, files in _evenly(listed, max_pairs):
        try:
            rgb, thermal = read_rgb(files["rgb"]), read_thermal(files["thermal"])
        except DatasetError as exc:
            raise CalibrationInputError(str(exc)) from None
        pairs.add(name, rgb, thermal)
        if progress is not None:
            progress(1)
    return pairs


def _rgb_from_frame(frame: Any) -> np.ndarray:
    from rgbt_perception.core.image_codec import cvtColor2

    if frame.encoding == "rgb8":
        return frame.image
    try:
        return cvtColor2(frame.image, frame.encoding, "rgb8")
    except Exception as exc:  # cv_bridge-style errors of several types
        raise CalibrationInputError(f"RGB frame at {frame.stamp_ns} ns: cannot convert {frame.encoding!r} to rgb8: "
                                    f"{exc}") from None


def _thermal_from_frame(frame: Any) -> np.ndarray:
    image = frame.image
    if image.ndim == 3:
        image = image[:, :, 0]
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise CalibrationInputError(f"thermal frame at {frame.stamp_ns} ns: encoding {frame.encoding!r} is not a "
                                    "single-channel 8/16-bit or 32-bit float image")
    return np.ascontiguousarray(image)


class _NearestPairs:
    """Pairs every thermal frame with the RGB frame nearest in stamp (within ``slop`` s), fed
    in recording order, and keeps the closest pair of each window of ``every`` pairs.

    Not the node's synchroniser: its approximate-time policy emits a set as soon as one is
    certain and may pair a thermal frame with the RGB frame a whole RGB period before it (a
    33 ms gap at 30 Hz, the same sign every time). That costs nothing for inference but
    biases a calibration made while driving: near and moving objects shift between the two
    exposures (13 m/s for 12 ms: an object 8 m ahead grows by 2 %). Only the previous RGB
    frame and the thermal frames waiting for the next one are held, so a long drive never
    sits in memory.
    """

    def __init__(self, slop_s: float, every: int) -> None:
        self.slop_ns = int(round(slop_s * 1e9))
        self.every = max(1, int(every))
        self.previous: Any = None
        self.waiting: list[Any] = []
        self.matched = 0
        self.windows: list[_Match] = []

    def add(self, frame: Any, is_rgb: bool) -> None:
        if not is_rgb:
            self.waiting.append(frame)
            return
        for thermal in self.waiting:
            self._pair(thermal, frame)
        self.waiting = []
        self.previous = frame

    def finish(self) -> None:
        for thermal in self.waiting:
            self._pair(thermal, None)
        self.waiting = []

    def _pair(self, thermal: Any, following: Any) -> None:
        gaps = [(abs(int(rgb.stamp_ns) - int(thermal.stamp_ns)), k, rgb)
                for k, rgb in enumerate((self.previous, following)) if rgb is not None]
        if not gaps or min(gaps)[0] > self.slop_ns:
            return
        gap, _, rgb = min(gaps)
        match = _Match(gap, rgb, thermal, self.previous, following)
        if self.matched % self.every == 0:
            self.windows.append(match)
        elif gap < self.windows[-1].gap:
            self.windows[-1] = match
        self.matched += 1


@dataclass
class _Match:
    """A thermal frame, its nearest RGB frame and the RGB frames around it (None at the ends)."""

    gap: int
    rgb: Any
    thermal: Any
    before: Any
    after: Any

    def rgb_image(self, motion: bool) -> np.ndarray:
        """The nearest RGB frame or, with ``motion``, the RGB picture moved to the thermal stamp."""
        if not motion or self.gap == 0 or self.before is None or self.after is None:
            return _rgb_from_frame(self.rgb)
        from rgbt_perception.calibration.motion import frame_between

        start, end = int(self.before.stamp_ns), int(self.after.stamp_ns)
        fraction = min(1.0, max(0.0, (int(self.thermal.stamp_ns) - start) / max(1, end - start)))
        return frame_between(_rgb_from_frame(self.before), _rgb_from_frame(self.after), fraction)


def load_bags(bags: Sequence[str], rgb_topic: str = "rgb/image", thermal_topic: str = "thermal/image",
              slop: float = SYNC_SLOP, max_pairs: int = 0, pairs: PairSet | None = None,
              progress: Callable[[int], None] | None = None, motion: bool = True) -> PairSet:
    """Pairs from rosbag2 recordings: every thermal frame with the RGB frame nearest in stamp
    (at most ``slop`` s apart; see :class:`_NearestPairs`).

    At most ``max_pairs`` spread over the whole recording: the pairs are taken in windows of
    ``k`` consecutive ones and each window gives the pair whose two stamps lie closest together
    (free-running 30 Hz RGB and 9 Hz thermal pair up to 17 ms apart; the best of a window of
    nine, 2 ms on average). With ``motion`` the RGB picture is moved to the thermal frame's stamp
    by optical flow between the RGB frames around it (:mod:`rgbt_perception.calibration.motion`).
    """
    from rgbt_perception.io.bag import BagError, BagReader

    pairs = PairSet() if pairs is None else pairs
    for path in bags:
        counts = {"rgb": 0, "thermal": 0}
        try:
            with BagReader(path) as reader:
                reader.require_topics([rgb_topic, thermal_topic])
                expected = min(reader.count(rgb_topic), reader.count(thermal_topic))
                matcher = _NearestPairs(slop, -(-expected // max_pairs) if max_pairs > 0 else 1)
                for frame in reader.frames([rgb_topic, thermal_topic]):
                    is_rgb = frame.topic == rgb_topic.lstrip("/")
                    counts["rgb" if is_rgb else "thermal"] += 1
                    matcher.add(frame, is_rgb)
                    if progress is not None:
                        progress(1)
                matcher.finish()
        except BagError as exc:
            raise CalibrationInputError(str(exc)) from None
        pairs.available += matcher.matched
        if not matcher.windows:
            raise CalibrationInputError(
                f"bag {path}: no RGB-thermal pairs within slop {slop} s ({counts['rgb']} {rgb_topic} and "
                f"{counts['thermal']} {thermal_topic} messages); check the topics and --slop")
        for match in matcher.windows:
            pairs.add(f"{os.path.basename(os.path.normpath(path))}@{match.thermal.stamp_ns}", match.rgb_image(motion),
                      _thermal_from_frame(match.thermal))
        gaps = sorted(match.gap for match in matcher.windows)
        pairs.described.append(f"{path} ({len(gaps)} of {matcher.matched} pairs, stamps apart by at most "
                               f"{gaps[-1] / 1e6:.1f} ms, median {gaps[len(gaps) // 2] / 1e6:.1f} ms"
                               f"{', RGB moved to the thermal stamps' if motion else ''})")
    return pairs


def _find_parameter(node: Any) -> Any:
    if isinstance(node, dict):
        if PARAMETER in node:
            return node[PARAMETER]
        for value in node.values():
            found = _find_parameter(value)
            if found is not None:
                return found
    return None


def read_prior(value: str, thermal_size: Sequence[int], rgb_size: Sequence[int]) -> np.ndarray:
    """A prior homography from 9 numbers, a text file of 9 numbers or a parameters YAML.

    Identity means "same field of view" (the node resizes thermal onto the RGB grid), so it
    becomes the resize map between the two image sizes.
    """
    from rgbt_perception.core.registration import parse_homography, read_homography_file

    text = value.strip()
    if os.path.exists(text):
        if text.lower().endswith((".yaml", ".yml")):
            import yaml

            try:
                with open(text, encoding="utf-8") as handle:
                    found = _find_parameter(yaml.safe_load(handle))
            except (OSError, yaml.YAMLError) as exc:
                reason = " ".join(str(exc).split())
                raise CalibrationInputError(f"cannot read parameters file {text}: {reason}") from None
            if found is None:
                raise CalibrationInputError(f"parameters file {text} holds no {PARAMETER}")
            try:
                matrix = parse_homography(found)
            except ValueError as exc:
                raise CalibrationInputError(f"parameters file {text}: {PARAMETER}: {exc}") from None
        else:
            try:
                matrix = read_homography_file(text)
            except ValueError as exc:
                raise CalibrationInputError(str(exc)) from None
    else:
        tokens = [t for t in re.split(r"[\s,;\[\]]+", text) if t]
        try:
            matrix = parse_homography([float(t) for t in tokens])
        except ValueError as exc:
            raise CalibrationInputError(f"--init {value!r} is neither an existing file nor 9 numbers: {exc}") from None
    matrix = matrix / matrix[2, 2]
    if np.allclose(matrix.ravel(), IDENTITY, atol=1e-12):
        return ft.same_view_homography(thermal_size, rgb_size)
    return matrix


def parameters_yaml(homography: np.ndarray, comment: str = "") -> str:
    """The node's parameters file with ``thermal_to_rgb`` set (``/**/rgbt_perception``)."""
    matrix = np.asarray(homography, np.float64)
    matrix = matrix / matrix[2, 2]
    numbers = ", ".join(repr(float(f"{v:.10g}")) for v in matrix.ravel())
    lines = [f"# {line}" for line in comment.splitlines() if line.strip()]
    lines += [f"/**/{NODE_NAME}:", "  ros__parameters:", f"    {PARAMETER}: [{numbers}]", ""]
    return "\n".join(lines)


def write_parameters(path: str, homography: np.ndarray, comment: str = "") -> None:
    """Write :func:`parameters_yaml` atomically (a reader never sees half a file)."""
    from rgbt_perception.io.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(parameters_yaml(homography, comment))
