"""Training configuration: dataclasses mirrored by the YAML files under ``config/train/``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from training.losses import LossWeights

T = TypeVar("T")

MODALITIES = ("both", "rgb", "thermal")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # mfnet | pst900 | fmb | folder | synthetic (MFNet layout)
    root: str = ""
    train_split: str = "train"
    # Split the best checkpoint is selected on. "holdout" = a seeded val_holdout fraction of
    # train_split kept out of training (for PST900 and FMB, which ship no validation split).
    val_split: str = "val"
    val_holdout: float = 0.0
    # Seeded fraction of the labelled training set (label-efficiency experiments).
    train_fraction: float = 1.0
    batch_size: int = 8
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
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
        if self.epochs < 1 or self.data.batch_size < 1:
            raise ValueError("epochs and data.batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return build_dataclass(cls, values, sections=_SECTIONS)


def build_dataclass(cls: type, values: dict[str, Any], where: str = "", sections: dict[str, type] | None = None) -> Any:
    """Build config dataclass ``cls`` from YAML values.

    ``sections`` maps keys whose values are nested dataclasses. Unknown keys are refused naming
    them, and numbers YAML left as strings (``1e-4``) are converted where the field is a float.
    """
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or '<root>'!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        sub = (sections or {}).get(name)
        if sub is not None:
            kwargs[name] = build_dataclass(sub, value or {}, f"{name}.")
        elif name == "betas":
            kwargs[name] = tuple(float(v) for v in value)
        elif isinstance(fields[name].default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            # YAML 1.1 reads "1e-4" (no dot) as a string.
            try:
                kwargs[name] = float(value)
            except ValueError:
                raise ValueError(f"config key {where}{name} must be a number, got {value!r}") from None
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "loss": LossWeights, "init": InitConfig}


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def read_config(path: str, overrides: list[str] | None, build: Callable[[dict[str, Any]], T]) -> T:
    """Read a YAML config, apply ``key.sub=value`` overrides and build it; errors name the file and key."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {e}") from None
    try:
        return build(apply_overrides(values, overrides or []))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config {path}: {e}") from None


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
