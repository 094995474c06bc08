"""Class text embeddings with the bundled MiniLM sentence-transformer (offline)."""
from __future__ import annotations

import pytest
import torch

from rgbt_perception.core.classes import MFNET, PST900
from training.cli.text_embed import main as text_embed_main
from training.text_embeddings import (
    MINILM_ENCODER,
    MiniLMTextEncoder,
    TextEmbeddingError,
    class_prompts,
    compute_text_embeddings,
    load_text_embeddings,
    read_text_embeddings_metadata,
)


@pytest.fixture(scope="module")
def mfnet_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("text") / "mfnet.safetensors")
    assert text_embed_main(["--classes", "mfnet", "--out", path]) == 0
    return path


def test_prompts_replace_underscores():
    assert class_prompts(["color_cone", "car"]) == ["a photo of a color cone", "a photo of a car"]
    with pytest.raises(TextEmbeddingError, match="prompt"):
        class_prompts(["car"], "no placeholder")


def test_cli_file_shape_encoder_and_metadata(mfnet_file):
    embeddings, encoder = load_text_embeddings(mfnet_file, MFNET.names)
    assert encoder == MINILM_ENCODER
    assert embeddings.shape == (MFNET.num_classes, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(MFNET.num_classes))
    metadata = read_text_embeddings_metadata(mfnet_file)
    assert metadata["class_names"] == list(MFNET.names) and metadata["dim"] == 384
    # Distinct classes get distinct embeddings; related ones are closer than unrelated ones.
    similarity = embeddings @ embeddings.T
    assert similarity.fill_diagonal_(0).max() < 0.99
    car, car_stop, person = (MFNET.names.index(n) for n in ("car", "car_stop", "person"))
    assert similarity[car, car_stop] > similarity[person, car_stop]
    with pytest.raises(TextEmbeddingError, match="are for classes"):
        load_text_embeddings(mfnet_file, PST900.names)


def test_deterministic_across_encoder_instances(mfnet_file):
    stored = load_text_embeddings(mfnet_file).embeddings
    again, name = compute_text_embeddings(MFNET.names, MiniLMTextEncoder())
    assert name == MINILM_ENCODER
    torch.testing.assert_close(again, stored, rtol=0, atol=1e-6)


def test_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert text_embed_main(["--classes", "mfnet", "--out", out, "--clip-weights", str(tmp_path / "none.pt")]) == 2
    assert "CLIP weights file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        text_embed_main(["--classes", "kitti", "--out", out])
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(TextEmbeddingError, match="unreadable"):
        load_text_embeddings(str(tmp_path / "bad.safetensors"))
