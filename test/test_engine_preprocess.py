"""Preprocessing (thermal scaling, model inputs, validation) and overlay drawing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbt_perception.inference import Detection
from rgbt_perception.core.overlay import blend_overlay, colorize_mask, draw_detections, palette_lut
from rgbt_perception.core.preprocess import ThermalScaling, scale_thermal, to_model_inputs


def test_thermal_scaling_round_trip_and_validation():
    for scaling in (ThermalScaling(), ThermalScaling("fixed", 27000.0, 33000.0)):
        assert ThermalScaling.from_dict(scaling.to_dict()) == scaling
    with pytest.raises(ValueError, match="mode"):
        ThermalScaling("agc")
    with pytest.raises(ValueError, match="low < high"):
        ThermalScaling("fixed", 5.0, 5.0)
    with pytest.raises(ValueError, match="finite"):
        ThermalScaling("fixed", float("nan"), 5.0)
    with pytest.raises(ValueError, match="0..100"):
        ThermalScaling("percentile", 1.0, 150.0)
    with pytest.raises(ValueError, match="unknown keys"):
        ThermalScaling.from_dict({"mode": "fixed", "low": 0, "high": 1, "gain": 2})


def test_fixed_scaling_maps_the_range_and_clips():
    thermal = np.array([[26000, 27000, 30000], [33000, 40000, 0]], dtype=np.uint16)
    scaled = scale_thermal(thermal, ThermalScaling("fixed", 27000, 33000))
    assert scaled.dtype == np.float32
    assert np.allclose(scaled, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.0]])


def test_percentile_scaling_ignores_outliers():
    rng = np.random.default_rng(0)
    thermal = rng.integers(28000, 30000, (100, 100)).astype(np.uint16)
    thermal[0, :5] = 65535  # a few dead-hot pixels must not flatten the frame
    scaled = scale_thermal(thermal, ThermalScaling("percentile", 1.0, 99.0))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert 0.4 < float(np.median(scaled)) < 0.6
    flat = scale_thermal(np.full((8, 8), 500, np.uint16), ThermalScaling())
    assert np.array_equal(flat, np.zeros((8, 8), np.float32))


def test_percentile_scaling_ignores_the_unseen_border():
    rng = np.random.default_rng(1)
    thermal = rng.integers(28000, 30000, (100, 100)).astype(np.uint16)
    bordered = thermal.copy()
    bordered[:, :30] = 0  # registration's border: the thermal camera saw nothing there
    scaling = ThermalScaling("percentile", 1.0, 99.0)
    inside = scale_thermal(bordered, scaling)[:, 30:]
    np.testing.assert_allclose(inside, scale_thermal(thermal[:, 30:], scaling), atol=1e-6)
    assert 0.4 < float(np.median(inside)) < 0.6


@pytest.mark.parametrize("thermal_dtype", [np.uint8, np.uint16])
def test_to_model_inputs_shapes_and_ranges(thermal_dtype):
    rgb = np.zeros((37, 53, 3), np.uint8)
    rgb[..., 0] = 255
    high = 255 if thermal_dtype == np.uint8 else 65535
    thermal = np.random.default_rng(1).integers(0, high, (37, 53)).astype(thermal_dtype)
    rgb_t, thermal_t = to_model_inputs(rgb, thermal, (64, 96), ThermalScaling())
    assert rgb_t.shape == (1, 3, 64, 96) and rgb_t.dtype == torch.float32
    assert thermal_t.shape == (1, 1, 64, 96) and thermal_t.dtype == torch.float32
    assert torch.all(rgb_t[:, 0] == 1.0) and torch.all(rgb_t[:, 1:] == 0.0)
    assert float(thermal_t.min()) >= 0.0 and float(thermal_t.max()) <= 1.0 and float(thermal_t.std()) > 0.1

    rgb_only, none = to_model_inputs(rgb, None, (64, 96))
    assert none is None and rgb_only.shape == (1, 3, 64, 96)
    none, thermal_only = to_model_inputs(None, thermal[:, :, None], (32, 32))
    assert none is None and thermal_only.shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    "rgb,thermal,problem",
    [
        (None, None, "both rgb and thermal are missing"),
        (np.zeros((8, 8, 3), np.float32), None, "rgb must be uint8"),
        (np.zeros((8, 8), np.uint8), None, "rgb must be HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), None, "rgb has zero size"),
        (None, np.zeros((8, 8), np.int16), "thermal must be uint8, uint16 or float32"),
        (None, np.zeros((8, 0), np.uint16), "thermal has zero size"),
        (None, np.full((8, 8), np.inf, np.float32), "thermal has non-finite values"),
        ([[1, 2, 3]], None, "rgb must be a numpy array"),
    ],
)
def test_bad_inputs_name_the_problem(rgb, thermal, problem):
    with pytest.raises(ValueError, match=problem):
        to_model_inputs(rgb, thermal, (32, 32))


def test_overlay_colours_and_boxes():
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    colours = colorize_mask(mask, palette)
    assert colours.tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 0]]]
    assert np.array_equal(colorize_mask(mask, palette_lut(palette)), colours)

    image = np.full((2, 2, 3), 100, np.uint8)
    blended = blend_overlay(image, mask, palette, alpha=0.5)
    assert np.abs(blended[0, 1].astype(float) - [177.5, 50.0, 50.0]).max() <= 0.5
    with pytest.raises(ValueError, match="does not match"):
        blend_overlay(np.zeros((3, 3, 3), np.uint8), mask, palette)

    canvas = np.zeros((60, 80, 3), np.uint8)
    box = Detection(class_id=2, label="person", score=0.9, x_min=20, y_min=20, x_max=50, y_max=45)
    drawn = draw_detections(canvas, [box], palette)
    assert canvas.max() == 0  # the input is not drawn on
    assert drawn[30, 20].tolist() == [0, 255, 0] and drawn[45, 35].tolist() == [0, 255, 0]
    assert drawn[35, 35].tolist() == [0, 0, 0]  # inside stays untouched
