"""Thermal->RGB registration: homography warp geometry, raw counts, validation."""
from __future__ import annotations

import numpy as np
import pytest

from rgbt_perception.core.registration import parse_homography, read_homography_file, warp_thermal_to_rgb


def _hot_blob(shape: tuple[int, int], centre: tuple[float, float], radius: float, value: int, dtype) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 1000 if dtype == np.uint16 else 10, dtype=dtype)
    image[(xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2] = value
    return image


def _hot_centroid(image: np.ndarray, threshold: float) -> tuple[float, float]:
    ys, xs = np.nonzero(image > threshold)
    return float(xs.mean()), float(ys.mean())


def _apply(matrix: np.ndarray, x: float, y: float) -> tuple[float, float]:
    px, py, pw = matrix @ np.array([x, y, 1.0])
    return px / pw, py / pw


@pytest.mark.parametrize("dtype,value", [(np.uint16, 40000), (np.uint8, 250)])
def test_blob_lands_where_the_homography_sends_it(dtype, value):
    thermal = _hot_blob((120, 160), centre=(50.0, 40.0), radius=6, value=value, dtype=dtype)
    # Scale 2x, shift, slight rotation and a perspective term: thermal 160x120 -> RGB 360x260.
    angle = np.deg2rad(5.0)
    matrix = np.array(
        [
            [2.0 * np.cos(angle), -2.0 * np.sin(angle), 30.0],
            [2.0 * np.sin(angle), 2.0 * np.cos(angle), 12.0],
            [1e-4, 0.0, 1.0],
        ]
    )
    warped = warp_thermal_to_rgb(thermal, matrix, (260, 360))
    assert warped.shape == (260, 360) and warped.dtype == dtype
    expected = _apply(matrix, 50.0, 40.0)
    got = _hot_centroid(warped, threshold=(int(value) + 10) / 2)
    assert abs(got[0] - expected[0]) < 1.0 and abs(got[1] - expected[1]) < 1.0
    # Raw counts kept: the blob's plateau carries the exact 16-bit value, the background its own.
    x, y = (int(round(v)) for v in expected)
    assert int(warped[y, x]) == value
    bx, by = (int(round(v)) for v in _apply(matrix, 120.0, 90.0))
    assert int(warped[by, bx]) == int(thermal[90, 120])
    # Outside the thermal view the border is 0.
    assert int(warped[0, 0]) == 0


def test_none_homography_resizes_to_the_rgb_grid():
    thermal = _hot_blob((60, 80), centre=(20.0, 30.0), radius=4, value=30000, dtype=np.uint16)
    warped = warp_thermal_to_rgb(thermal, None, (120, 160))
    assert warped.shape == (120, 160) and warped.dtype == np.uint16
    cx, cy = _hot_centroid(warped, 15000)
    # Pixel centres scale as (x + 0.5) * 2 - 0.5.
    assert abs(cx - 40.5) < 1.0 and abs(cy - 60.5) < 1.0
    same = warp_thermal_to_rgb(thermal[:, :, None], None, (60, 80))
    assert np.array_equal(same, thermal)


def test_identity_homography_keeps_the_image():
    thermal = np.random.default_rng(0).integers(0, 65535, (40, 50), dtype=np.uint16)
    assert np.array_equal(warp_thermal_to_rgb(thermal, np.eye(3), (40, 50)), thermal)


@pytest.mark.parametrize(
    "values,problem",
    [
        ([1, 0, 0, 0, 1, 0, 0, 0], "9 numbers"),
        ([[1, 0], [0, 1]], "9 numbers"),
        ([1, 0, 0, 0, float("nan"), 0, 0, 0, 1], "non-finite"),
        ([1, 0, 0, 0, 1, 0, 0, 0, float("inf")], "non-finite"),
        ([1, 2, 3, 2, 4, 6, 0, 0, 1], "singular"),
        (np.zeros((3, 3)), "singular"),
        (["a", "b", "c", 0, 0, 0, 0, 0, 1], "9 numbers"),
    ],
)
def test_parse_homography_names_the_problem(values, problem):
    with pytest.raises(ValueError, match=problem):
        parse_homography(values)


def test_parse_homography_accepts_flat_and_matrix():
    flat = [2, 0, 5, 0, 2, 7, 0, 0, 1]
    assert np.array_equal(parse_homography(flat), np.asarray(flat, dtype=np.float64).reshape(3, 3))
    assert parse_homography(np.eye(3)).dtype == np.float64


def test_read_homography_file(tmp_path):
    good = tmp_path / "h.txt"
    good.write_text("# thermal -> rgb\n2.0, 0, 5\n0 2.0 7\n0 0 1\n")
    assert np.allclose(read_homography_file(good), [[2, 0, 5], [0, 2, 7], [0, 0, 1]])
    bad = tmp_path / "bad.txt"
    bad.write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="bad.txt.*9 numbers"):
        read_homography_file(bad)
    words = tmp_path / "words.txt"
    words.write_text("one two three")
    with pytest.raises(ValueError, match="non-numeric"):
        read_homography_file(words)
    with pytest.raises(ValueError, match="cannot read"):
        read_homography_file(tmp_path / "absent.txt")


def test_bad_thermal_and_size_are_rejected():
    with pytest.raises(ValueError, match="uint8, uint16 or float32"):
        warp_thermal_to_rgb(np.zeros((4, 4), dtype=np.int32), None, (4, 4))
    with pytest.raises(ValueError, match="HxW"):
        warp_thermal_to_rgb(np.zeros((4, 4, 3), dtype=np.uint8), None, (4, 4))
    with pytest.raises(ValueError, match="zero size"):
        warp_thermal_to_rgb(np.zeros((0, 4), dtype=np.uint8), None, (4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        warp_thermal_to_rgb(np.full((4, 4), np.nan, dtype=np.float32), None, (4, 4))
    with pytest.raises(ValueError, match="rgb_size must be positive"):
        warp_thermal_to_rgb(np.zeros((4, 4), dtype=np.uint8), None, (0, 4))
