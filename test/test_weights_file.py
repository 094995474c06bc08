"""Node weights file: save/load round trip, metadata, and every way a file can be bad."""
from __future__ import annotations

import json
import os
import stat
import struct

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rgbt_perception.core.classes import MFNET, PST900
from rgbt_perception.core.preprocess import ThermalScaling
from rgbt_perception.io.weights import (
    FORMAT_VERSION,
    WeightsError,
    WeightsMetadata,
    load_weights,
    read_metadata,
    save_weights,
)
from rgbt_perception.model import ModelConfig, RGBTNet

INPUT_SIZE = (64, 96)


@pytest.fixture(scope="module")
def model() -> RGBTNet:
    torch.manual_seed(0)
    return RGBTNet(ModelConfig(variant="micro", num_classes=MFNET.num_classes, input_size=INPUT_SIZE)).eval()


@pytest.fixture(scope="module")
def metadata(model) -> WeightsMetadata:
    provenance = {"dataset": "synthetic", "epochs": 3, "metrics": {"miou": 0.25}, "text_encoder": "all-MiniLM-L6-v2"}
    return WeightsMetadata.for_model(model.cfg, MFNET, ThermalScaling("fixed", 27000, 33000), provenance)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, metadata) -> str:
    path = str(tmp_path_factory.mktemp("weights") / "micro.safetensors")
    save_weights(path, model, metadata)
    return path


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.rand(2, 3, *INPUT_SIZE, generator=generator), torch.rand(2, 1, *INPUT_SIZE, generator=generator)


def test_round_trip_gives_identical_outputs(model, metadata, saved):
    loaded, read_back = load_weights(saved)
    assert not loaded.training
    rgb, thermal = _inputs()
    with torch.inference_mode():
        before, after = model(rgb, thermal), loaded(rgb, thermal)
    assert torch.equal(before["semantic"], after["semantic"])
    for a, b in zip(before["boxes"]["cls"], after["boxes"]["cls"]):
        assert torch.equal(a, b)
    # Every tensor, frozen trunk included, is in the file.
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())

    assert read_back.class_names == list(MFNET.names) and read_back.palette == list(MFNET.palette)
    assert read_back.input_size == INPUT_SIZE and read_back.format_version == FORMAT_VERSION
    assert read_back.scaling == ThermalScaling("fixed", 27000, 33000)
    assert read_back.model_config == model.cfg
    assert read_back.provenance["epochs"] == 3 and read_back.provenance["metrics"] == {"miou": 0.25}
    assert read_back.provenance["created"].endswith("+00:00")
    assert read_metadata(saved) == read_back


def test_saved_file_is_readable_by_others(saved):
    # Written atomically through a temporary file, but with the usual permissions, not 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o666 & ~umask


def test_fp16_storage_halves_the_file_and_stays_close(tmp_path, model, metadata, saved):
    half = tmp_path / "half.safetensors"
    save_weights(half, model, metadata, storage="fp16")
    assert os.path.getsize(half) < 0.6 * os.path.getsize(saved)
    loaded, read_back = load_weights(half)
    assert read_back.provenance["storage"] == "fp16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rgb, thermal = _inputs()
    with torch.inference_mode():
        diff = (model(rgb, thermal)["semantic"] - loaded(rgb, thermal)["semantic"]).abs().max()
    assert 0 < float(diff) < 0.05


def test_save_rejects_inconsistent_metadata(tmp_path, model, metadata):
    wrong = WeightsMetadata.for_model(ModelConfig(variant="micro", num_classes=5, input_size=INPUT_SIZE), PST900)
    with pytest.raises(ValueError, match="does not match the model's config"):
        save_weights(tmp_path / "w.safetensors", model, wrong)
    with pytest.raises(ValueError, match="storage"):
        save_weights(tmp_path / "w.safetensors", model, metadata, storage="int8")


# ---------------------------------------------------------------------------------------------
# Bad files


def _rewrite(source: str, target: str, edit_metadata=None, edit_tensors=None) -> None:
    """Copy a weights file, changing its metadata and/or tensors (checksums follow the tensors
    only when ``edit_tensors`` is None, so tensor edits look like a consistent foreign file)."""
    from safetensors import safe_open

    with safe_open(source, "pt") as handle:
        extra = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if edit_metadata is not None:
        data = json.loads(extra["rgbt"])
        edit_metadata(data)
        extra["rgbt"] = json.dumps(data)
    if edit_tensors is not None:
        edit_tensors(tensors)
        extra.pop("rgbt_crc32")
    save_file(tensors, target, metadata=extra)


