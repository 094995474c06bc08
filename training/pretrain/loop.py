"""The label-free adaptation loop behind ``rgbt-pretrain``: config, training, checkpoints, export.

``Pretrainer(cfg).fit()`` trains the chosen objective (``pccl`` or ``cmss-mim``) on unlabelled
pairs and writes the adapters file (:mod:`training.pretrain.adapters`) that ``rgbt-train`` loads
with ``init.adapters``. Under ``torchrun`` every process runs it on its shard of the pairs;
gradients are averaged across processes and rank 0 writes logs, checkpoints and outputs.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from rgbt_perception.core.preprocess import ThermalScaling
from training.checkpoint import load_partial_state, trainable_state
from training.config_file import ConfigFile
from training.loop import CHECKPOINT_LAST, EpochLoop, RunningMeans
from training.optim import WarmupPoly, is_no_decay
from training.pretrain.adapters import save_adapters
from training.pretrain.cmss import CMSSConfig, CMSSMIMObjective
from training.pretrain.data import PairSourceConfig, PairSourceError, PairTensors, build_pair_source
from training.pretrain.methods import METHODS
from training.pretrain.pccl import PCCLConfig, PCCLObjective
from training.runtime import seed_everything
from training.summary import parameter_parts

ADAPTERS_FILE = "adapters.safetensors"
# Pairs held out (without flips) to follow how much the RGB path changes while adapting.
PROBE_PAIRS = 8


@dataclass
class InitSection:
    """Where the trunk (and possibly everything else) comes from.

    ``sam2``: a published SAM2 checkpoint for the frozen trunk. ``weights``: a node weights file
    (from ``rgbt-train``/``rgbt-export``) to start from; its model config replaces ``model``.
    Neither: a randomly initialised trunk from ``seed`` (then stored in the adapters file).
    """

    sam2: str = ""
    weights: str = ""


@dataclass
class PretrainConfig(ConfigFile):
    """A pretraining run (``config/train/pretrain_*.yaml``)."""

    SECTIONS: ClassVar[dict[str, type]] = {"data": PairSourceConfig, "init": InitSection, "pccl": PCCLConfig,
                                           "cmss": CMSSConfig}

    name: str = "pretrain"
    out_dir: str = "runs/pretrain"
    method: str = "pccl"
    model: dict[str, Any] = field(default_factory=lambda: {"variant": "micro", "input_size": [96, 128]})
    data: PairSourceConfig = field(default_factory=PairSourceConfig)
    init: InitSection = field(default_factory=InitSection)
    pccl: PCCLConfig = field(default_factory=PCCLConfig)
    cmss: CMSSConfig = field(default_factory=CMSSConfig)
    epochs: int = 20
    batch_size: int = 8
    num_workers: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_iters: int = 50
    clip_grad_norm: float = 1.0
    # Steps skipped for a NaN/infinite loss or gradient before the run stops (0: stop at the first).
    max_nonfinite_steps: int = 20
    # Keyword arguments of training.datasets.transforms.AugmentConfig; null = no augmentation.
    augment: dict[str, Any] | None = field(default_factory=dict)
    thermal_scaling: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    threads: int = 0
    log_every: int = 10
    checkpoint_every: int = 1
    output: str = ""  # adapters file; empty = <out_dir>/adapters.safetensors
    output_weights: str = ""  # with init.weights: also a full node weights file with the new adapters

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.init.sam2 and self.init.weights:
            raise ValueError("init.sam2 and init.weights exclude each other (a weights file holds its trunk)")
        if self.output_weights and not self.init.weights:
            raise ValueError("output_weights needs init.weights (the heads come from that file)")

    @property
    def adapters_path(self) -> str:
        return self.output or os.path.join(self.out_dir, ADAPTERS_FILE)



def load_pretrain_config(path: str, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a pretraining YAML (``key.sub=value`` overrides applied); errors name the file and key."""
    return PretrainConfig.load(path, overrides)


def build_pretrain_model(cfg: PretrainConfig) -> tuple[nn.Module, Any, str]:
    """``(RGBTNet, weights metadata or None, trunk provenance)`` as ``cfg.init`` says.

    A random trunk is built right after ``torch.manual_seed(cfg.seed)``, as ``rgbt-train`` does.
    """
    from rgbt_perception.model import ModelConfig, RGBTNet

    if cfg.init.weights:
        from rgbt_perception.io.weights import load_weights

        model, metadata = load_weights(cfg.init.weights)
        return model, metadata, f"weights:{cfg.init.weights}"
    torch.manual_seed(cfg.seed)
    model = RGBTNet(ModelConfig.from_dict(dict(cfg.model)))
    if cfg.init.sam2:
        from rgbt_perception.io.sam2_checkpoint import load_sam2_trunk

        load_sam2_trunk(model, cfg.init.sam2)
        return model, None, f"sam2:{cfg.init.sam2}"
    return model, None, f"random:seed={cfg.seed}"


