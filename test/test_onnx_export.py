"""ONNX export of RGBTNet: onnxruntime reproduces PyTorch's outputs on the micro model."""
from __future__ import annotations

import onnx
import pytest
import torch

from rgbt_perception.model import ModelConfig, RGBTNet
from rgbt_perception.model.onnx_export import (
    OnnxExportError,
    example_inputs,
    export_onnx,
    flatten_outputs,
    nest_outputs,
    onnx_session,
)

SIZE = (64, 96)


@pytest.fixture(scope="module")
def model() -> RGBTNet:
    torch.manual_seed(0)
    net = RGBTNet(ModelConfig(variant="micro", num_classes=9, input_size=SIZE)).eval()
    # LoRA B factors start at zero; make both adapters matter so the parity covers them.
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    return net


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "micro.onnx"
    return export_onnx(model, path)


def test_onnxruntime_matches_pytorch(model, exported):
    assert exported.opset >= 17 and exported.input_size == SIZE
    assert exported.semantic_max_abs_diff < 1e-3
    assert set(exported.max_abs_diff) == set(exported.output_names)
    assert max(exported.max_abs_diff.values()) < 1e-3
    graph = onnx.load(exported.path)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["rgb", "thermal"]
    assert graph.opset_import[0].version == exported.opset
    # The caller's model is untouched (a copy is exported).
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_onnx_outputs_decode_to_the_same_detections(model, exported):
    rgb, thermal = example_inputs(SIZE, seed=3)  # other inputs than the ones traced
    with torch.inference_mode():
        reference = model(rgb, thermal)
    session = onnx_session(exported.path, threads=1)
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(None, {"rgb": rgb.numpy(), "thermal": thermal.numpy()})
    produced = {name: torch.from_numpy(a) for name, a in zip(names, arrays)}

    assert names == exported.output_names
    assert produced["semantic"].shape == (1, 9, SIZE[0] // 4, SIZE[1] // 4)
    assert torch.allclose(produced["semantic"], reference["semantic"], atol=1e-3)
    # Logits differ between the two modalities' adapters, so thermal really reaches the graph.
    rgb2, thermal2 = rgb, torch.rand_like(thermal)
    other = session.run(["semantic"], {"rgb": rgb2.numpy(), "thermal": thermal2.numpy()})[0]
    assert float(abs(torch.from_numpy(other) - produced["semantic"]).max()) > 1e-4

    boxes = nest_outputs(produced, "boxes")
    assert set(boxes) == set(reference["boxes"])
    kwargs = dict(score_threshold=0.0, nms_iou=0.5, max_detections=20)
    from_onnx = model.box_head.decode(boxes, **kwargs)[0]
    from_torch = model.box_head.decode(reference["boxes"], **kwargs)[0]
    assert len(from_torch["boxes"]) > 0
    assert torch.equal(from_onnx["labels"], from_torch["labels"])
    assert torch.allclose(from_onnx["boxes"], from_torch["boxes"], atol=1e-2)


def test_flatten_and_nest_are_inverse():
    tree = {"cls": [torch.zeros(1), torch.ones(1)], "reg": [torch.full((1,), 2.0)]}
    flat = dict(flatten_outputs(tree, "boxes"))
    assert list(flat) == ["boxes.cls.0", "boxes.cls.1", "boxes.reg.0"]
    nested = nest_outputs(flat, "boxes")
    assert [float(t) for t in nested["cls"]] == [0.0, 1.0] and float(nested["reg"][0]) == 2.0
    with pytest.raises(KeyError, match="no output named"):
        nest_outputs(flat, "semantic")
    with pytest.raises(OnnxExportError, match="not a tensor"):
        flatten_outputs({"x": "text"}, "boxes")


@pytest.mark.parametrize("kwargs, problem", [({"opset": 13}, "opset"), ({"input_size": (60, 96)}, "multiples of 32")])
def test_bad_export_arguments(model, tmp_path, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        export_onnx(model, tmp_path / "x.onnx", **kwargs)
