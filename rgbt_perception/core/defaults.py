"""Every default and name shared by more than one part of the package, in one place.

The node, the command-line tools, evaluation, benchmarks and training read these; nothing else
writes them down again. No imports beyond the standard library, so ``--help`` stays fast and the
torch-free onnxruntime path can use it.
"""
from __future__ import annotations

# -- cameras and network branches --------------------------------------------------------------
#: The two cameras, in the order the network, the node and the pairing use them.
CAMERAS = ("rgb", "thermal")
#: The network's output branches: fused, and one per camera (per-camera supervision).
BRANCHES = ("fused", "rgb", "thermal")
#: What a training run feeds the network (training's ``run_inputs``): both cameras or one.
RUN_INPUTS = ("both", "rgb", "thermal")

# -- engines ------------------------------------------------------------------------------------
#: Concrete inference backends; ``auto`` picks the fastest available one.
#: ``torch_resident``/``torch_graphs``/``torch_compiled``: the whole per-frame step on the device (eager,
#: replayed as a CUDA graph, compiled network + graph).
BACKENDS = ("torch", "onnxruntime", "tensorrt", "torch_resident", "torch_graphs", "torch_compiled")
BACKEND_CHOICES = (*BACKENDS, "auto")
#: Inference precisions; ``auto`` picks per device.
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_CHOICES = (*PRECISIONS, "auto")
#: Tensor storage of a node weights file (fp16 halves it; loading casts back to fp32).
WEIGHT_STORAGES = ("fp32", "fp16")

# -- boxes --------------------------------------------------------------------------------------
#: Lowest score of a box that is published (node), written (``rgbt-infer``) or drawn (reports).
PUBLISH_SCORE_THRESHOLD = 0.4
#: Lowest score of a box kept for scoring: box mAP needs the whole score range.
MAP_SCORE_THRESHOLD = 0.05
#: IoU above which class-wise NMS suppresses the lower-scoring box.
NMS_IOU = 0.5
#: At most this many boxes per frame, and per class.
MAX_DETECTIONS = 100
MAX_PER_CLASS = 20

# -- pairing --------------------------------------------------------------------------------------
#: Largest RGB/thermal stamp difference of a pair, seconds (30 Hz RGB, thermal arriving late).
SYNC_SLOP = 0.05
#: Messages kept per camera while waiting for a partner.
SYNC_QUEUE_SIZE = 10
#: A stamp this many seconds older than its stream's newest is a jump back (a looped bag, a restart).
JUMP_BACK_THRESHOLD_S = 1.0
