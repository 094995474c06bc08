"""Training configuration: dataclasses mirrored by the YAML files under ``config/train/``."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rgbt_perception.core.defaults import RUN_INPUTS, WEIGHT_STORAGES
from rgbt_perception.model.config import ModelConfig, check_network_size
from training.config_file import ConfigFile
from training.datasets import check_mix_entries
from training.datasets.registry import dataset_kinds, has_split
from training.losses import LossWeights

AMP_MODES = ("auto", "off", "bf16", "fp16")


# Holdout fraction used when data.val_split is "val" but the data set ships no validation split.
DEFAULT_VAL_HOLDOUT = 0.1
SELECT_METRICS = ("auto", "miou", "map_50")
# The network input (H, W) of a config whose model section names none.
DEFAULT_INPUT_SIZE = ModelConfig.input_size


@dataclass
class DataConfig:
    # A registered data-set kind (training.datasets.registry): mfnet, synthetic, pst900, llvip, ...
    dataset: str = "synthetic"
    root: str = ""
    train_split: str = "train"
    # Split the best checkpoint is selected on. "holdout" = a seeded val_holdout fraction of
    # train_split kept out of training. A data set without a validation split (PST900, FMB, LLVIP,
    # KAIST) asked for "val" gets "holdout" with val_holdout (0.1 when left at 0) instead.
    val_split: str = "val"
    val_holdout: float = 0.0
    # More training sets, each seen through this data set's class list (training.datasets.mix):
    # [{dataset, root, split?, classes?, drop_unmatched?, repeat?, options?}, ...]. Box-only sets
    # (no masks) mix with mask sets; their samples train the box path only.
    mix: list[dict[str, Any]] = field(default_factory=list)
    # Seeded fraction of the labelled training set (label-efficiency experiments).
    train_fraction: float = 1.0
    batch_size: int = 8
    # (H, W) the whole training frame is resized to (times the augmentation's scale, then cropped or
    # padded back to it); empty = model.input_size, the size validation and the exported weights run
    # at. A network trained with scale augmentation copes with a somewhat larger input than its
    # training size, where thin structures cover more pixels (FixRes, Touvron et al. 2019), for less
    # training compute. Multiples of 32 (the network's own constraint).
    train_size: list[int] = field(default_factory=list)
    num_workers: int = 2
    # Keyword arguments of the data set's training transform (scale range, flip, ...).
    augment: dict[str, Any] = field(default_factory=dict)
    # ThermalScaling as a dict; empty = the preprocess module's default.
    thermal_scaling: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    # Linear warm-up length in optimizer steps; -1 = sized to the run (training.optim.warmup_steps):
    # 2 / (1 - beta2) steps (2000 for AdamW's 0.999), at most warmup_fraction of all steps.
    warmup_iters: int = -1
    warmup_fraction: float = 0.1
    warmup_ratio: float = 1e-3  # lr at step 0, relative to lr
    poly_power: float = 0.9
    min_lr: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float = 0.0  # 0 = off
    # Steps skipped for a NaN/infinite loss or gradient before the run stops (0: stop at the first).
    max_nonfinite_steps: int = 20
    # Learning-rate multipliers by parameter-name prefix, e.g. {"fusion.": 2.0}.
    lr_mult: dict[str, float] = field(default_factory=dict)
    # Parameters kept fixed whatever the trunk policy: regular expressions searched in each name,
    # e.g. ["lora_"] with model.trunk frozen trains necks, fusion and heads alone.
    freeze: list[str] = field(default_factory=list)


@dataclass
class InitConfig:
    sam2: str = ""  # Meta SAM2 .pt checkpoint for the trunk (and the decoder transformer)
    adapters: str = ""  # adapter/fusion weights from label-free pretraining (matching keys)


@dataclass
class TrainConfig(ConfigFile):
    SECTIONS: ClassVar[dict[str, type]] = {"data": DataConfig, "optim": OptimConfig, "loss": LossWeights,
                                           "init": InitConfig}
    # Files and checkpoints written before the rename call run_inputs "modalities".
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"modalities": "run_inputs"}

    name: str = "run"
    out_dir: str = "runs/run"
    model: dict[str, Any] = field(default_factory=lambda: {"variant": "micro"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    init: InitConfig = field(default_factory=InitConfig)
    epochs: int = 50
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto = bf16 on GPUs that support it, else fp16; off on CPU
    # The cameras the network is fed while training and validating: both, rgb or thermal.
    run_inputs: str = "both"
    # Per-sample probability of dropping one modality (which one is drawn at random).
    modality_dropout: float = 0.0
    eval_every: int = 1
    checkpoint_every: int = 1
    log_every: int = 10
    max_eval_samples: int = 0  # 0 = the whole validation split
    text_embeddings: str = ""  # .safetensors/.npy from rgbt-text-embed; empty = no language loss
    export: str = ""  # weights file written from the best checkpoint at the end; empty = none
    export_storage: str = "fp32"  # tensor storage of that file: fp32 or fp16 (half the size)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # Validation score that picks best.pt: "miou", "map_50" (box mAP@0.5) or "auto" (mIoU when the
    # data set has masks, mAP@0.5 for the box-only detection sets).
    select_on: str = "auto"

    def __post_init__(self) -> None:
        self.resolve_val_split()
        self.validate()

    def resolve_val_split(self) -> None:
        """``val_split: val`` on a data set without one becomes a seeded holdout of the train split."""
        if self.data.val_split == "val" and not has_split(self.data.dataset, "val"):
            self.data.val_split = "holdout"
            self.data.val_holdout = self.data.val_holdout or DEFAULT_VAL_HOLDOUT

    def validate(self) -> None:
        if self.data.dataset not in dataset_kinds():
            raise ValueError(f"data.dataset must be one of {', '.join(dataset_kinds())}, got {self.data.dataset!r}")
        self.data.mix = check_mix_entries(self.data.mix)
        if self.select_on not in SELECT_METRICS:
            raise ValueError(f"select_on must be one of {SELECT_METRICS}, got {self.select_on!r}")
        if self.run_inputs not in RUN_INPUTS:
            raise ValueError(f"run_inputs must be one of {RUN_INPUTS}, got {self.run_inputs!r}")
        if self.export_storage not in WEIGHT_STORAGES:
            raise ValueError(f"export_storage must be one of {WEIGHT_STORAGES}, got {self.export_storage!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0.0 < self.data.train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {self.data.train_fraction}")
        if self.data.val_split == "test":
            raise ValueError("data.val_split must not be the test split (checkpoints are selected on it); "
                             "use val, or holdout with data.val_holdout for data sets without a validation split")
        if self.data.val_split == "holdout" and not 0.0 < self.data.val_holdout < 1.0:
            raise ValueError(f"data.val_split=holdout needs 0 < data.val_holdout < 1, got {self.data.val_holdout}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.optim.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.optim.grad_accum}")
        if self.optim.warmup_iters < -1 or not 0.0 <= self.optim.warmup_fraction < 1.0:
            raise ValueError("optim.warmup_iters must be >= 0 (or -1: sized to the run) and optim.warmup_fraction "
                             f"in [0, 1), got {self.optim.warmup_iters} and {self.optim.warmup_fraction}")
        if self.optim.max_nonfinite_steps < 0:
            raise ValueError(f"optim.max_nonfinite_steps must be >= 0, got {self.optim.max_nonfinite_steps}")
        for pattern in self.optim.freeze:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ValueError(f"optim.freeze: {pattern!r} is not a regular expression ({err})") from None
        if self.data.train_size:
            check_network_size(self.data.train_size, "data.train_size")
        if self.epochs < 1 or self.data.batch_size < 1:
            raise ValueError("epochs and data.batch_size must be >= 1")



def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config; errors name the file and the key."""
    return TrainConfig.load(path, overrides)