class PretrainStep(nn.Module):
    """One pretraining step's forward: ``objective(model, rgb, thermal, ...) -> (loss, parts)``."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, rgb: Tensor, thermal: Tensor, progress: float, step: int,
                **extra: Any) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.model, rgb, thermal, progress, step, **extra)


def build_objective(cfg: PretrainConfig, model: nn.Module) -> nn.Module:
    if cfg.method == "pccl":
        return PCCLObjective(cfg.pccl)
    embed_dim = model.encoder.trunk.patch_embed.proj.out_channels
    return CMSSMIMObjective(cfg.cmss, embed_dim, model.cfg.neck_dim)


class Pretrainer(EpochLoop):
    """Label-free adaptation of an ``RGBTNet`` from a :class:`PretrainConfig`.

    ``resume``: a ``last.pt`` written by this class; training continues after its epoch with the
    same optimizer, schedule, masks generator and RNG state. ``stop_after_epochs`` ends this call
    early (the schedule still spans ``cfg.epochs``).
    """

    STEP_LOG = "pretrain_steps.csv"
    EPOCH_LOG = "pretrain_epochs.csv"

    def __init__(self, cfg: PretrainConfig, resume: str | None = None, stop_after_epochs: int | None = None,
                 show_progress: bool = True) -> None:
        super().__init__(cfg, stop_after_epochs, show_progress)
        self.model, self.init_metadata, self.trunk_source = build_pretrain_model(cfg)
        self.model.to(self.device).train()
        self.input_size = tuple(self.model.cfg.input_size)
        seed_everything(cfg.seed)
        self.objective = build_objective(cfg, self.model).to(self.device)
        self.objective.prepare(self.model)
        named = self.objective.trainable(self.model)
        self.params = [p for _, p in named]
        # Only what the objective trains takes gradients (and is reported as training); the rest of the
        # network stays as built or loaded.
        self.model.requires_grad_(False)
        self.objective.requires_grad_(False)
        for _, param in named:
            param.requires_grad_(True)
        # Model and objective as one module, so DistributedDataParallel averages the gradients of
        # every trained tensor (adapters, necks, fusion, decoders) however the objective uses them.
        self.step_module = self.distribute(PretrainStep(self.model, self.objective))
        decay = [p for n, p in named if not is_no_decay(n, p)]
        no_decay = [p for n, p in named if is_no_decay(n, p)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

        self.scaling = self.init_metadata.scaling if self.init_metadata is not None else (
            ThermalScaling.from_dict(cfg.thermal_scaling) if cfg.thermal_scaling else ThermalScaling())
        source = build_pair_source(cfg.data, store_size=self.input_size, progress=self.show_progress)
        self.pairs = PairTensors(source, self.input_size, self.scaling, cfg.augment, cfg.seed)
        self.probe = PairTensors(source, self.input_size, self.scaling, None)
        per_process = len(self.pairs) // self.dist.world_size
        loader = self.make_loader(self.pairs, cfg.batch_size, cfg.num_workers, drop_last=per_process >= cfg.batch_size,
                                  reseeded=self.pairs)
        if len(loader) == 0:
            raise PairSourceError(f"{len(self.pairs)} pairs are fewer than one batch per process")
        self.total_steps = len(loader) * cfg.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupPoly(self.total_steps, cfg.warmup_iters))
        self.set_optimisation(optimizer, schedule, cfg.max_nonfinite_steps, "max_nonfinite_steps")
        self.mask_generator = torch.Generator().manual_seed(cfg.seed + 1000 * self.dist.rank)

        self.history: list[dict[str, Any]] = []
        self.probe_before = self._probe_outputs()
        os.makedirs(cfg.out_dir, exist_ok=True)
        if resume:
            self.load_checkpoint(resume)
        self.open_logs()
        if self.dist.is_main:
            print(self.start_line(), flush=True)

    def start_line(self) -> str:
        """What this run trains, said before it starts: pairs, steps and trained parameters per part."""
        parts = ", ".join(f"{p['part']} {p['trainable']:,}" for p in parameter_parts(self.model) if p["trainable"])
        own = sum(p.numel() for p in self.objective.parameters() if p.requires_grad)
        return (f"{self.cfg.method}: {len(self.pairs)} pairs, {self.total_steps} optimizer steps, lr {self.cfg.lr:g}; "
                f"parameters that train: {parts}" + (f", the objective's own {own:,}" if own else ""))

    # ------------------------------------------------------------------ probes

    @torch.no_grad()
    def _probe_outputs(self) -> dict[str, Tensor]:
        """RGB-only outputs of fixed pairs: RGB-adapter features and, with trained heads, the mask."""
        was_training = self.model.training
        self.model.eval()
        count = min(PROBE_PAIRS, len(self.probe))
        rgb = torch.stack([self.probe[i]["rgb"] for i in range(count)]).to(self.device)
        out = {"features": self.model.encode_modality(rgb, "rgb")[2].float().cpu()}
        if self.init_metadata is not None:
            out["mask"] = self.model(rgb, None)["semantic"].argmax(1).cpu()
        self.model.train(was_training)
        return out

    def rgb_retention(self) -> dict[str, float]:
        """How much of the RGB path is unchanged: feature cosine and (with heads) mask agreement."""
        now = self._probe_outputs()
        cosine = F.cosine_similarity(now["features"], self.probe_before["features"], dim=1)
        result = {"rgb_feature_cosine": float(cosine.mean())}
        if "mask" in now:
            result["rgb_mask_agreement"] = float((now["mask"] == self.probe_before["mask"]).float().mean())
        return result

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": trainable_state(self.model, include_frozen=self.trunk_source.startswith("random")),
            "objective": self.objective.state_dict(),
            **self.optimisation_state(epoch),
            "history": self.history,
            "mask_generator": self.mask_generator.get_state(),
            "probe_before": self.probe_before,
        }

    def restore_state(self, ckpt: dict[str, Any], path: str) -> None:
        method = ckpt["config"].get("method")
        if method != self.cfg.method:
            raise ValueError(f"resume checkpoint {path} is a {method} run, not {self.cfg.method}")
        load_partial_state(self.model, ckpt["model"], f"checkpoint {path}")
        self.objective.load_state_dict(ckpt["objective"])
        self.history = list(ckpt.get("history", []))
        self.mask_generator.set_state(ckpt["mask_generator"])
        self.probe_before = ckpt["probe_before"]

    # ------------------------------------------------------------------ training

    def train_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, float]:
        means = RunningMeans()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.epoch_batches(epoch)):
            rgb = batch["rgb"].to(self.device, non_blocking=True)
            thermal = batch["thermal"].to(self.device, non_blocking=True)
            progress_frac = self.global_step / max(self.total_steps - 1, 1)
            extra = {"generator": self.mask_generator} if self.cfg.method == "cmss-mim" else {}
            with self.autocast():
                loss, parts = self.step_module(rgb, thermal, progress_frac, self.global_step, **extra)
            if self.backward(loss, parts, epoch, i):
                means.add(parts)
            self.apply_gradients(self.params, self.cfg.clip_grad_norm, epoch, i)
            self.record_step(epoch, i, parts, progress)
        return means.means()

    def run_epoch(self, epoch: int, progress: tqdm | None) -> dict[str, Any]:
        """Train one epoch; the row adds how much of the RGB path is unchanged."""
        means = self.train_epoch(epoch, progress)
        return {"epoch": epoch + 1, **{f"train_{k}": v for k, v in means.items()}, **self.rgb_retention()}

    def finish_epoch(self, row: dict[str, Any]) -> None:
        self.history.append(row)

    def epoch_line(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}/{self.cfg.epochs} loss {row.get('train_total', math.nan):.4f} "
                f"rgb feature cosine {row['rgb_feature_cosine']:.4f}")

    def fit(self) -> dict[str, Any]:
        """Train, then write the adapters file; returns a summary (losses per epoch, outputs)."""
        cfg = self.cfg
        end_epoch = self.end_epoch
        self.run_epochs(f"{cfg.name} ({cfg.method})")
        summary: dict[str, Any] = {"epochs_run": end_epoch - self.start_epoch, "history": self.history,
                                   "last": os.path.join(cfg.out_dir, CHECKPOINT_LAST)}
        if end_epoch == cfg.epochs and self.dist.is_main:
            summary["adapters"] = self.export()
            if cfg.output_weights:
                summary["weights"] = self.export_weights()
        self.dist.barrier()
        return summary

    def export(self) -> str:
        """Write the adapters file; returns its path."""
        parts = list(self.objective.export_parts)
        if not self.trunk_source.startswith("sam2"):
            # Only a published checkpoint makes the frozen trunk reproducible elsewhere.
            parts.append("trunk")
        last = self.history[-1] if self.history else {}
        save_adapters(
            self.cfg.adapters_path, self.model, parts, method=self.cfg.method, epochs=self.cfg.epochs,
            data=self.cfg.data.describe(), model_config=self.model.cfg.to_dict(), trunk=self.trunk_source,
            extra={"pairs": len(self.pairs), "seed": self.cfg.seed, "final_loss": last.get("train_total"),
                   "rgb_feature_cosine": last.get("rgb_feature_cosine"),
                   "rgb_mask_agreement": last.get("rgb_mask_agreement")},
        )
        return self.cfg.adapters_path

    def export_weights(self) -> str:
        """With ``init.weights``: a node weights file of the adapted model (heads unchanged)."""
        from rgbt_perception.io.weights import save_weights

        metadata = dataclasses.replace(self.init_metadata, provenance={
            **dict(self.init_metadata.provenance), "pretrain": {"method": self.cfg.method, "epochs": self.cfg.epochs,
                                                                "data": self.cfg.data.describe()}})
        metadata.provenance.pop("created", None)
        save_weights(self.cfg.output_weights, self.model, metadata)
        return self.cfg.output_weights
