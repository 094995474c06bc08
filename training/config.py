"""Training configuration: dataclasses mirrored by the YAML files under ``config/train/``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from rgbt_perception.model.config import ModelConfig, check_network_size
from training.config_file import build_dataclass, read_config
from training.datasets import DATASET_KINDS, check_mix_entries, has_split
from training.losses import LossWeights

MODALITIES = ("both", "rgb", "thermal")
AMP_MODES = ("auto", "off", "bf16", "fp16")


# Holdout fraction used when data.val_split is "val" but the data set ships no validation split.
DEFAULT_VAL_HOLDOUT = 0.1
SELECT_METRICS = ("auto", "miou", "map_50")
# The network input (H, W) of a config whose model section names none.
DEFAULT_INPUT_SIZE = ModelConfig.input_size


@dataclass
class DataConfig:
    # mfnet | pst900 | fmb | folder | synthetic (MFNet layout) | llvip | flir_aligned | m3fd | kaist
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
    warmup_iters: int = 500
    warmup_ratio: float = 1e-3  # lr at step 0, relative to lr
    poly_power: float = 0.9
    min_lr: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float = 0.0  # 0 = off
    # Learning-rate multipliers by parameter-name prefix, e.g. {"fusion.": 2.0}.
    lr_mult: dict[str, float] = field(default_factory=dict)


@dataclass
class InitConfig:
    sam2: str = ""  # Meta SAM2 .pt checkpoint for the trunk (and the decoder transformer)
    adapters: str = ""  # adapter/fusion weights from label-free pretraining (matching keys)


@dataclass
class TrainConfig:
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
    modalities: str = "both"
    # Per-sample probability of dropping one modality (which one is drawn at random).
    modality_dropout: float = 0.0
    eval_every: int = 1
    checkpoint_every: int = 1
    log_every: int = 10
    max_eval_samples: int = 0  # 0 = the whole validation split
    text_embeddings: str = ""  # .safetensors/.npy from rgbt-text-embed; empty = no language loss
    export: str = ""  # weights file written from the best checkpoint at the end; empty = none
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
        if self.data.dataset not in DATASET_KINDS:
            raise ValueError(f"data.dataset must be one of {', '.join(DATASET_KINDS)}, got {self.data.dataset!r}")
        self.data.mix = check_mix_entries(self.data.mix)
        if self.select_on not in SELECT_METRICS:
            raise ValueError(f"select_on must be one of {SELECT_METRICS}, got {self.select_on!r}")
        if self.modalities not in MODALITIES:
            raise ValueError(f"modalities must be one of {MODALITIES}, got {self.modalities!r}")
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
        if self.data.train_size:
            check_network_size(self.data.train_size, "data.train_size")
        if self.epochs < 1 or self.data.batch_size < 1:
            raise ValueError("epochs and data.batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return build_dataclass(cls, values, sections=_SECTIONS)


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "loss": LossWeights, "init": InitConfig}


def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config; errors name the file and the key."""
    return read_config(path, overrides, TrainConfig.from_dict)


def save_config(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(_plain(cfg.to_dict()), f, sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
