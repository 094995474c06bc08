"""Targetless calibration on synthetic rigs with a known thermal->RGB homography.

Rigs: thermal 512x640 16-bit, RGB 480x640, with zoom, roll, shift and a little perspective.
Scenes: the project's synthetic road scenes (training.synth: day, night, fog, glare) and the
calibration package's own (day, night, fog). The error is the largest distance between
where the estimate and the truth put the thermal image's corners on the RGB image.
"""
from __future__ import annotations

import numpy as np
import pytest

from rgbt_perception.calibration import CalibrationRefused, TargetlessOptions, estimate_targetless
from rgbt_perception.calibration import synthetic as sy
from rgbt_perception.calibration.features import corner_error, same_view_homography
from training.synth.scenes import Rig, SynthConfig, render_frame

THERMAL, RGB = (512, 640), (480, 640)


def training_pairs(homography: np.ndarray, count: int, conditions, seed: int):
    """Road scenes of training.synth seen by a rig with ``homography``."""
    cfg = SynthConfig(size=RGB, thermal_size=THERMAL)
    rng = np.random.default_rng(seed)
    rig = Rig(homography=homography, column_offsets=rng.normal(0, 4, THERMAL[1]).astype(np.float32))
    frames = [render_frame(rng, cfg, rig, conditions[k % len(conditions)]) for k in range(count)]
    return [f.rgb for f in frames], [f.thermal16 for f in frames]


@pytest.mark.long
@pytest.mark.parametrize("rig_kwargs", [
    dict(zoom=1.1, roll_deg=1.5, shift_px=(15, -10), perspective=(2e-5, -1e-5)),
    dict(zoom=0.88, roll_deg=-2.5, shift_px=(-25, 20), perspective=(-2e-5, 3e-5), square_pixels=True),
])
def test_training_road_scenes_day_and_night_within_4_px(rig_kwargs):
    truth = sy.rig_homography(RGB, THERMAL, **rig_kwargs)
    rgb, thermal = training_pairs(truth, 10, ["day", "night", "fog", "glare", "night"], seed=7)
    start_error = corner_error(same_view_homography(THERMAL, RGB), truth, THERMAL)
    result = estimate_targetless(rgb, thermal)
    error = corner_error(result.homography, truth, THERMAL)
    assert start_error > 20.0  # the rig is far from "same field of view"
    assert error < 4.0, f"corner error {error:.2f} px"
    assert result.pairs_supporting >= 8
    assert result.residual_px < 1.0
    # The stated uncertainty is of the order of the real error, not hiding it.
    assert result.corner_sigma_px < 2.0 and error < 10 * result.corner_sigma_px + 1.0


@pytest.mark.long
def test_night_only_own_scenes_within_4_px():
    rig = sy.random_rig(11)
    pairs = sy.road_pairs(rig, 8, conditions=("night",), seed=3)
    result = estimate_targetless([p[0] for p in pairs], [p[1] for p in pairs], names=[f"n{k}" for k in range(8)])
    assert corner_error(result.homography, rig.homography, THERMAL) < 4.0
    assert [p.name for p in result.pairs][:2] == ["n0", "n1"]
    assert all(p.supporting for p in result.pairs)


def test_8_bit_thermal_and_a_prior_without_search():
    rig = sy.random_rig(4)
    pairs = sy.road_pairs(rig, 8, seed=9)
    prior = np.array([[1, 0, 6.0], [0, 1, -5.0], [0, 0, 1]]) @ rig.homography  # a knocked camera
    result = estimate_targetless([p[0] for p in pairs], [sy.to_8bit(p[1]) for p in pairs], start=prior,
                                 options=TargetlessOptions(search=False))
    assert corner_error(result.homography, rig.homography, THERMAL) < 4.0
    assert corner_error(result.start, prior, THERMAL) < 1e-9


def test_pairs_where_one_camera_shows_nothing_are_set_aside():
    rig = sy.random_rig(6)
    pairs = sy.road_pairs(rig, 5, seed=2)
    rgb = [p[0] for p in pairs] + [np.full((480, 640, 3), 3, np.uint8)] * 2
    thermal = [p[1] for p in pairs] + [p[1] for p in pairs[:2]]
    result = estimate_targetless(rgb, thermal)
    assert result.pairs_total == 7 and result.pairs_with_structure == 5
    assert corner_error(result.homography, rig.homography, THERMAL) < 4.0


def refusal(rgb, thermal, **kwargs) -> str:
    with pytest.raises(CalibrationRefused) as info:
        estimate_targetless(rgb, thermal, **kwargs)
    return str(info.value)


def test_refuses_without_shared_structure():
    rng = np.random.default_rng(0)
    rgb = [sy.road_pairs(sy.random_rig(1), 1, seed=k)[0][0] for k in range(4)]
    flat = [(7000 + rng.integers(0, 12, THERMAL)).astype(np.uint16) for _ in range(4)]
    assert "too little shared structure: 0 of 4 pairs" in refusal(rgb, flat)


def test_refuses_mismatched_pairs():
    rig = sy.random_rig(2)
    pairs = sy.road_pairs(rig, 5, seed=5)
    rgb = [p[0] for p in pairs]
    thermal = [p[1] for p in pairs[1:] + pairs[:1]]  # every thermal frame belongs to another scene
    assert "no consistent alignment" in refusal(rgb, thermal)


def test_refuses_structure_along_one_axis_only():
    pairs = sy.horizon_pairs(sy.random_rig(9), 6, seed=1)
    assert "does not fix the x direction" in refusal([p[0] for p in pairs], [p[1] for p in pairs])


def test_refuses_too_few_pairs_and_rejects_mixed_sizes():
    rig = sy.random_rig(3)
    pairs = sy.road_pairs(rig, 2, seed=1)
    assert "at least 3 needed" in refusal([p[0] for p in pairs], [p[1] for p in pairs])
    with pytest.raises(ValueError, match="one calibration is for one camera pair"):
        estimate_targetless([pairs[0][0], pairs[1][0][:400]], [pairs[0][1], pairs[1][1]])
