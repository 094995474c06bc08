"""Reading RGB and thermal image files and pairing them by name.

Shared by ``rgbt-infer``, the data set loaders and calibration: 8-bit colour as RGB, thermal
kept at its stored bit depth (8 or 16 bit), folders paired by file stem. Every failure raises
:class:`DatasetError` naming the file.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from rgbt_perception.core.classes import IGNORE_INDEX

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A data set on disk is incomplete or inconsistent; the message names the file."""


def read_image(path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image file as stored (8 or 16 bit, 1, 3 or 4 channels); errors name the file."""
    if not os.path.isfile(path):
        raise DatasetError(f"missing file: {path}")
    image = cv2.imread(path, flags)
    if image is None:
        raise DatasetError(f"unreadable image (not a valid PNG/JPEG?): {path}")
    return image


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB from an 8-bit colour (BGR/BGRA on disk) or grey file."""
    image = read_image(path)
    if image.dtype != np.uint8:
        raise DatasetError(f"RGB image must be 8-bit, got {image.dtype}: {path}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])


def read_thermal(path: str, channel: int | None = None) -> np.ndarray:
    """HxW uint8/uint16 thermal counts; ``channel`` selects one channel of a multi-channel file
    (MFNet stores thermal as the 4th channel: index 3 of OpenCV's BGRA)."""
    image = read_image(path)
    if image.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"thermal image must be 8- or 16-bit, got {image.dtype}: {path}")
    if channel is not None:
        if image.ndim != 3 or image.shape[2] <= channel:
            channels = 1 if image.ndim == 2 else image.shape[2]
            raise DatasetError(f"expected a thermal channel {channel} but the image has {channels} channel(s): {path}")
        return np.ascontiguousarray(image[:, :, channel])
    if image.ndim == 3:
        # Colour-mapped or replicated grey thermal: all channels carry the same counts.
        return np.ascontiguousarray(image[:, :, 0])
    return image


def read_label(path: str) -> np.ndarray:
    """HxW uint8 class indices (255 = ignore)."""
    image = read_image(path)
    if image.ndim == 3:
        # Some releases store labels as replicated 3-channel images.
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        if image.max(initial=0) > IGNORE_INDEX:
            raise DatasetError(f"label values must fit 0..255, got max {int(image.max())}: {path}")
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def read_split_file(path: str) -> list[str]:
    """Frame stems listed one per line (extensions and blank lines ignored)."""
    if not os.path.isfile(path):
        raise DatasetError(f"missing split file: {path}")
    with open(path, encoding="utf-8") as f:
        stems = [os.path.splitext(line.strip())[0] for line in f if line.strip()]
    if not stems:
        raise DatasetError(f"split file lists no frames: {path}")
    return stems


def list_images(folder: str) -> dict[str, str]:
    """Stem -> path of the image files in ``folder``; two files with one stem are an error."""
    found: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        path = os.path.join(folder, entry)
        if stem in found:
            raise DatasetError(f"two files for frame {stem!r}: {found[stem]} and {path}")
        found[stem] = path
    return found


def find_image(folder: str, stem: str) -> str:
    """Path of the image for ``stem`` in ``folder``; the error names the expected file."""
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"missing file: {os.path.join(folder, stem + '.png')} (frame {stem!r})")


def pair_folders(folders: dict[str, str], required: Sequence[str]) -> dict[str, dict[str, str]]:
    """Pair files by stem across ``folders`` (role -> folder). Every stem must exist in each
    ``required`` role; a file without its partners is an error naming it."""
    listings = {role: list_images(folder) for role, folder in folders.items()}
    stems = sorted(set().union(*(listing.keys() for listing in listings.values())))
    pairs: dict[str, dict[str, str]] = {}
    for stem in stems:
        present = {role: listing[stem] for role, listing in listings.items() if stem in listing}
        missing = [role for role in required if role not in present]
        if missing:
            some_file = next(iter(present.values()))
            raise DatasetError(
                f"unpaired file {some_file}: no {', '.join(missing)} image for frame {stem!r} "
                f"(looked in {', '.join(folders[r] for r in missing)})"
            )
        pairs[stem] = present
    if not pairs:
        raise DatasetError(f"no images found in {', '.join(folders.values())}")
    return pairs
