"""The ONNX graph of a weights file, built on first use: :func:`ensure_graph`.

Looking it up needs no torch (:mod:`rgbt_perception.backends.onnx_cache`). Building needs it: in a
process that has already loaded torch the build runs in-process, otherwise in a child process
(``python -m rgbt_perception.backends.onnx_build``), so the caller itself stays torch-free.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Sequence

from rgbt_perception.backends.onnx_cache import (
    CachedGraph,
    build_command,
    build_dir,
    cache_key,
    code_fingerprint,
    file_sha256,
    find_cached,
    graph_name,
    prune_stale,
)
from rgbt_perception.backends.selection import BackendError


def ensure_graph(
    weights: str | os.PathLike,
    input_size: Sequence[int],
    precision: str = "fp32",
    device: str = "cpu",
    in_process: bool | None = None,
    log: Any = None,
) -> CachedGraph:
    """The cached ONNX graph of ``weights`` at ``input_size`` and ``precision``, built if missing.

    Args:
        device: where the build traces the network (``cuda`` for fp16 graphs when available).
        in_process: build in this process (``None``: only if torch is already imported here).
        log: optional ``callable(str)`` told about a build.

    Raises:
        BackendError: the build or its parity check failed (the message names the step).
    """
    if precision not in ("fp32", "fp16"):
        raise BackendError(f"ONNX graphs are built in fp32 or fp16, not {precision}")
    weights_sha = file_sha256(weights)
    fingerprint = code_fingerprint()
    key = cache_key(weights_sha, input_size, precision, fingerprint)
    found = find_cached(weights, input_size, precision, key)
    if found is not None:
        return found
    directory = build_dir(weights)
    onnx_path = directory / graph_name(weights, input_size, precision, key)
    if log is not None:
        log(f"building the ONNX graph of {os.fspath(weights)!r} at {input_size[0]}x{input_size[1]} {precision} "
            f"into {str(onnx_path)!r} (once per weights file)")
    started = time.perf_counter()
    if in_process is None:
        in_process = "torch" in sys.modules
    if in_process:
        from rgbt_perception.backends.onnx_build import build_graph

        build_graph(weights, input_size, precision, device, onnx_path, key)
    else:
        command = build_command(weights, input_size, precision, device, onnx_path, key)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise BackendError(f"building the ONNX graph failed (exit {result.returncode}): {' | '.join(tail)}")
    found = find_cached(weights, input_size, precision, key)
    if found is None:
        raise BackendError(f"the ONNX build finished but left no valid graph at {str(onnx_path)!r}")
    prune_stale(directory, weights, input_size, precision, key)
    if log is not None:
        log(f"ONNX graph built in {time.perf_counter() - started:.1f} s; parity against PyTorch: "
            f"{found.info.get('parity', {}).get('summary', 'n/a')}")
    return found
