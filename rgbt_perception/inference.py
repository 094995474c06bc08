"""The public face of inference: raw RGB + thermal frames in; class mask, detections and overlay out.

:func:`create_engine` makes the engine of any backend for a weights file; :class:`InferenceEngine` is
the PyTorch one (also made around an in-memory model with ``InferenceEngine.from_model``). Every
engine implements :class:`Engine` and shares registration, preprocessing and post-processing
(:mod:`rgbt_perception.backends.base`).
"""
from rgbt_perception.backends.base import DecodeSettings, Engine
from rgbt_perception.backends.factory import create_engine
from rgbt_perception.backends.torch_engine import InferenceEngine
from rgbt_perception.core.device import resolve_device
from rgbt_perception.core.frames import Detection, Homography, InferenceResult

__all__ = ["DecodeSettings", "Detection", "Engine", "Homography", "InferenceEngine", "InferenceResult",
           "create_engine", "resolve_device"]
