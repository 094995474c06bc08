"""Raw data-set samples -> training tensors, with pair-consistent augmentation.

The thermal frame is first registered onto the RGB grid (``warp_thermal_to_rgb`` with the
sample's homography). Geometric augmentation (horizontal flip, random scale and crop) is one
affine map applied to RGB, thermal, label and boxes alike; photometric jitter (brightness,
contrast, saturation, hue) touches RGB only. Tensors come from the shared
``rgbt_perception.core.preprocess`` functions, so training sees what the inference engine sees.

Output of ``PairTransform`` (and of ``TransformedDataset``)::

    {"rgb": 3,H,W float32 [0,1], "thermal": 1,H,W float32 [0,1],
     "label": H,W int64 (255 = ignore), "has_mask": bool, "boxes": N,4 float32 xyxy input px,
     "box_labels": N int64, "condition": str | None, "name": str}

``has_mask`` is False for a sample that came without a label (the box-only detection sets, or
label-free frames): its ``label`` is all ignore and the criterion leaves it out of the
segmentation losses (``collate`` stacks the flags into a ``B`` bool tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from rgbt_perception.core.classes import IGNORE_INDEX
from rgbt_perception.core.preprocess import ThermalScaling, to_model_inputs
from rgbt_perception.core.registration import check_size, warp_thermal_to_rgb

Sample = dict[str, Any]


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges. ``scale_range`` multiplies the input size before the crop
    (below 1 the image shrinks and the rest is padded: RGB/thermal 0, label 255)."""

    hflip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.75, 1.5)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    min_box_size: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {self.hflip_prob}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} jitter must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue jitter must lie in [0, 0.5] (fraction of a turn), got {self.hue}")