def _expect(path, problem: str) -> None:
    with pytest.raises(WeightsError, match=problem) as info:
        load_weights(path)
    assert os.fspath(path) in str(info.value)


def test_missing_file(tmp_path):
    _expect(tmp_path / "absent.safetensors", "file not found")
    with pytest.raises(WeightsError, match="file not found"):
        read_metadata(tmp_path / "absent.safetensors")


def test_not_a_weights_file(tmp_path, model):
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    _expect(png, "not a weights file: it is a PNG image")
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    _expect(pt, "not a weights file: it is a zip archive")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _expect(empty, "not a weights file: only 0 bytes")
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights, just some notes")
    _expect(text, "not a weights file")
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(3)}, str(bare))
    _expect(bare, "without rgbt_perception metadata")


def test_unknown_format_version(tmp_path, saved):
    future = str(tmp_path / "future.safetensors")
    _rewrite(saved, future, edit_metadata=lambda d: d.update(format_version=FORMAT_VERSION + 1))
    _expect(future, f"unknown format version {FORMAT_VERSION + 1}")
    with pytest.raises(WeightsError, match="unknown format version"):
        read_metadata(future)


def test_class_count_mismatch(tmp_path, saved):
    # Metadata (config and names) says 5 classes; the tensors were trained for 9.
    relabelled = str(tmp_path / "relabelled.safetensors")

    def as_pst900(data):
        data["model"]["num_classes"] = PST900.num_classes
        data["class_names"] = list(PST900.names)
        data["palette"] = [list(c) for c in PST900.palette]

    _rewrite(saved, relabelled, edit_metadata=as_pst900)
    _expect(relabelled, r"class-count mismatch: the metadata says 5 classes but tensor .* \(9 classes")

    names_only = str(tmp_path / "names_only.safetensors")

    def fewer_names(data):
        data["class_names"] = data["class_names"][:4]
        data["palette"] = data["palette"][:4]

    _rewrite(saved, names_only, edit_metadata=fewer_names)
    _expect(names_only, "class-count mismatch: the metadata lists 4 class names but the model config says 9")


def test_shape_mismatch_and_missing_or_unexpected_keys(tmp_path, saved):
    wider = str(tmp_path / "wider.safetensors")
    _rewrite(saved, wider, edit_metadata=lambda d: d["model"].update(neck_dim=32))
    _expect(wider, "shape mismatch in .* tensors")

    missing = str(tmp_path / "missing.safetensors")
    _rewrite(saved, missing, edit_tensors=lambda t: t.pop("semantic_head.class_tokens.weight"))
    _expect(missing, r"1 missing tensors, e.g. \['semantic_head.class_tokens.weight'\]")

    extra = str(tmp_path / "extra.safetensors")
    _rewrite(saved, extra, edit_tensors=lambda t: t.update(stowaway=torch.zeros(2)))
    _expect(extra, r"1 unexpected tensors, e.g. \['stowaway'\]")


def test_truncated(tmp_path, saved):
    data = open(saved, "rb").read()
    for keep, problem in ((len(data) - 1000, "truncated: tensor data needs"), (100, "truncated: the header needs")):
        cut = tmp_path / f"cut_{keep}.safetensors"
        cut.write_bytes(data[:keep])
        _expect(cut, problem)
        with pytest.raises(WeightsError, match="truncated"):
            read_metadata(cut)


def test_corrupted_bytes(tmp_path, saved):
    data = bytearray(open(saved, "rb").read())
    (header_bytes,) = struct.unpack("<Q", data[:8])
    flipped = bytearray(data)
    position = 8 + header_bytes + (len(data) - 8 - header_bytes) // 2
    flipped[position] ^= 0xFF
    damaged = tmp_path / "flipped.safetensors"
    damaged.write_bytes(bytes(flipped))
    _expect(damaged, "corrupted: checksum mismatch in 1 tensors")

    header_damage = bytearray(data)
    header_damage[8 + header_bytes // 2] = ord("\x01")
    broken = tmp_path / "header.safetensors"
    broken.write_bytes(bytes(header_damage))
    _expect(broken, "corrupted")

    grown = tmp_path / "grown.safetensors"
    grown.write_bytes(bytes(data) + b"\0" * 16)
    _expect(grown, "corrupted: 16 unexpected bytes")
