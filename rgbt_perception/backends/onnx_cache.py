"""The ONNX file of a weights file: where it is cached, how it is keyed, and building it on first use.

An exported graph is stored beside the weights file (``<stem>.<H>x<W>.<precision>.<key>.onnx``), or,
when that folder is not writable, in the user cache (``$RGBT_CACHE_DIR``, else
``$XDG_CACHE_HOME/rgbt_perception/onnx``, else ``~/.cache/rgbt_perception/onnx``). Next to it a JSON
sidecar records what the torch-free runtime needs (input and output names, box strides, decoding
defaults) and the parity against PyTorch measured when it was built.

The key is a SHA-256 over the weights file's bytes, the input size, the precision, and the code that
defines the graph (the model package's sources, the exporter, the versions of torch, timm and peft),
so a changed weights file or a changed network never reuses a stale graph. Finding (or building) the
graph of a weights file: :func:`rgbt_perception.backends.onnx_graph.ensure_graph`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rgbt_perception.backends.selection import BackendError

CACHE_FORMAT = 1
KEY_CHARS = 16
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_GRAPH_SOURCES = ("model", "backends/onnx_build.py")
_VERSIONED = ("torch", "timm", "peft")


@dataclass(frozen=True)
class CachedGraph:
    """One cached ONNX graph: its file, its sidecar and the sidecar's contents."""

    onnx_path: Path
    sidecar_path: Path
    info: dict[str, Any]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def code_fingerprint() -> str:
    """SHA-256 over the sources that define the exported graph and the versions of the libraries
    that trace it (the model package, the exporter, torch, timm, peft)."""
    digest = hashlib.sha256()
    for relative in _GRAPH_SOURCES:
        root = _PACKAGE_ROOT / relative
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for source in files:
            digest.update(str(source.relative_to(_PACKAGE_ROOT)).encode())
            digest.update(source.read_bytes())
    for name in _VERSIONED:
        try:
            digest.update(f"{name}={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    return digest.hexdigest()


def cache_key(weights_sha256: str, input_size: Sequence[int], precision: str, fingerprint: str | None = None) -> str:
    """The key of one graph (hex, :data:`KEY_CHARS` characters)."""
    height, width = (int(v) for v in input_size)
    text = f"{CACHE_FORMAT}|{weights_sha256}|{height}x{width}|{precision}|{fingerprint or code_fingerprint()}"
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def user_cache_dir() -> Path:
    """``$RGBT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rgbt_perception/onnx``, else ``~/.cache/rgbt_perception/onnx``."""
    if os.environ.get("RGBT_CACHE_DIR"):
        return Path(os.environ["RGBT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rgbt_perception" / "onnx"


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def candidate_dirs(weights: str | os.PathLike) -> list[Path]:
    """Where a graph of ``weights`` may be cached: beside it, then the user cache."""
    return [Path(weights).expanduser().resolve().parent, user_cache_dir()]


def graph_name(weights: str | os.PathLike, input_size: Sequence[int], precision: str, key: str) -> str:
    height, width = (int(v) for v in input_size)
    return f"{Path(weights).stem}.{height}x{width}.{precision}.{key}.onnx"


def _load_sidecar(onnx_path: Path, key: str) -> CachedGraph | None:
    sidecar = onnx_path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text())
        size = onnx_path.stat().st_size
    except (OSError, ValueError):
        return None
    if info.get("format") != CACHE_FORMAT or info.get("key") != key or info.get("onnx_bytes") != size:
        return None
    return CachedGraph(onnx_path, sidecar, info)


def find_cached(weights: str | os.PathLike, input_size: Sequence[int], precision: str, key: str) -> CachedGraph | None:
    """The cached graph of ``key`` (beside the weights, then in the user cache), or ``None``."""
    name = graph_name(weights, input_size, precision, key)
    for directory in candidate_dirs(weights):
        found = _load_sidecar(directory / name, key)
        if found is not None:
            return found
    return None


def build_dir(weights: str | os.PathLike) -> Path:
    """Where a new graph goes: beside the weights if that folder is writable, else the user cache."""
    beside, cache = candidate_dirs(weights)
    if _writable(beside):
        return beside
    cache.mkdir(parents=True, exist_ok=True)
    if not _writable(cache):
        raise BackendError(f"cannot cache the ONNX graph: neither {str(beside)!r} nor {str(cache)!r} is writable "
                           "(set RGBT_CACHE_DIR to a writable folder)")
    return cache


def prune_stale(directory: Path, weights: str | os.PathLike, input_size: Sequence[int], precision: str,
                keep: str) -> list[Path]:
    """Remove graphs of the same weights name, size and precision with another key (a replaced
    weights file or older code); returns the removed files."""
    stem = graph_name(weights, input_size, precision, "KEY").rsplit("KEY", 1)[0]
    removed = []
    for path in directory.glob(f"{stem}*.onnx"):
        if path.name != graph_name(weights, input_size, precision, keep):
            for stale in (path, path.with_suffix(".json")):
                try:
                    stale.unlink()
                    removed.append(stale)
                except OSError:
                    pass
    return removed


def build_command(weights: str | os.PathLike, input_size: Sequence[int], precision: str, device: str,
                  onnx_path: Path, key: str) -> list[str]:
    height, width = (int(v) for v in input_size)
    return [sys.executable, "-m", "rgbt_perception.backends.onnx_build", os.fspath(weights),
            "--input-size", f"{height}x{width}", "--precision", precision, "--device", device,
            "--out", os.fspath(onnx_path), "--key", key]


def write_sidecar(onnx_path: Path, info: dict[str, Any]) -> Path:
    """Write the sidecar of a finished graph (last, so a graph without one is never used)."""
    from rgbt_perception.io.files import atomic_path

    sidecar = onnx_path.with_suffix(".json")
    record = {"format": CACHE_FORMAT, "onnx_bytes": onnx_path.stat().st_size,
              "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **info}
    with atomic_path(sidecar, suffix=".json.tmp") as tmp:
        with open(tmp, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
    return sidecar
