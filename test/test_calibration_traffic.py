"""Targetless calibration from traffic: road scenes whose only vertical structure is cars and
people (lane paint invisible in thermal), day and night, 8-bit RGB and 16-bit thermal of
different sizes, from image pairs and from a real rosbag2 drive (30 Hz RGB, ~9 Hz thermal).
The larger accuracy measurement (12 pairs and 60 s drives on several rigs) is the benchmark
``python -m rgbt_perception.calibration.bench`` (docs/calibration.md)."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import yaml

from rgbt_perception.calibration import CalibrationRefused, TargetlessOptions, dense, estimate_targetless
from rgbt_perception.calibration import edges as ed
from rgbt_perception.calibration import targetless as tl
from rgbt_perception.calibration import traffic as tr
from rgbt_perception.calibration.edge_level import STATIC_WEIGHT, count_repeats_once
from rgbt_perception.calibration.features import (
    corner_error,
    mean_corner_error,
    remove_column_offsets,
    same_view_homography,
    to_gray,
)
from rgbt_perception.calibration.motion import frame_between
from rgbt_perception.calibration.sources import load_bags
from rgbt_perception.cli.calibrate import main
from rgbt_perception.io.bag import BagWriter

NO_ROAD_EDGES = tr.TrafficOptions(edge_contrast=(0.0, 0.0))


@pytest.mark.long
def test_traffic_day_and_night_with_a_small_thermal_image_within_4_px():
    # RGB 640x480, thermal 384x288: different sizes and aspect handling; road edges have the
    # road's temperature, so only the horizon, cars and people are seen by both cameras.
    rig = tr.random_traffic_rig(31, (480, 640), (288, 384))
    pairs = tr.traffic_pairs(rig, 12, ("day", "night"), seed=31, options=NO_ROAD_EDGES)
    assert [p[2] for p in pairs[:2]] == ["day", "night"] and pairs[1][1].dtype == np.uint16
    assert corner_error(same_view_homography((288, 384), (480, 640)), rig.homography, (288, 384)) > 20.0
    result = estimate_targetless([p[0] for p in pairs], [p[1] for p in pairs])
    error = mean_corner_error(result.homography, rig.homography, (288, 384))
    assert error < 4.0, f"mean corner error {error:.2f} px"
    assert corner_error(result.homography, rig.homography, (288, 384)) < 8.0
    assert result.pairs_supporting >= 8 and result.corner_sigma_px < 2.0 and result.edge_scale_shift_px < 1.0
    # Both directions are fixed by the traffic: edges that line up only at the estimate.
    assert max(p.agreement[0] for p in result.pairs) > 0.1 and max(p.agreement[1] for p in result.pairs) > 0.1


def test_a_road_without_traffic_is_refused_with_what_to_add():
    rig = tr.random_traffic_rig(5)
    pairs = tr.traffic_pairs(rig, 8, ("day",), seed=5, options=tr.TrafficOptions(cars=(0, 0), people=(0, 0),
                                                                                edge_contrast=(0.0, 0.0)))
    with pytest.raises(CalibrationRefused) as info:
        estimate_targetless([p[0] for p in pairs], [p[1] for p in pairs])
    message = str(info.value)
    assert "add" in message and ("cars" in message or "warm objects" in message), message


def test_column_offsets_are_removed_and_the_horizon_kept():
    rng = np.random.default_rng(0)
    scene = np.zeros((120, 160), np.float32)
    scene[60:] = 1.0  # a horizon
    scene[80:100, 40:60] = 2.0  # a warm object
    stripes = rng.normal(0, 0.05, 160).astype(np.float32)
    cleaned = remove_column_offsets(scene + stripes[None, :])
    # What an edge detector sees: steps between neighbouring columns (a smooth drift may stay).
    steps = np.abs(np.diff(cleaned[10:50], axis=1))
    assert steps.max() < 0.03 < 0.1 < np.abs(np.diff(stripes)).max()
    assert abs(float(cleaned[70, 100] - cleaned[50, 100]) - 1.0) < 0.01
    assert abs(float(cleaned[90, 50] - cleaned[90, 30]) - 1.0) < 0.05


def test_edges_repeated_in_many_pairs_count_as_a_small_part_of_one():
    static = np.stack([np.arange(10, 150, dtype=np.float64), np.full(140, 60.0)], axis=1)
    sources = []
    for k in range(12):
        # A car passing: its edge lies within a pixel of the same place in pairs k and k + 1 only.
        moving = np.stack([np.full(20, 20.0 + 5 * k), np.arange(70, 90, dtype=np.float64)], axis=1)
        points = np.vstack([static, moving])
        sources.append(ed.EdgePoints(points, np.tile([0.0, 1.0], (len(points), 1))))
    count_repeats_once(sources, (120, 160))
    for source in sources:
        assert np.allclose(source.weights[:140], STATIC_WEIGHT / 12.0)
        assert np.all(source.weights[140:] == 1.0)
    # All copies of a static edge pixel together weigh STATIC_WEIGHT pairs' worth: a small part of one.
    assert sum(source.weights[0] for source in sources) == pytest.approx(STATIC_WEIGHT) and STATIC_WEIGHT < 0.1
    # A scene seen once, whatever else repeats, keeps full weight; a static scene alone keeps uniform weights.
    alone = [ed.EdgePoints(static.copy(), np.tile([0.0, 1.0], (140, 1))) for _ in range(2)]
    count_repeats_once(alone, (120, 160))
    assert all(np.all(source.weights == 1.0) for source in alone)


def test_edge_focusing_places_the_edges_of_a_thin_warm_object_where_they_are():
    # A bar 3 px wide: blurred at sigma 1.5 its two outlines' gradient maxima move apart.
    image = np.zeros((40, 60), np.float32)
    image[:, 28:31] = 1.0  # the bar covers 27.5 .. 30.5 in pixel-centre coordinates
    coarse = ed.edge_points(image, 1.5)[0]
    focused = ed.edge_points(image, 1.5, locate_sigma=0.5)[0]
    middle = slice(10, 30)

    def outline_error(found: ed.EdgePoints) -> float:
        rows = (found.points[:, 1] >= middle.start) & (found.points[:, 1] < middle.stop)
        xs = found.points[rows, 0]
        assert len(xs) > 0 and np.all(np.abs(found.normals[rows, 0]) > 0.99)
        return float(np.max(np.minimum(np.abs(xs - 27.5), np.abs(xs - 30.5))))

    assert outline_error(coarse) > 0.4  # blur moves each outline out by almost half a pixel
    assert outline_error(focused) < 0.05
    assert len(focused.points) == len(coarse.points)  # the coarse scale still decides what is an edge


def test_icp_limited_to_zoom_roll_and_shift_keeps_the_rest_of_the_map():
    # The selection stage refines search hypotheses (zoom, roll and shift off the truth) with
    # these terms only, so the perspective of the map it starts from stays as it was.
    rig = tr.random_traffic_rig(42, (480, 640), (288, 384))
    pairs = tr.traffic_pairs(rig, 4, ("day",), seed=42)
    targets = [ed.EdgeTarget(to_gray(p[0])) for p in pairs]
    sources = [ed.edge_points(remove_column_offsets(to_gray(p[1])))[0] for p in pairs]
    start = rig.homography @ dense.about_centre((288, 384), 1.02, 1.0)
    start = np.array([[1, 0, 4.0], [0, 1, -3.0], [0, 0, 1]]) @ start
    assert mean_corner_error(start, rig.homography, (288, 384)) > 10.0
    result = ed.refine_icp(targets, sources, start, (480, 640), radii=(8.0, 4.0, 2.0), dof=4)
    assert mean_corner_error(result.homography, rig.homography, (288, 384)) < 1.0
    norm = ed.normaliser((480, 640))
    change = norm @ result.homography @ np.linalg.inv(start) @ np.linalg.inv(norm)
    change /= change[2, 2]
    assert np.allclose(change[2, :2], 0.0, atol=1e-9)
    assert abs(change[0, 0] - change[1, 1]) < 1e-9 and abs(change[0, 1] + change[1, 0]) < 1e-9
    with pytest.raises(ValueError):
        ed.refine_icp(targets, sources, start, (480, 640), dof=5)


def test_the_search_keeps_square_pixel_hypotheses_beside_a_wide_rgb_camera():
    # RGB 1280x720 with thermal 640x512: the thermal image stretched onto the whole RGB frame
    # correlates better at every scale than the square-pixel start, which holds the truth;
    # each start keeps its own hypotheses, so the selection sees the right one.
    rig = tr.random_traffic_rig(41, (720, 1280), (512, 640))
    pairs = tr.traffic_pairs(rig, 6, ("day",), seed=41)
    options = TargetlessOptions()
    bases = tl._starts(None, (720, 1280), (512, 640))
    assert len(bases) == 2
    found = tl._search([to_gray(p[0]) for p in pairs], [remove_column_offsets(to_gray(p[1])) for p in pairs],
                       (720, 1280), (512, 640), bases, options, lambda n: None)
    assert len(found) == 2 * len(tl._scales(options))
    aspect = np.array([abs(h[0, 0] / h[1, 1]) for h in found])
    square = [h for h, a in zip(found, aspect) if abs(a - 1.0) < 0.1]
    assert len(square) == len(tl._scales(options))
    assert min(mean_corner_error(h, rig.homography, (512, 640)) for h in square) < 40.0


@pytest.mark.long
def test_a_drive_with_a_small_thermal_image_within_2_px_and_the_edge_scale_check():
    # One road, driven: the same world at 60 instants, RGB and thermal exposed together. The
    # traffic fills a band across the middle; a 384 px thermal camera blurs outlines twice as
    # wide as the RGB one sees them, and edges placed where the blurred gradient peaks lie
    # apart in the two images the same way in every pair, which their agreement cannot show.
    rig = tr.random_traffic_rig(42, (480, 640), (288, 384))
    pairs = tr.synchronised_drive_pairs(rig, np.linspace(0.5, 59.5, 60), tr.DriveOptions(condition="day"), seed=142)
    rgb, thermal = [p[0] for p in pairs], [p[1] for p in pairs]
    result = estimate_targetless(rgb, thermal)
    error = mean_corner_error(result.homography, rig.homography, (288, 384))
    assert error < 2.0, f"mean corner error {error:.2f} px"
    assert result.edge_scale_shift_px < 2.0 and result.pairs_supporting >= 30
    # Without edge focusing the estimate moves with the edge scale: unchecked it is off by
    # many px though the pairs agree, and the check refuses it.
    unfocused = TargetlessOptions(search=False, locate_sigma=None)
    unchecked = estimate_targetless(rgb, thermal, start=rig.homography,
                                    options=dataclasses.replace(unfocused, check_sigma=None))
    assert np.isnan(unchecked.edge_scale_shift_px) and unchecked.corner_sigma_px < 2.0
    assert mean_corner_error(unchecked.homography, rig.homography, (288, 384)) > 4.0
    with pytest.raises(CalibrationRefused) as info:
        estimate_targetless(rgb, thermal, start=rig.homography, options=unfocused)
    assert "another scale" in str(info.value) and "add pairs" in str(info.value)


def test_the_search_without_static_edges_finds_a_night_drive():
    # At night the horizon and the road's edges (strong in thermal; in RGB lit only in the
    # headlights' cone, beside the RGB-only lane paint) correlate best at a wrong zoom; the
    # traffic alone correlates best near the truth.
    rig = tr.random_traffic_rig(45, (480, 640), (288, 384))
    pairs = tr.synchronised_drive_pairs(rig, np.linspace(0.5, 59.5, 40), tr.DriveOptions(condition="night"), seed=145)
    rgb = [to_gray(p[0]) for p in pairs]
    thermal = [remove_column_offsets(to_gray(p[1])) for p in pairs]
    level = dense.Level(rgb, thermal, (480, 640), (288, 384), 160, 96)
    before = [m.copy() for m in level.rgb]
    moving = level.moving_only()
    for maps in (moving.rgb, moving.thermal):
        assert np.abs(np.median(np.stack(maps), axis=0)).max() < 1e-6
    assert all(np.array_equal(a, b) for a, b in zip(before, level.rgb))  # the plain maps are kept
    # The search keeps the hypotheses of both passes; without the second, none lies near the truth.
    bases = tl._starts(None, (480, 640), (288, 384))
    nearest = {}
    for name, least in (("moving", 8), ("all", len(rgb) + 1)):
        options = TargetlessOptions(moving_min_pairs=least)
        found = tl._search(rgb, thermal, (480, 640), (288, 384), bases, options, lambda n: None)
        assert len(found) == len(bases) * len(tl._scales(options)) * (2 if name == "moving" else 1)
        nearest[name] = min(mean_corner_error(h, rig.homography, (288, 384)) for h in found)
    assert nearest["moving"] < 25.0 < nearest["all"], nearest


@pytest.mark.long
def test_night_only_traffic_pairs_on_a_wide_rgb_camera_within_2_px():
    # Night RGB shows the headlight cones and lamps only: the search needs enough resolution
    # to line those up (at 96 px wide, a night drive's hypotheses all lay 100 px or more off).
    from rgbt_perception.calibration.bench import traffic_rig

    rig = traffic_rig(41, 1)
    assert rig.rgb_size == (720, 1280) and rig.thermal_size == (512, 640)
    pairs = tr.traffic_pairs(rig, 12, ("night",), 141, tr.TrafficOptions())
    result = estimate_targetless([p[0] for p in pairs], [p[1] for p in pairs])
    error = mean_corner_error(result.homography, rig.homography, (512, 640))
    assert error < 2.0, f"mean corner error {error:.2f} px"
    assert result.corner_sigma_px < 2.0 and result.pairs_supporting >= 8


def test_a_drive_bag_keeps_the_best_synchronised_pair_of_each_window(tmp_path):
    bag = tmp_path / "drive"
    rgb, thermal = np.zeros((8, 12, 3), np.uint8), np.zeros((8, 12), np.uint16)
    # 30 Hz RGB, thermal every 110 ms with a drifting offset: gaps 0-16 ms.
    rgb_stamps = [1_000_000_000 + round(k * 1e9 / 30) for k in range(60)]
    thermal_stamps = [1_013_000_000 + k * 110_000_000 for k in range(18)]
    with BagWriter(bag) as writer:
        for stamp in sorted(rgb_stamps + thermal_stamps):
            if stamp in rgb_stamps:
                writer.write_image("rgb/image", rgb, "rgb8", stamp, "rgb_camera")
            else:
                writer.write_image("thermal/image", thermal, "mono16", stamp, "thermal_camera")
    pairs = load_bags([str(bag)], max_pairs=6)
    assert len(pairs) == 6 and pairs.available == 18
    gaps = [min(abs(t - r) for r in rgb_stamps) for t in thermal_stamps]
    kept = [int(name.split("@")[1]) for name in pairs.names]
    for window, stamp in enumerate(kept):
        best = min(range(3 * window, 3 * window + 3), key=lambda k: gaps[k])
        assert thermal_stamps[best] == stamp
    assert "stamps apart by at most" in pairs.described[0]


def _moving_square(left: float) -> np.ndarray:
    """A 120x160 textured frame with a bright 30x30 square whose left edge is at ``left`` px."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(40, 90, (120, 160, 3)).astype(np.uint8), (0, 0), 2.0)
    columns = np.arange(160, dtype=np.float32)
    # Anti-aliased coverage of the square along x, so sub-pixel positions render faithfully.
    coverage = np.clip(columns + 1 - left, 0, 1) * np.clip(left + 30 - columns, 0, 1)
    square = image[45:75].astype(np.float32)
    square = square * (1 - coverage[None, :, None]) + 230 * coverage[None, :, None]
    image[45:75] = square.round().astype(np.uint8)
    return image


