"""Preprocessing (thermal scaling, model inputs, validation) and overlay drawing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbt_perception.core.overlay import blend_overlay, colorize_mask, draw_detections, palette_lut
from rgbt_perception.core.preprocess import (
    InputBuffers,
    ThermalScaling,
    scale_thermal,
    thermal_percentiles,
    to_model_arrays,
    to_model_inputs,
)
from rgbt_perception.inference import Detection


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


def _percentile_reference(thermal: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The definition the histogram must reproduce: np.percentile of the nonzero counts."""
    seen = thermal[thermal > 0]
    values = np.percentile(seen if seen.size else thermal, (low, high))
    return float(values[0]), float(values[1])


def test_histogram_percentiles_equal_numpy_percentile_exactly():
    rng = np.random.default_rng(7)
    cases = 0
    for dtype, top in ((np.uint8, 256), (np.uint16, 65536), (np.uint16, 40)):
        for trial in range(150):
            height, width = (int(v) for v in rng.integers(1, 60, 2))
            thermal = rng.integers(0, top, (height, width)).astype(dtype)
            if trial % 5 == 0:
                thermal[:, : width // 2] = 0  # registration border
            if trial % 17 == 0:
                thermal[:] = 0  # nothing seen
            low, high = sorted(float(v) for v in rng.uniform(0, 100, 2))
            for q in ((1.0, 99.0), (0.0, 100.0), (low, high)):
                assert thermal_percentiles(thermal, *q) == _percentile_reference(thermal, *q), (dtype, q)
                cases += 1
    # Views (a crop of a larger frame) and float thermal take the same definition.
    frame = rng.integers(0, 65536, (50, 70)).astype(np.uint16)
    assert thermal_percentiles(frame[5:40, 3:60], 2.0, 98.0) == _percentile_reference(frame[5:40, 3:60], 2.0, 98.0)
    radiometric = rng.normal(300.0, 5.0, (20, 30)).astype(np.float32)
    assert thermal_percentiles(radiometric, 1.0, 99.0) == _percentile_reference(radiometric, 1.0, 99.0)
    assert cases == 1350


def test_model_arrays_equal_the_tensors_and_reuse_their_buffers():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    thermal = rng.integers(20000, 40000, (45, 61), dtype=np.uint16)
    scaling = ThermalScaling()
    buffers = InputBuffers()
    rgb_a, thermal_a = to_model_arrays(rgb, thermal, (64, 96), scaling, buffers)
    rgb_t, thermal_t = to_model_inputs(rgb, thermal, (64, 96), scaling)
    assert np.array_equal(rgb_a, rgb_t.numpy()) and np.array_equal(thermal_a, thermal_t.numpy())
    first = (rgb_a.ctypes.data, thermal_a.ctypes.data)
    other = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    rgb_b, thermal_b = to_model_arrays(other, thermal, (64, 96), scaling, buffers)
    assert (rgb_b.ctypes.data, thermal_b.ctypes.data) == first  # the same memory, frame after frame
    assert np.array_equal(rgb_b, to_model_inputs(other, None, (64, 96))[0].numpy())
    # Another batch slot, or a new input size, gets its own arrays.
    rgb_c, _ = to_model_arrays(rgb, None, (64, 96), scaling, buffers, slot=1)
    assert rgb_c.ctypes.data != first[0]
    rgb_d, _ = to_model_arrays(rgb, None, (32, 32), scaling, buffers)
    assert rgb_d.shape == (1, 3, 32, 32)
    # The tensors of to_model_inputs own fresh memory (training keeps them in batches).
    again, _ = to_model_inputs(rgb, None, (64, 96))
    assert again.data_ptr() != rgb_t.data_ptr()


def test_scale_thermal_writes_into_a_given_array():
    thermal = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    out = np.full((3, 4), -1.0, np.float32)
    result = scale_thermal(thermal, ThermalScaling("fixed", 0.0, 11000.0), out=out)
    assert result is out and np.allclose(out, np.arange(12).reshape(3, 4) / 11.0)
    with pytest.raises(ValueError, match="out must be float32"):
        scale_thermal(thermal, ThermalScaling(), out=np.zeros((3, 4), np.float64))
