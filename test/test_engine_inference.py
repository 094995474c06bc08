"""InferenceEngine on a saved micro model: resolutions, modalities, registration, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbt_perception.backends.selection import resolve_precision
from rgbt_perception.core.classes import MFNET
from rgbt_perception.core.device import DTYPES
from rgbt_perception.core.preprocess import ThermalScaling, to_model_inputs
from rgbt_perception.core.registration import warp_thermal_to_rgb
from rgbt_perception.inference import Detection, InferenceEngine, resolve_device
from rgbt_perception.io.weights import WeightsMetadata, save_weights
from rgbt_perception.model import ModelConfig, RGBTNet

INPUT_SIZE = (64, 96)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=INPUT_SIZE))
    path = str(tmp_path_factory.mktemp("engine") / "micro.safetensors")
    save_weights(path, model, WeightsMetadata.for_model(model.cfg, MFNET))
    return path


@pytest.fixture(scope="module")
def engine(weights) -> InferenceEngine:
    # Threshold 0 so an untrained head still yields boxes to check geometry on.
    return InferenceEngine(weights, device="cpu", score_threshold=0.0, max_detections=20)


def _pair(rgb_size, thermal_size, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (*rgb_size, 3), dtype=np.uint8)
    thermal = rng.integers(20000, 40000, thermal_size, dtype=np.uint16)
    return rgb, thermal


def _check_detections(detections: list[Detection], height: int, width: int) -> None:
    for det in detections:
        assert 0 <= det.x_min <= det.x_max <= width and 0 <= det.y_min <= det.y_max <= height
        assert det.label == MFNET.names[det.class_id] and 0.0 <= det.score <= 1.0


@pytest.mark.parametrize(
    "rgb_size,thermal_size",
    [((64, 96), (64, 96)), ((70, 101), (45, 57)), ((33, 47), (96, 128))],
)
def test_mask_and_boxes_at_rgb_resolution(engine, rgb_size, thermal_size):
    rgb, thermal = _pair(rgb_size, thermal_size)
    result = engine.infer(rgb, thermal, overlay=True)
    assert result.mask.shape == rgb_size and result.mask.dtype == np.uint8
    assert int(result.mask.max()) < MFNET.num_classes
    assert result.overlay.shape == (*rgb_size, 3) and result.overlay.dtype == np.uint8
    assert 0 < len(result.detections) <= 20
    _check_detections(result.detections, *rgb_size)
    assert set(result.timings_ms) == {"preprocess", "forward", "postprocess", "total"}
    stages = result.timings_ms["preprocess"] + result.timings_ms["forward"] + result.timings_ms["postprocess"]
    assert abs(stages - result.timings_ms["total"]) < 1e-6 * max(1.0, stages) + 1e-3


def test_mask_is_argmax_of_upsampled_logits_and_boxes_are_rescaled(engine):
    rgb, thermal = _pair((70, 101), (70, 101), seed=3)
    result = engine.infer(rgb, thermal)
    rgb_t, thermal_t = to_model_inputs(rgb, thermal, INPUT_SIZE, ThermalScaling())
    with torch.inference_mode():
        outputs = engine.model(rgb_t, thermal_t)
        logits = F.interpolate(outputs["semantic"], size=(70, 101), mode="bilinear", align_corners=False)
        decoded = engine.model.box_head.decode(outputs["boxes"], 0.0, 0.5, 20)[0]
    assert np.array_equal(result.mask, logits.argmax(1)[0].numpy().astype(np.uint8))
    scale = np.array([101 / 96, 70 / 64, 101 / 96, 70 / 64])
    expected = decoded["boxes"].numpy() * scale
    got = np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in result.detections])
    assert np.allclose(got, expected, atol=1e-3)
    assert [d.class_id for d in result.detections] == decoded["labels"].tolist()


def test_every_modality_combination(engine):
    rgb, thermal = _pair((64, 80), (48, 60), seed=1)
    both = engine.infer(rgb, thermal)
    rgb_only = engine.infer(rgb, None)
    thermal_only = engine.infer(None, thermal, overlay=True)
    assert both.mask.shape == rgb_only.mask.shape == (64, 80)
    assert thermal_only.mask.shape == (48, 60) and thermal_only.overlay.shape == (48, 60, 3)
    _check_detections(thermal_only.detections, 48, 60)
    # The missing modality reaches the network as None: different inputs, different outputs.
    assert not np.array_equal(both.mask, rgb_only.mask) or [d.score for d in both.detections] != [
        d.score for d in rgb_only.detections
    ]
    with pytest.raises(ValueError, match="both rgb and thermal are missing"):
        engine.infer(None, None)


def test_batch_matches_single_calls(engine):
    # Two full pairs share one forward pass; each single-modality pair gets its own.
    pairs = [
        _pair((64, 96), (40, 50), seed=5),
        (None, _pair((8, 8), (30, 40))[1]),
        (_pair((50, 70), (8, 8))[0], None),
        _pair((40, 40), (64, 96), seed=6),
    ]
    batch = engine.infer_batch(pairs)
    assert [r.mask.shape for r in batch] == [(64, 96), (30, 40), (50, 70), (40, 40)]
    for (rgb, thermal), result in zip(pairs, batch):
        single = engine.infer(rgb, thermal)
        assert np.array_equal(single.mask, result.mask)
        assert [(d.class_id, round(d.score, 4)) for d in single.detections] == [
            (d.class_id, round(d.score, 4)) for d in result.detections
        ]
    assert engine.infer_batch([]) == []
    with pytest.raises(ValueError, match="2 pairs but 1 homographies"):
        engine.infer_batch(pairs[:2], homographies=[None])


def test_homography_registration(weights):
    rgb, thermal = _pair((64, 96), (32, 48), seed=2)
    shift = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 6.0], [0.0, 0.0, 1.0]])
    plain = InferenceEngine(weights, device="cpu")
    registered = InferenceEngine(weights, device="cpu", thermal_to_rgb=shift)
    per_call = plain.infer(rgb, thermal, homography=shift)
    by_default = registered.infer(rgb, thermal)
    assert np.array_equal(per_call.mask, by_default.mask)
    # Same result as warping by hand first (the engine registers with the same function).
    on_grid = warp_thermal_to_rgb(thermal, shift, (64, 96))
    assert np.array_equal(plain.infer(rgb, on_grid).mask, per_call.mask)
    assert not np.array_equal(plain.infer(rgb, thermal).mask, per_call.mask)
    with pytest.raises(ValueError, match="singular"):
        plain.infer(rgb, thermal, homography=np.zeros((3, 3)))


def test_thermal_only_output_on_the_rgb_grid(weights):
    _, thermal = _pair((8, 8), (32, 48), seed=4)
    shift = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 6.0], [0.0, 0.0, 1.0]])
    registered = InferenceEngine(weights, device="cpu", score_threshold=0.0, max_detections=20, thermal_to_rgb=shift)
    result = registered.infer(None, thermal, overlay=True, output_size=(70, 110))
    assert result.mask.shape == (70, 110) and result.overlay.shape == (70, 110, 3)
    _check_detections(result.detections, 70, 110)
    # The same as handing the engine the frame already warped onto the RGB grid by hand.
    by_hand = registered.infer(None, warp_thermal_to_rgb(thermal, shift, (70, 110)))
    assert np.array_equal(result.mask, by_hand.mask)
    assert [(d.class_id, round(d.x_min, 3)) for d in result.detections] == [
        (d.class_id, round(d.x_min, 3)) for d in by_hand.detections]
    # Without a homography the thermal frame is resized onto the grid; without a size, thermal pixels.
    plain = InferenceEngine(weights, device="cpu")
    assert plain.infer(None, thermal, output_size=(64, 96)).mask.shape == (64, 96)
    assert plain.infer(None, thermal).mask.shape == (32, 48)
    rgb, _ = _pair((64, 96), (8, 8))
    assert plain.infer(rgb, thermal, output_size=(64, 96)).mask.shape == (64, 96)
    with pytest.raises(ValueError, match=r"output_size \(60, 96\) differs from the RGB frame's \(64, 96\)"):
        plain.infer(rgb, thermal, output_size=(60, 96))
    with pytest.raises(ValueError, match="output_size must be positive"):
        plain.infer(None, thermal, output_size=(0, 96))
    with pytest.raises(ValueError, match="2 pairs but 1 output sizes"):
        plain.infer_batch([(None, thermal)] * 2, output_sizes=[(64, 96)])


@pytest.mark.parametrize(
    "rgb,thermal,problem",
    [
        (np.zeros((16, 16, 3), np.float32), None, "rgb must be uint8"),
        (np.zeros((16, 16, 4), np.uint8), None, "rgb must be HxWx3"),
        (None, np.zeros((16, 16, 2), np.uint16), "thermal must be HxW"),
        (None, np.zeros((16, 16), np.int64), "thermal must be uint8, uint16 or float32"),
        (np.zeros((0, 16, 3), np.uint8), None, "rgb has zero size"),
    ],
)
def test_bad_input_names_the_problem(engine, rgb, thermal, problem):
    with pytest.raises(ValueError, match=problem):
        engine.infer(rgb, thermal)


def test_device_and_precision_choices(weights):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            InferenceEngine(weights, device="cuda:0")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        InferenceEngine(weights, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        InferenceEngine(weights, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="score_threshold"):
        InferenceEngine(weights, device="cpu", score_threshold=1.5)

    auto = InferenceEngine(weights, device="cpu", precision="auto")
    assert auto.precision == resolve_precision("auto", "cpu") and auto.precision in ("bf16", "fp32")
    assert auto.compute_dtype == DTYPES[auto.precision]

    bf16 = InferenceEngine(weights, device="cpu", precision="bf16")
    rgb, thermal = _pair((64, 96), (64, 96))
    result = bf16.infer(rgb, thermal)
    assert result.mask.shape == (64, 96) and result.mask.dtype == np.uint8
    assert bf16.device == "cpu" and bf16.class_names == list(MFNET.names) and bf16.input_size == INPUT_SIZE


def test_from_model_and_release(weights):
    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=INPUT_SIZE)).train()
    engine = InferenceEngine.from_model(model, WeightsMetadata.for_model(model.cfg, MFNET), device="cpu")
    assert not model.training
    from_file = InferenceEngine(weights, device="cpu")
    rgb, thermal = _pair((64, 96), (64, 96), seed=7)
    assert np.array_equal(engine.infer(rgb, thermal).mask, from_file.infer(rgb, thermal).mask)
    # A bf16 engine stores its own copy's matmul weights in bf16; the caller's network stays fp32.
    bf16 = InferenceEngine.from_model(model, WeightsMetadata.for_model(model.cfg, MFNET), device="cpu",
                                      precision="bf16")
    assert bf16.model is not model and bf16.model.semantic_head is not model.semantic_head
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.bfloat16 in {p.dtype for p in bf16.model.parameters()}
    assert bf16.infer(rgb, thermal).mask.shape == (64, 96)
    engine.release()
    with pytest.raises(RuntimeError, match="released"):
        engine.infer(rgb, thermal)
