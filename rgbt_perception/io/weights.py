"""Node weights file and import of published SAM2 checkpoints.

A node weights file is one ``.safetensors`` holding every tensor of an :class:`RGBTNet` (trunk
included) plus ``__metadata__``:

- ``"rgbt"``: JSON of :class:`WeightsMetadata` (model config with its ``design`` and trunk policy
  ``trunk``, classes, palette, input size, thermal scaling, provenance);
- ``"rgbt_crc32"``: JSON ``{tensor name: CRC-32 of its bytes}``, so flipped bytes in tensor
  data are caught at load time instead of producing silently wrong masks.

Every failure to read such a file raises :class:`WeightsError` naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from safetensors import SafetensorError

from rgbt_perception.core.classes import ClassSet
from rgbt_perception.core.defaults import WEIGHT_STORAGES
from rgbt_perception.core.preprocess import ThermalScaling
from rgbt_perception.io.files import atomic_path

if TYPE_CHECKING:
    # Loaded where tensors are read or written: read_metadata runs without torch and the model
    # package (the onnxruntime backend's process never imports them).
    import torch

    from rgbt_perception.model.config import ModelConfig
    from rgbt_perception.model.network import RGBTNet

FORMAT_VERSION = 1
METADATA_KEY = "rgbt"
CHECKSUM_KEY = "rgbt_crc32"
STORAGE_DTYPES = WEIGHT_STORAGES

# A safetensors header is JSON; anything claiming more than this is not one.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAGIC_NAMES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a zip archive (a PyTorch .pt checkpoint?)",
    b"\x80": "a pickle (a legacy PyTorch checkpoint?)",
}


class WeightsError(ValueError):
    """A weights file is missing, of the wrong kind, inconsistent or damaged."""


@dataclass(kw_only=True)
class WeightsMetadata:
    """Everything besides tensors that inference needs, stored in the weights file.

    ``provenance`` records where the weights came from: ``dataset``, ``epochs``, ``metrics``,
    ``text_encoder``, ``created`` (UTC ISO time, filled in by :func:`save_weights`).
    """

    format_version: int = FORMAT_VERSION
    model: dict[str, Any]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    input_size: tuple[int, int]
    thermal_scaling: dict[str, Any] = field(default_factory=lambda: ThermalScaling().to_dict())
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(name) for name in self.class_names]
        self.palette = [tuple(int(c) for c in colour) for colour in self.palette]
        self.input_size = tuple(int(v) for v in self.input_size)
        if len(self.palette) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.palette)} palette colours")
        if any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for colour in self.palette):
            raise ValueError("palette colours must be (r, g, b) triples in 0..255")
        if len(self.input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {self.input_size}")
        ThermalScaling.from_dict(self.thermal_scaling)

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        class_set: ClassSet,
        thermal_scaling: ThermalScaling = ThermalScaling(),
        provenance: Mapping[str, Any] | None = None,
    ) -> "WeightsMetadata":
        """Metadata for a model trained on ``class_set``."""
        return cls(
            model=config.to_dict(),
            class_names=list(class_set.names),
            palette=[tuple(c) for c in class_set.palette],
            input_size=tuple(config.input_size),
            thermal_scaling=thermal_scaling.to_dict(),
            provenance=dict(provenance or {}),
        )

    @property
    def model_config(self) -> ModelConfig:
        """The stored model config; ``ValueError`` for a design this software cannot build.

        Files written before model design 2 carry no ``design`` key (their metadata still reads).
        """
        from rgbt_perception.model.config import BUILDABLE_DESIGNS, MODEL_DESIGN, ModelConfig

        if "design" not in self.model:
            designs = " and ".join(str(d) for d in BUILDABLE_DESIGNS)
            raise ValueError(
                f"model design 1 (weights made before design {MODEL_DESIGN}: 3x3 necks, one fusion for both "
                f"heads); this software builds designs {designs}: retrain and re-export the weights"
            )
        return ModelConfig.from_dict(dict(self.model))

    @property
    def trunk_policy(self) -> str:
        """How the trunk was trained: ``"frozen"`` (LoRA only) or ``"full"``; design 1 was always frozen."""
        if "design" not in self.model:
            return "frozen"
        return self.model_config.trunk

    @property
    def scaling(self) -> ThermalScaling:
        return ThermalScaling.from_dict(self.thermal_scaling)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["palette"] = [list(c) for c in self.palette]
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WeightsMetadata":
        if not isinstance(data, Mapping):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown metadata keys {unknown}")
        missing = sorted(n for n in ("model", "class_names", "palette", "input_size") if n not in data)
        if missing:
            raise ValueError(f"metadata lacks {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Reading and validating the file


def _fail(path: str | os.PathLike, problem: str) -> WeightsError:
    return WeightsError(f"weights file {os.fspath(path)!r}: {problem}")


def _describe_foreign(head: bytes) -> str:
    for magic, what in _MAGIC_NAMES.items():
        if head.startswith(magic):
            return f"not a weights file: it is {what}, not a .safetensors file"
    return "not a weights file: no safetensors header"


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int, int]:
    """Parse the safetensors header; returns ``(header, header_bytes, file_bytes)``."""
    if not os.path.exists(path):
        raise _fail(path, "file not found")
    if not os.path.isfile(path):
        raise _fail(path, "not a regular file")
    file_bytes = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _fail(path, f"not a weights file: only {file_bytes} bytes (empty or truncated)")
        (header_bytes,) = struct.unpack("<Q", head)
        raw = handle.read(min(header_bytes, _MAX_HEADER_BYTES))
    if header_bytes > _MAX_HEADER_BYTES or raw[:1] != b"{":
        raise _fail(path, _describe_foreign(head))
    if len(raw) < header_bytes:
        raise _fail(path, f"truncated: the header needs {header_bytes} bytes, the file holds {len(raw)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _fail(path, "corrupted: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a weights file: the safetensors header is not a JSON object")
    return header, header_bytes, file_bytes


def _check_data_extent(path: str | os.PathLike, header: dict[str, Any], header_bytes: int, file_bytes: int) -> None:
    try:
        needed = max((int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise _fail(path, "corrupted: malformed tensor table in the header") from None
    available = file_bytes - 8 - header_bytes
    if needed > available:
        raise _fail(path, f"truncated: tensor data needs {needed} bytes, the file holds {available}")
    if needed < available:
        raise _fail(path, f"corrupted: {available - needed} unexpected bytes after the tensor data")


def _metadata_from_header(path: str | os.PathLike, header: dict[str, Any]) -> WeightsMetadata:
    extra = header.get("__metadata__") or {}
    if METADATA_KEY not in extra:
        raise _fail(path, "not a node weights file: a .safetensors file without rgbt_perception metadata "
                          "(a bare checkpoint? import it with import_sam2_checkpoint or rgbt-export)")
    try:
        data = json.loads(extra[METADATA_KEY])
    except json.JSONDecodeError:
        raise _fail(path, "corrupted: the metadata is not valid JSON") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise _fail(path, f"unknown format version {version!r} (this software reads version {FORMAT_VERSION})")
    try:
        return WeightsMetadata.from_dict(data)
    except ValueError as exc:
        raise _fail(path, f"invalid metadata: {exc}") from None


def read_metadata(path: str | os.PathLike) -> WeightsMetadata:
    """Read and validate the metadata of a weights file without loading its tensors."""
    header, header_bytes, file_bytes = _read_header(path)
    metadata = _metadata_from_header(path, header)
    _check_data_extent(path, header, header_bytes, file_bytes)
    return metadata


def _tensor_crc32(tensor: torch.Tensor) -> int:
    import torch

    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(raw.cpu().numpy().data)


def _class_count_in_tensor(expected: torch.Size, found: torch.Size, num_classes: int) -> int | None:
    """If ``found`` differs from ``expected`` only in one dimension that equals the class count,
    return the class count the tensor was built for."""
    if len(expected) != len(found):
        return None
    diffs = [i for i, (e, f) in enumerate(zip(expected, found)) if e != f]
    if len(diffs) == 1 and expected[diffs[0]] == num_classes:
        return int(found[diffs[0]])
    return None


def _check_against_model(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], num_classes: int
) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    for key in mismatched:
        file_classes = _class_count_in_tensor(expected[key].shape, tensors[key].shape, num_classes)
        if file_classes is not None:
            raise _fail(
                path,
                f"class-count mismatch: the metadata says {num_classes} classes but tensor {key!r} has shape "
                f"{tuple(tensors[key].shape)} ({file_classes} classes; the model expects {tuple(expected[key].shape)})",
            )
    problems = []
    if mismatched:
        shown = ", ".join(f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:5])
        problems.append(f"shape mismatch in {len(mismatched)} tensors (file vs model config): {shown}")
    if missing:
        problems.append(f"{len(missing)} missing tensors, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:5]}")
    if problems:
        raise _fail(path, "does not match its model config: " + "; ".join(problems))


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[RGBTNet, WeightsMetadata]:
    """Build the network described by a weights file and load its tensors.

    Returns:
        ``(model in eval mode on device, metadata)``.

    Raises:
        WeightsError: missing file, not a weights file, unknown format version, class-count or
            shape mismatch, truncated or corrupted file.
    """
    header, header_bytes, file_bytes = _read_header(path)
    metadata = _metadata_from_header(path, header)
    _check_data_extent(path, header, header_bytes, file_bytes)
    try:
        config = metadata.model_config
    except ValueError as exc:
        raise _fail(path, f"invalid model config: {exc}") from None
    if config.num_classes != len(metadata.class_names):
        raise _fail(
            path,
            f"class-count mismatch: the metadata lists {len(metadata.class_names)} class names but the model "
            f"config says {config.num_classes} classes",
        )
    from safetensors.torch import load_file

    from rgbt_perception.model.network import RGBTNet

    try:
        tensors = load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise _fail(path, f"corrupted: {exc}") from None
    checksums = _stored_checksums(path, header)
    damaged = sorted(k for k, v in tensors.items() if k in checksums and _tensor_crc32(v) != checksums[k])
    if damaged:
        raise _fail(path, f"corrupted: checksum mismatch in {len(damaged)} tensors, e.g. {damaged[:3]}")
    try:
        model = RGBTNet(config)
    except ValueError as exc:
        raise _fail(path, f"invalid model config: {exc}") from None
    expected = model.state_dict()
    _check_against_model(path, tensors, expected, config.num_classes)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model.to(device), metadata


def _stored_checksums(path: str | os.PathLike, header: dict[str, Any]) -> dict[str, int]:
    raw = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    if raw is None:
        return {}
    try:
        checksums = json.loads(raw)
        return {str(k): int(v) for k, v in checksums.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise _fail(path, "corrupted: the checksum table is not valid JSON") from None


# --------------------------------------------------------------------------------------------
# Writing


def save_weights(
    path: str | os.PathLike,
    model: RGBTNet,
    metadata: WeightsMetadata,
    storage: str = "fp32",
) -> None:
    """Write ``model`` (every tensor, frozen trunk included) and ``metadata`` to ``path``.

    Args:
        storage: ``"fp32"`` or ``"fp16"`` (floating tensors stored in half precision; loading
            casts them back into the fp32 model).
    """
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {sorted(STORAGE_DTYPES)}, got {storage!r}")
    config = getattr(model, "cfg", None)
    if config is not None and config.to_dict() != dict(metadata.model):
        raise ValueError("metadata.model does not match the model's config")
    if len(metadata.class_names) != metadata.model_config.num_classes:
        raise ValueError(
            f"metadata lists {len(metadata.class_names)} class names but the model has "
            f"{metadata.model.get('num_classes')} classes"
        )
    import torch
    from safetensors.torch import save_file

    storage_dtype = {"fp32": torch.float32, "fp16": torch.float16}[storage]
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(storage_dtype)
        pointer = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied weights, views).
        tensor = tensor.clone() if pointer in seen_storage else tensor.contiguous()
        seen_storage.add(pointer)
        tensors[name] = tensor
    record = dataclasses.replace(metadata, provenance=dict(metadata.provenance))
    record.provenance.setdefault("created", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    record.provenance.setdefault("storage", storage)
    extra = {
        METADATA_KEY: json.dumps(record.to_dict(), sort_keys=True),
        CHECKSUM_KEY: json.dumps({k: _tensor_crc32(v) for k, v in tensors.items()}, sort_keys=True),
    }
    with atomic_path(path, suffix=".safetensors.tmp") as tmp_path:
        save_file(tensors, tmp_path, metadata=extra)
