"""The device-resident per-frame step on the CPU: its torch pre/post-processing against the NumPy/OpenCV
path, the resident engine against the torch engine, one step for every camera pattern, and the fallbacks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rgbt_perception.backends import torch_ops
from rgbt_perception.backends.base import DecodeSettings
from rgbt_perception.backends.factory import create_engine
from rgbt_perception.backends.numpy_ops import box_iou_one_to_many, decode_boxes, nms, semantic_mask
from rgbt_perception.backends.resident_engine import GraphEngine, ResidentEngine
from rgbt_perception.backends.selection import BackendError
from rgbt_perception.bench.runners import synthetic_pair
from rgbt_perception.core.preprocess import ThermalScaling, _resize, scale_thermal
from rgbt_perception.core.registration import warp_thermal_to_rgb
from rgbt_perception.node.parameters import DEFAULT_WEIGHTS

CPU = torch.device("cpu")
# The synthetic data set's thermal -> RGB homography (thermal at half the RGB resolution, offset).
HOMOGRAPHY = np.array([[2.16295207949, -0.00429429611159, -12.2126712371],
                       [0.00429429611159, 2.16295207949, -8.83850142099],
                       [-3.42374837182e-05, 2.33550564551e-05, 1.0]])
STRIDES = (8, 16, 32)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@pytest.mark.parametrize("dtype,high", [(np.uint16, 60000), (np.uint8, 255)])
def test_warp_matches_opencv_within_two_counts(dtype, high):
    thermal = np.random.default_rng(0).integers(0, high, (120, 160)).astype(dtype)
    want = warp_thermal_to_rgb(thermal, HOMOGRAPHY, (240, 320)).astype(np.float32)
    coords = torch_ops.warp_coordinates(HOMOGRAPHY, thermal.shape, (240, 320))
    got = torch_ops.sample_bilinear(_t(thermal), coords, integer=True).numpy()
    diff = np.abs(got - want)
    # OpenCV's 15-bit fixed-point weights against float32 ones: at most 2 counts on white noise.
    assert diff.max() <= 2.0 and (diff == 0).mean() > 0.9
    # Pixels OpenCV leaves black outside the thermal view are black here too.
    assert np.array_equal(want == 0, got == 0) or ((want == 0) != (got == 0)).mean() < 1e-3


@pytest.mark.parametrize("mode,dtype", [("uint8", np.uint8), ("uint16", np.uint16), ("float", np.float32)])
@pytest.mark.parametrize("target", [(224, 320), (120, 160), (480, 640), (240, 320)])
def test_resize_matches_cv2_inter_linear(mode, dtype, target):
    image = np.random.default_rng(1).integers(0, 255 if dtype == np.uint8 else 60000, (240, 320)).astype(dtype)
    want = _resize(image, *target).astype(np.float32)
    got = torch_ops.Resizer.build(image.shape, target, mode, CPU)(_t(image)[None])[0].numpy()
    if mode == "float":
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * 60000)  # 1e-5 of the value range
    else:
        diff = np.abs(got - want)
        assert diff.max() <= 1.0 and (diff == 0).mean() > 0.85


@pytest.mark.parametrize("scaling", [ThermalScaling(), ThermalScaling("percentile", 5.0, 95.0),
                                     ThermalScaling("fixed", 7000.0, 9000.0)])
def test_thermal_scaling_equals_numpy_to_the_bit(scaling):
    rng = np.random.default_rng(2)
    frames = [rng.integers(7000, 9000, (60, 80)).astype(np.uint16), np.zeros((60, 80), np.uint16),
              np.full((60, 80), 8000, np.uint16), rng.integers(0, 255, (60, 80)).astype(np.uint8)]
    frames[0][:10] = 0  # a registration border: left out of the percentiles
    for frame in frames:
        want = scale_thermal(frame, scaling)
        got = torch_ops.scale_thermal(_t(frame), scaling).numpy()
        assert np.array_equal(got, want), (scaling, frame.dtype, np.abs(got - want).max())


def test_class_mask_matches_the_numpy_mask():
    logits = np.random.default_rng(3).normal(0, 2, (9, 56, 80)).astype(np.float32)
    got = torch_ops.class_mask(_t(logits)[None], (240, 320)).numpy()
    want = semantic_mask(logits, (240, 320))
    assert got.dtype == np.uint8 and got.shape == (240, 320)
    assert (got == want).mean() > 0.999
    assert np.array_equal(torch_ops.class_mask(_t(logits)[None], (56, 80)).numpy(), logits.argmax(0))


def _box_outputs(seed: int, classes: int = 9, size: tuple[int, int] = (128, 160)) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    outputs: dict[str, list[np.ndarray]] = {"cls": [], "reg": [], "ctr": []}
    for stride in STRIDES:
        height, width = -(-size[0] // stride), -(-size[1] // stride)
        outputs["cls"].append(rng.normal(-1.0, 1.5, (1, classes, height, width)).astype(np.float32))
        outputs["reg"].append(np.abs(rng.normal(0, 3 * stride, (1, 4, height, width))).astype(np.float32))
        outputs["ctr"].append(rng.normal(0, 1, (1, 1, height, width)).astype(np.float32))
    return outputs


@pytest.mark.parametrize("seed,threshold,caps", [(0, 0.4, (100, 20)), (1, 0.05, (100, 20)), (2, 0.6, (7, 2)),
                                                 (3, 0.05, (300, 300))])
def test_static_decode_gives_the_numpy_boxes(seed, threshold, caps):
    outputs = _box_outputs(seed)
    want = decode_boxes(outputs, STRIDES, threshold, 0.5, caps[0], caps[1])[0]
    got = torch_ops.decode_boxes_static({k: [_t(a) for a in v] for k, v in outputs.items()}, STRIDES, threshold, 0.5,
                                        caps)
    count = int(got.count)
    assert bool(got.exact) and count == len(want["boxes"]) > 0
    assert np.array_equal(got.boxes[:count].numpy(), want["boxes"])
    assert np.array_equal(got.labels[:count].numpy(), want["labels"])
    np.testing.assert_allclose(got.scores[:count].numpy(), want["scores"], rtol=1e-6)
    assert got.boxes.shape == (caps[0], 4)  # fixed shapes whatever the count


def test_parallel_nms_rounds_equal_sequential_greedy_nms():
    rng = np.random.default_rng(4)
    for _ in range(20):
        corners = rng.uniform(0, 100, (60, 2)).astype(np.float32)
        boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (60, 2)).astype(np.float32)], axis=1)
        scores = np.sort(rng.uniform(0, 1, 60).astype(np.float32))[::-1].copy()
        labels = np.zeros(60, np.int64)
        keep, converged = torch_ops.greedy_keep(torch_ops.suppression_matrix(_t(boxes), torch.from_numpy(labels), 0.3),
                                                torch.ones(60, dtype=torch.bool), rounds=60)
        assert bool(converged)
        assert np.array_equal(np.flatnonzero(keep.numpy()), np.sort(nms(boxes, scores, 0.3)))


def test_static_decode_says_when_it_is_not_exact():
    outputs = {k: [_t(a) for a in v] for k, v in _box_outputs(5).items()}
    # Too few candidates for 100 boxes while more score above the threshold: not provably the greedy result.
    assert not bool(torch_ops.decode_boxes_static(outputs, STRIDES, 0.05, 0.5, (100, 100), candidates=8).exact)
    # A chain of boxes, each suppressing the next: one round cannot settle it.
    chain = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10], [6, 0, 16, 10]])
    suppress = torch_ops.suppression_matrix(chain, torch.zeros(4, dtype=torch.long), 0.5)
    keep, converged = torch_ops.greedy_keep(suppress, torch.ones(4, dtype=torch.bool), rounds=1)
    assert not bool(converged)
    keep, converged = torch_ops.greedy_keep(suppress, torch.ones(4, dtype=torch.bool))
    assert bool(converged) and keep.tolist() == [True, False, True, False]


# -- the engine ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines():
    logs: list[str] = []
    resident = ResidentEngine(DEFAULT_WEIGHTS, device="cpu", decode=DecodeSettings(score_threshold=0.3),
                              thermal_to_rgb=HOMOGRAPHY, log=logs.append)
    reference = create_engine(DEFAULT_WEIGHTS, device="cpu", decode=DecodeSettings(score_threshold=0.3),
                              thermal_to_rgb=HOMOGRAPHY)
    yield resident, reference, logs
    resident.release()
    reference.release()


def _frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rgb, _ = synthetic_pair((240, 320), seed)
    _, thermal = synthetic_pair((120, 160), seed + 1)
    return rgb, thermal


def _matched(detection, others, score_tolerance: float = 0.02) -> bool:
    return any(d.class_id == detection.class_id and abs(d.score - detection.score) < score_tolerance
               and max(abs(d.x_min - detection.x_min), abs(d.y_min - detection.y_min), abs(d.x_max - detection.x_max),
                       abs(d.y_max - detection.y_max)) < 1.0 for d in others)


def _xyxy(detection) -> np.ndarray:
    return np.array([detection.x_min, detection.y_min, detection.x_max, detection.y_max])


def _nms_tie(detection, others, nms_iou: float = 0.5) -> bool:
    """A box NMS kept in one result and not the other: a same-class box of nearly equal score overlaps
    it close to the NMS threshold, so a score difference in the third decimal decides which survives."""
    same = [d for d in others if d.class_id == detection.class_id and d.score > detection.score - 0.02]
    if not same:
        return False
    overlaps = box_iou_one_to_many(_xyxy(detection), np.stack([_xyxy(d) for d in same]))
    return bool((overlaps > nms_iou - 0.1).any())


def _same_results(got, want, min_agreement: float = 0.995, threshold: float = 0.3) -> None:
    """Masks within ``min_agreement``; every box clear of the score threshold in both, within a pixel and
    0.02 in score (network inputs differ by at most a count or two), except NMS near-ties (at most two
    per result, each with its overlapping neighbour in the other result)."""
    assert got.mask.shape == want.mask.shape and got.mask.dtype == np.uint8
    assert (got.mask == want.mask).mean() >= min_agreement
    clear = [d for d in want.detections if d.score > threshold + 0.02]
    assert clear, "the frame must give boxes"
    for mine, theirs in ((clear, got.detections),
                         ([d for d in got.detections if d.score > threshold + 0.02], want.detections)):
        unmatched = [d for d in mine if not _matched(d, theirs)]
        assert len(unmatched) <= 2 and all(_nms_tie(d, theirs) for d in unmatched), unmatched


def test_resident_engine_agrees_with_the_torch_engine_for_every_camera_pattern(engines):
    resident, reference, _ = engines
    rgb, thermal = _frames()
    steps_before = None
    for pair, size in (((rgb, thermal), None), ((rgb, None), None), ((None, thermal), (240, 320))):
        got = resident.infer(*pair, output_size=size)
        _same_results(got, reference.infer(*pair, output_size=size))
        # Presence is data: one step (buffers, and on CUDA one graph) serves all three patterns.
        steps_before = steps_before or len(resident._steps)
        assert len(resident._steps) == steps_before
    # Thermal alone without the RGB geometry: its own grid, as the torch engine.
    _same_results(resident.infer(None, thermal), reference.infer(None, thermal))
    assert resident.host_decodes == 0


def test_resident_overlay_matches_the_torch_engine_and_results_are_fresh_arrays(engines):
    resident, reference, _ = engines
    rgb, thermal = _frames(3)
    first = resident.infer(rgb, thermal, overlay=True)
    # Blended on the device, boxes drawn on the host: what the torch engine draws for that mask and those boxes.
    want = reference.draw(rgb, first.mask, first.detections)
    assert first.overlay.shape == want.shape and np.abs(first.overlay.astype(int) - want.astype(int)).max() <= 1
    alone = resident.infer(None, thermal, overlay=True, output_size=rgb.shape[:2])  # drawn on the warped thermal
    assert alone.overlay.shape == rgb.shape
    kept = first.mask.copy()
    resident.infer(*_frames(4))  # the next frame must not overwrite the earlier result
    assert np.array_equal(first.mask, kept)


def test_boxes_fall_back_to_the_host_decoder_when_the_static_nms_is_not_exact(engines, monkeypatch):
    resident, reference, _ = engines
    monkeypatch.setattr(torch_ops, "NMS_CANDIDATES", 2)
    rgb, thermal = _frames(5)
    before = resident.host_decodes
    got, want = resident.infer(rgb, thermal), reference.infer(rgb, thermal)
    assert len(want.detections) > 2, "the frame must give more boxes than the candidates"
    assert resident.host_decodes == before + 1
    _same_results(got, want)


def test_bad_input_gets_the_torch_engines_errors(engines):
    resident, _, _ = engines
    with pytest.raises(ValueError, match="both rgb and thermal are missing"):
        resident.infer(None, None)
    with pytest.raises(ValueError, match="HxWx3"):
        resident.infer(np.zeros((10, 10), np.uint8), None)
    with pytest.raises(ValueError, match="differs from the RGB frame"):
        resident.infer(*_frames(), output_size=(100, 100))


def test_graphs_on_the_cpu_are_refused_by_selection_and_fall_back_with_a_logged_reason(tmp_path):
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        create_engine(DEFAULT_WEIGHTS, device="cpu", backend="torch_graphs")
    with pytest.raises(BackendError, match="torch.compile on the CPU ran slower"):
        create_engine(DEFAULT_WEIGHTS, device="cpu", backend="torch_compiled")
    logs: list[str] = []
    engine = GraphEngine(DEFAULT_WEIGHTS, device="cpu", log=logs.append)
    assert engine.active_mode == "eager" and engine.backend == "torch_graphs"
    assert logs == engine.fallbacks and "CUDA graphs need a CUDA device" in logs[0]
    rgb, thermal = synthetic_pair((224, 320), 0)
    assert engine.infer(rgb, thermal).mask.shape == (224, 320)
    engine.release()


def test_overlay_colours_blend_like_opencv():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    mask = rng.integers(0, 9, (20, 30)).astype(np.uint8)
    lut = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    want = cv2.addWeighted(image, 0.5, lut[mask], 0.5, 0.0)
    got = torch_ops.blend_colours(torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(lut), 0.5)
    assert np.abs(got.numpy().astype(int) - want.astype(int)).max() <= 1


def test_gpu_check_measures_records_and_renders_a_path_on_the_cpu(engines, tmp_path, monkeypatch):
    """The pieces of ``make gpu-check`` that run anywhere: timing, agreement, the record ``auto`` reads."""
    import json

    from rgbt_perception.bench import gpu_check
    from rgbt_perception.bench.resident_check import mask_agreement, measure_path, record_passing_paths

    resident, _, _ = engines
    row = measure_path(resident, _frames(8), iters=2, warmup=1)
    assert row["engine"]["count"] == 2 and row["network"]["count"] == 2 and row["engine_over_network"] > 0
    pairs = [("a", *_frames(9), HOMOGRAPHY)]
    agreement = mask_agreement(str(DEFAULT_WEIGHTS), pairs, "cpu",
                               [("torch_resident", "fp32"), ("torch_graphs", "fp32")])
    assert agreement[0]["passed"] and agreement[0]["worst_frame_agreement"] >= 0.995
    assert "CUDA graphs need a CUDA device" in agreement[1]["skipped"]
    monkeypatch.setenv("RGBT_CACHE_DIR", str(tmp_path))
    cell = {"variant": "tiny", "precision": "fp32", "backend": "torch_resident", "active_mode": "eager",
            "setup_s": 1.0, "torch_peak_allocated_mb": 0.0, "goal_fps": 200.0, "goal_met": False, **row}
    assert record_passing_paths("Some GPU", [cell], agreement) == {"fp32": ["torch_resident"]}
    assert json.loads((tmp_path / "engine_paths.json").read_text()) == {"Some GPU": {"fp32": ["torch_resident"]}}
    table = "\n".join(gpu_check.render_cells([cell, {"variant": "tiny", "precision": "bf16", "backend": "x",
                                                      "skipped": "why"}]))
    assert "torch_resident (eager)" in table and ">= 200: NOT met" in table and "skipped: why" in table