def _square_left_edge(image: np.ndarray) -> float:
    row = image[60, :, 0].astype(np.float32)
    return float(np.argmax(np.diff(row)) + 1)


def test_motion_compensation_moves_the_rgb_picture_to_the_thermal_stamp(tmp_path):
    # The square moves 12 px per RGB period; the thermal frame is exposed 0.25 and 0.75 of the way.
    before, after = _moving_square(60.0), _moving_square(72.0)
    assert abs(_square_left_edge(frame_between(before, after, 0.25)) - 63.0) <= 1.0
    assert abs(_square_left_edge(frame_between(before, after, 0.75)) - 69.0) <= 1.0
    assert np.array_equal(frame_between(before, after, 0.0), before)
    with pytest.raises(ValueError, match="fraction"):
        frame_between(before, after, 1.5)

    bag = tmp_path / "moving"
    thermal = np.zeros((120, 160), np.uint16)
    with BagWriter(bag) as writer:
        writer.write_image("rgb/image", before, "rgb8", 1_000_000_000, "rgb_camera")
        writer.write_image("thermal/image", thermal, "mono16", 1_008_000_000, "thermal_camera")
        writer.write_image("rgb/image", after, "rgb8", 1_033_000_000, "rgb_camera")
    moved = load_bags([str(bag)])
    nearest = load_bags([str(bag)], motion=False)
    assert moved.names == ["moving@1008000000"] and "RGB moved to the thermal stamps" in moved.described[0]
    # 8 of 33 ms: 2.9 px past the first frame's position, which the nearest pairing would keep.
    assert abs(_square_left_edge(moved.rgb[0]) - 62.9) <= 1.0
    assert _square_left_edge(nearest.rgb[0]) == _square_left_edge(before)


