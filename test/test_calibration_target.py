"""Target mode: a heated checkerboard (inverted, reduced contrast in thermal) on synthetic rigs."""
from __future__ import annotations

import numpy as np
import pytest

from rgbt_perception.calibration import BoardOptions, CalibrationRefused, estimate_checkerboard
from rgbt_perception.calibration import synthetic as sy
from rgbt_perception.calibration.features import corner_error, project
from rgbt_perception.calibration.target import find_corners

THERMAL = (512, 640)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_board_views_give_the_homography_within_2_px(seed):
    rig = sy.random_rig(seed)
    views = sy.board_pairs(rig, 5, pattern=(7, 5), seed=seed)
    result = estimate_checkerboard([v[0] for v in views], [v[1] for v in views],
                                   options=BoardOptions(pattern=(7, 5)))
    error = corner_error(result.homography, rig.homography, THERMAL)
    assert error < 2.0, f"corner error {error:.2f} px"
    assert result.pairs_supporting == 5 and result.inliers == 5 * 35
    assert result.residual_px < 0.6
    assert 0.3 < result.coverage < 1.0
    assert result.corner_sigma_px < 1.0


def test_corner_order_follows_the_rgb_board_even_when_thermal_starts_elsewhere():
    rig = sy.random_rig(3)
    rgb, thermal = sy.board_pairs(rig, 1, pattern=(6, 4), seed=4)[0]
    rgb_corners = find_corners(rgb, (6, 4))
    thermal_corners = find_corners(thermal, (6, 4))
    assert rgb_corners.shape == thermal_corners.shape == (24, 2)
    views = sy.board_pairs(rig, 4, pattern=(6, 4), seed=4)
    result = estimate_checkerboard([v[0] for v in views], [v[1] for v in views], options=BoardOptions(pattern=(6, 4)))
    # Each thermal corner lands on its RGB corner (not the one diagonally opposite).
    mapped = project(result.homography, thermal_corners)
    nearest = np.min(np.linalg.norm(mapped[:, None] - rgb_corners[None], axis=2), axis=1)
    assert float(nearest.max()) < 1.0


def test_8_bit_thermal_board():
    rig = sy.random_rig(5)
    views = sy.board_pairs(rig, 4, seed=5)
    result = estimate_checkerboard([v[0] for v in views], [sy.to_8bit(v[1]) for v in views])
    assert corner_error(result.homography, rig.homography, THERMAL) < 2.0


def test_board_not_found_is_a_refusal_naming_the_counts():
    rig = sy.random_rig(1)
    road = sy.road_pairs(rig, 3, seed=1)
    with pytest.raises(CalibrationRefused, match=r"not found in both cameras: found in RGB in 0 .* 3 pairs"):
        estimate_checkerboard([p[0] for p in road], [p[1] for p in road], options=BoardOptions(pattern=(7, 5)))


def test_wrong_pattern_is_a_refusal():
    rig = sy.random_rig(2)
    views = sy.board_pairs(rig, 2, pattern=(7, 5), seed=2)
    with pytest.raises(CalibrationRefused, match="check --pattern"):
        estimate_checkerboard([v[0] for v in views], [v[1] for v in views], options=BoardOptions(pattern=(9, 6)))


def test_a_single_central_view_is_refused_as_too_uncertain_at_the_corners():
    rig = sy.random_rig(0)
    rng = np.random.default_rng(0)
    reflectance, temperature = sy.board_scene(rng, (7, 5), rig.rgb_size, where=(0.5, 0.5))
    rgb, thermal = sy.render_pair(rng, reflectance, temperature, rig)
    with pytest.raises(CalibrationRefused, match="uncertain by .* move the board towards the image corners"):
        estimate_checkerboard([rgb], [thermal], options=BoardOptions(pattern=(7, 5), max_corner_sigma_px=0.5))
