"""The run-time alignment score and monitor, without ROS: a right homography scores high, a
shifted, zoomed or wrong one lowers the score and raises the warning once; it clears on recovery."""
from __future__ import annotations

import time

import numpy as np
import pytest

from rgbt_perception.calibration import synthetic as sy
from rgbt_perception.calibration.alignment import (
    OK,
    WARN,
    AlignmentMonitor,
    AlignmentSample,
    AlignmentSettings,
    alignment_score,
)
from rgbt_perception.calibration.dense import about_centre

THERMAL = (512, 640)


@pytest.fixture(scope="module")
def rig_and_pairs():
    rig = sy.random_rig(2)
    pairs = [(p[0], p[1]) for p in sy.road_pairs(rig, 6, seed=3)]
    return rig, pairs


def shifted(homography: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ homography


def mean_score(pairs, homography) -> float:
    samples = [alignment_score(rgb, thermal, homography) for rgb, thermal in pairs]
    assert all(s.score is not None for s in samples)
    return float(np.mean([s.score for s in samples]))


def test_right_homography_scores_high_and_wrong_ones_lower(rig_and_pairs):
    rig, pairs = rig_and_pairs
    right = mean_score(pairs, rig.homography)
    assert right > 0.85
    for name, wrong in {
        "shifted 8 px": shifted(rig.homography, 8, 0),
        "shifted 16 px": shifted(rig.homography, 0, -16),
        "rolled 2 deg": rig.homography @ about_centre(THERMAL, 1.0, 2.0),
        "same field of view": None,
    }.items():
        assert mean_score(pairs, wrong) < 0.5, name
    assert mean_score(pairs, rig.homography @ about_centre(THERMAL, 1.03, 0.0)) < right - 0.2


def test_score_reports_where_the_thermal_edges_fit_and_its_cost(rig_and_pairs):
    rig, pairs = rig_and_pairs
    sample = alignment_score(*pairs[0], shifted(rig.homography, 10, 0))
    assert sample.offset_px[0] < 0 and abs(sample.offset_px[1]) < 1e-6  # moving thermal back left fits
    assert sample.quadrants >= 2 and 0 < sample.matched < 1
    assert sample.seconds > 0
    aligned = alignment_score(*pairs[0], rig.homography)
    assert aligned.offset_px == (0.0, 0.0) and aligned.matched > sample.matched


def test_thermal_column_stripes_do_not_lower_the_right_homography_score(rig_and_pairs):
    # Microbolometer fixed-pattern noise: every column its own offset (150 counts RMS on a scene
    # spanning about 2500), the same in every frame.
    rig, pairs = rig_and_pairs
    offsets = np.random.default_rng(0).normal(0.0, 150.0, THERMAL[1])
    striped = [(rgb, np.clip(thermal + offsets[None, :], 0, 65535).astype(np.uint16)) for rgb, thermal in pairs]
    assert mean_score(striped, rig.homography) > 0.95
    assert mean_score(striped, shifted(rig.homography, 8, 0)) < 0.5


def test_frames_without_structure_abstain():
    dark = np.full((480, 640, 3), 2, np.uint8)
    flat = np.full(THERMAL, 7000, np.uint16)
    sample = alignment_score(dark, flat, None)
    assert sample.score is None and sample.quadrants == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_monitor_warns_once_after_a_while_and_clears_on_recovery(rig_and_pairs):
    rig, pairs = rig_and_pairs
    # The same rig with the thermal camera knocked 12 px sideways, and later put back.
    knocked = sy.SyntheticRig(shifted(rig.homography, 12, 0))
    knocked_pairs = [(p[0], p[1]) for p in sy.road_pairs(knocked, 4, seed=5)]
    clock = FakeClock()
    monitor = AlignmentMonitor(rig.homography, AlignmentSettings(every_n=3, threshold=0.5, warn_after_s=5.0,
                                                                 recover_after_s=3.0, min_samples=3), clock=clock)
    assert monitor.state == "unknown" and monitor.diagnostics()["alignment_score"] == "n/a"
    assert monitor.status() == (OK, "registration not scored yet (no pair with edges in both cameras so far)")
    # Every 3rd offered pair is kept; update() scores it.
    kept = [monitor.offer(*pairs[k % len(pairs)]) for k in range(6)]
    assert kept == [True, False, False, True, False, False]
    assert monitor.update() == [] and monitor.update() == []  # the second call has nothing pending
    assert monitor.state == "ok" and monitor.scored == 1

    # Knocked: warned once, and only after warn_after_s.
    messages = []
    for step in range(12):
        clock.now += 1.0
        monitor.offer(*knocked_pairs[step % len(knocked_pairs)])
        monitor.offer(*knocked_pairs[(step + 1) % len(knocked_pairs)])
        monitor.offer(*knocked_pairs[(step + 2) % len(knocked_pairs)])
        messages += [(clock.now, m) for m in monitor.update()]
    assert len(messages) == 1
    when, (level, text) = messages[0]
    assert when >= 5.0 and level == WARN and "registration looks off" in text and "rgbt-calibrate" in text
    assert monitor.status()[0] == WARN and "looks off" in monitor.status()[1]
    values = monitor.diagnostics()
    assert values["alignment_state"] == "warn" and values["alignment_warnings"] == "1"
    assert float(values["alignment_score"]) < 0.5
    assert values["alignment_best_shift_px"] != "0.0,0.0"

    # Put back: clears once, after recover_after_s.
    messages = []
    for step in range(15):
        clock.now += 1.0
        for k in range(3):
            monitor.offer(*pairs[(step + k) % len(pairs)])
        messages += monitor.update()
    assert len(messages) == 1 and messages[0][0] == OK and "fine again" in messages[0][1]
    assert monitor.state == "ok" and monitor.diagnostics()["alignment_warnings"] == "1"
    assert monitor.status()[0] == OK

    # A new homography (a new calibration) starts the history afresh.
    monitor.set_homography(rig.homography)
    assert monitor.state == "unknown" and monitor.scored == 0


def test_monitor_ignores_frames_without_structure_and_short_dips():
    clock = FakeClock()
    monitor = AlignmentMonitor(None, AlignmentSettings(every_n=1, threshold=0.5, warn_after_s=10.0, min_samples=5,
                                                       smoothing=1.0), clock=clock)
    for score in [0.9, None, None, 0.2, 0.2, 0.9, 0.2, 0.2, 0.2]:  # never 10 s below in a row
        clock.now += 2.0
        assert monitor.add_sample(AlignmentSample(score, (0.0, 0.0), 0.3, 4, 0.01)) == []
    values = monitor.diagnostics()
    assert values["alignment_pairs_without_structure"] == "2" and values["alignment_pairs_scored"] == "7"
    assert monitor.state == "ok"
    assert set(values) >= {"alignment_state", "alignment_score", "alignment_threshold", "alignment_ms"}


def test_monitor_rejects_bad_settings():
    with pytest.raises(ValueError, match="every_n"):
        AlignmentSettings(every_n=0)
    with pytest.raises(ValueError, match="smoothing"):
        AlignmentSettings(smoothing=0.0)


def test_background_thread_scores_offered_pairs_and_hands_over_messages(rig_and_pairs):
    rig, pairs = rig_and_pairs
    monitor = AlignmentMonitor(shifted(rig.homography, 0, 20), AlignmentSettings(every_n=1, warn_after_s=0.0,
                                                                                  min_samples=2))
    monitor.start()
    try:
        deadline = time.monotonic() + 30.0
        while monitor.scored < 3 and time.monotonic() < deadline:
            if monitor.offer(*pairs[monitor.scored % len(pairs)]):
                time.sleep(0.05)
        messages = []
        while not messages and time.monotonic() < deadline:
            monitor.offer(*pairs[0])
            time.sleep(0.05)
            messages = monitor.messages()
    finally:
        monitor.stop()
    assert monitor.scored >= 3 and monitor.state == "warn"
    assert len(messages) == 1 and messages[0][0] == WARN and "registration looks off" in messages[0][1]
    assert monitor.messages() == []