@pytest.fixture(scope="module")
def traffic_bag(tmp_path_factory):
    """12 traffic scenes, half at night, recorded like a drive: 30 Hz RGB and 8.7 Hz thermal on
    free-running clocks (each scene held for 0.4 s: the camera rates and pairing are a drive's,
    the variety is that of a long drive subsampled; the 60 s drive itself is the benchmark)."""
    rig = tr.random_traffic_rig(14, (480, 640), (512, 640))
    scenes = tr.traffic_pairs(rig, 12, ("day", "night"), seed=14)
    folder = tmp_path_factory.mktemp("traffic")
    with BagWriter(folder / "bag") as writer:
        events = sorted([(k / 30.0, "rgb") for k in range(144)] + [(0.013 + k / 8.7, "thermal") for k in range(41)])
        for t, camera in events:
            rgb, thermal, _ = scenes[min(int(t / 0.4), 11)]
            stamp = 1_000_000_000 + round(t * 1e9)
            if camera == "rgb":
                writer.write_image("camera/rgb", rgb, "rgb8", stamp, "rgb_camera")
            else:
                writer.write_image("camera/lwir", thermal, "mono16", stamp, "thermal_camera")
    np.savetxt(folder / "truth.txt", rig.homography)
    return folder, rig


def test_a_recorded_traffic_bag_calibrates_through_the_cli(traffic_bag, tmp_path, capsys):
    folder, rig = traffic_bag
    out, report = tmp_path / "calib.yaml", tmp_path / "report"
    code = main(["--bag", str(folder / "bag"), "--rgb-topic", "camera/rgb", "--thermal-topic", "camera/lwir",
                 "--max-pairs", "14", "--out", str(out), "--report", str(report), "--truth",
                 str(folder / "truth.txt"), "--no-progress"])
    _, stderr = capsys.readouterr()
    assert code == 0, stderr
    values = yaml.safe_load(out.read_text())["/**/rgbt_perception"]["ros__parameters"]["thermal_to_rgb"]
    assert mean_corner_error(np.reshape(values, (3, 3)), rig.homography, rig.thermal_size) < 4.0
    summary = json.loads((report / "report.json").read_text())
    # Every thermal frame finds an RGB partner; 14 windows of 3 give the best-synchronised of each.
    assert summary["pairs_available"] == 41 and summary["pairs_total"] == 14
    assert summary["truth_error_px"] < 8.0 and "stamps apart by at most" in summary["sources"][0]


def test_drive_frames_come_at_the_camera_rates_in_stamp_order():
    rig = tr.random_traffic_rig(3, (96, 128), (80, 100))
    frames = list(tr.drive_frames(rig, tr.DriveOptions(seconds=1.0, condition="night"), seed=3))
    stamps = [stamp for _, stamp, _ in frames]
    assert stamps == sorted(stamps)
    rgb = [image for camera, _, image in frames if camera == "rgb"]
    thermal = [image for camera, _, image in frames if camera == "thermal"]
    assert len(rgb) == 30 and len(thermal) == 9
    assert rgb[0].shape == (96, 128, 3) and rgb[0].dtype == np.uint8
    assert thermal[0].shape == (80, 100) and thermal[0].dtype == np.uint16
    # The traffic moves: consecutive thermal frames differ by more than their noise.
    assert np.abs(thermal[0].astype(np.int32) - thermal[-1].astype(np.int32)).max() > 100