class PairTransform:
    """Register, augment (when ``augment`` is given) and convert one sample.

    Args:
        input_size: network input ``(H, W)``.
        scaling: thermal count scaling (the one stored in the weights metadata).
        augment: augmentation ranges, or ``None`` for evaluation (resize only; the tensors then
            equal ``to_model_inputs`` of the registered pair, exactly as at inference).
        seed: seeds the generator used when a call passes none.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        scaling: ThermalScaling = ThermalScaling(),
        augment: AugmentConfig | None = AugmentConfig(),
        seed: int = 0,
    ) -> None:
        self.input_size = check_size(input_size, "input_size")
        self.scaling = scaling
        self.augment = augment
        self._rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample, rng: np.random.Generator | int | None = None) -> Sample:
        if rng is None:
            rng = self._rng
        elif not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        rgb = sample["rgb"]
        height, width = rgb.shape[:2]
        out_h, out_w = self.input_size
        thermal = warp_thermal_to_rgb(sample["thermal"], sample.get("homography"), (height, width))
        label = sample.get("label")
        has_mask = label is not None
        if label is None:
            label = np.full((height, width), IGNORE_INDEX, np.uint8)
        boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        box_labels = np.asarray(sample.get("box_labels", np.zeros((0,))), np.int64).reshape(-1)

        if self.augment is None:
            rgb_t, thermal_t = to_model_inputs(rgb, thermal, self.input_size, self.scaling)
            label = cv2.resize(label, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
            boxes = boxes * np.asarray([out_w / width, out_h / height] * 2, np.float32)
        else:
            rgb, thermal, label, boxes, box_labels, scaling = self._augment(rng, rgb, thermal, label, boxes, box_labels)
            rgb_t, thermal_t = to_model_inputs(rgb, thermal, self.input_size, scaling)
        return {
            "rgb": rgb_t[0],
            "thermal": thermal_t[0],
            "label": torch.from_numpy(label.astype(np.int64)),
            "has_mask": has_mask,
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4),
            "box_labels": torch.from_numpy(np.ascontiguousarray(box_labels, np.int64)),
            "condition": sample.get("condition"),
            "name": sample.get("name", ""),
        }

    def _augment(self, rng, rgb, thermal, label, boxes, box_labels):
        aug = self.augment
        height, width = rgb.shape[:2]
        out_h, out_w = self.input_size
        # Percentile gain is fixed on the whole registered frame at input size (what inference
        # sees), so crops and padding change geometry only, never the thermal grey levels.
        scaling = self.scaling
        if scaling.mode == "percentile":
            whole = cv2.resize(thermal, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            low, high = np.percentile(whole, (scaling.low, scaling.high))
            scaling = ThermalScaling(mode="fixed", low=float(low), high=float(max(high, low + 1e-3)))

        scale = rng.uniform(*aug.scale_range)
        flip = rng.random() < aug.hflip_prob
        # Continuous coordinates (pixel i spans [i, i+1)): u_out = sx * u_in + tx.
        sx, sy = scale * out_w / width, scale * out_h / height
        scaled_w, scaled_h = sx * width, sy * height
        tx = -rng.uniform(min(0.0, scaled_w - out_w), max(0.0, scaled_w - out_w))
        ty = -rng.uniform(min(0.0, scaled_h - out_h), max(0.0, scaled_h - out_h))
        if flip:
            sx, tx = -sx, out_w - tx

        # Shrinking by more than 2x through bilinear warping aliases: pre-shrink by area first.
        shrink = min(abs(sx), sy)
        if shrink < 0.5:
            small = (max(1, round(width * abs(sx) * 2)), max(1, round(height * sy * 2)))
            fx, fy = small[0] / width, small[1] / height
            rgb = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
            thermal = cv2.resize(thermal, small, interpolation=cv2.INTER_AREA)
            label = cv2.resize(label, small, interpolation=cv2.INTER_NEAREST)
            sx_img, sy_img = sx / fx, sy / fy
        else:
            sx_img, sy_img = sx, sy
        # Same map in pixel-index coordinates for OpenCV: x_out = sx * x_in + tx + (sx - 1) / 2.
        matrix = np.array([[sx_img, 0.0, tx + 0.5 * sx_img - 0.5], [0.0, sy_img, ty + 0.5 * sy_img - 0.5]])
        size = (out_w, out_h)
        rgb = cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        thermal = cv2.warpAffine(thermal, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
        label = cv2.warpAffine(label, matrix, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=IGNORE_INDEX)

        if len(boxes):
            xs = boxes[:, [0, 2]] * sx + tx
            ys = boxes[:, [1, 3]] * sy + ty
            boxes = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, out_w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, out_h)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= aug.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= aug.min_box_size)
            boxes, box_labels = boxes[keep].astype(np.float32), box_labels[keep]
        rgb = photometric_jitter(rgb, rng, aug)
        return rgb, thermal, label, boxes, box_labels, scaling


def photometric_jitter(rgb: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Random brightness, contrast, saturation and hue of an HxWx3 uint8 RGB image.

    Each change is a 256-entry lookup table on uint8 data, which keeps this cheap at full size.
    """
    brightness = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    saturation = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
    hue_shift = rng.uniform(-aug.hue, aug.hue) * 180.0  # OpenCV's uint8 hue runs 0..179
    levels = np.arange(256, dtype=np.float64)
    mean = float(rgb.mean()) * brightness
    image = cv2.LUT(rgb, _to_lut((levels * brightness - mean) * contrast + mean))
    if saturation != 1.0 or round(hue_shift) != 0:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = cv2.LUT(hsv[:, :, 0], ((levels + round(hue_shift)) % 180).astype(np.uint8))
        hsv[:, :, 1] = cv2.LUT(hsv[:, :, 1], _to_lut(levels * saturation))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return image


def _to_lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


class TransformedDataset:
    """A data set seen through a ``PairTransform``; the random draws of sample ``i`` depend only
    on ``(seed, epoch, i)``, so results do not depend on worker count or order."""

    def __init__(self, dataset: Any, transform: PairTransform, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    @property
    def class_set(self):
        return self.dataset.class_set

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, self.epoch, int(index) % len(self)])
        return self.transform(self.dataset[index], rng)


def collate(batch: Sequence[Sample]) -> Sample:
    """Stack transformed samples: ``rgb`` B,3,H,W, ``thermal`` B,1,H,W, ``label`` B,H,W,
    ``has_mask`` B bool; boxes, box labels, conditions and names stay per-sample lists."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    return {
        "rgb": torch.stack([s["rgb"] for s in batch]),
        "thermal": torch.stack([s["thermal"] for s in batch]),
        "label": torch.stack([s["label"] for s in batch]),
        "has_mask": torch.tensor([bool(s.get("has_mask", True)) for s in batch], dtype=torch.bool),
        "boxes": [s["boxes"] for s in batch],
        "box_labels": [s["box_labels"] for s in batch],
        "condition": [s["condition"] for s in batch],
        "name": [s["name"] for s in batch],
    }
