"""Training configuration, learning-rate schedule, parameter groups and sampling helpers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import TrainConfig, load_config
from training.data import select_fraction, split_holdout
from training.optim import WarmupPoly, build_param_groups
from training.steps import sample_modality_mask


def test_shipped_configs_load_and_select_on_validation(repo_root):
    import os

    names = ("synthetic_micro.yaml", "mfnet_base_plus.yaml", "pst900_base_plus.yaml", "fmb_base_plus.yaml")
    for path in (os.path.join(repo_root, "config", "train", name) for name in names):
        cfg = load_config(path)
        assert cfg.data.val_split in ("val", "holdout")
        assert cfg.optim.weight_decay == 0.01
        # The ablations' verdict (docs/training.md): no auxiliary head, soft Jaccard and language loss on.
        assert cfg.loss.aux == 0.0 and cfg.loss.jaccard > 0 and cfg.loss.lang > 0
    assert load_config(os.path.join(repo_root, "config/train/mfnet_base_plus.yaml")).optim.lr == pytest.approx(1e-4)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"optim\.lrr"):
        load_config(str(bad))
    bad.write_text("data:\n  val_split: test\n")
    with pytest.raises(ValueError, match="test split"):
        load_config(str(bad))
    bad.write_text("run_inputs: depth\n")
    with pytest.raises(ValueError, match="run_inputs must be one of"):
        load_config(str(bad))
    # The older name of run_inputs still reads (shipped configs, checkpoints of earlier runs).
    bad.write_text("modalities: depth\n")
    with pytest.raises(ValueError, match="run_inputs must be one of"):
        load_config(str(bad))
    bad.write_text("modalities: rgb\nrun_inputs: thermal\n")
    with pytest.raises(ValueError, match="modalities .* and run_inputs disagree"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(str(tmp_path / "absent.yaml"))
    good = tmp_path / "good.yaml"
    good.write_text("optim:\n  lr: 1e-4\n")  # YAML 1.1 reads this as a string
    cfg = load_config(str(good), ["data.batch_size=3", "optim.lr_mult={fusion.: 2.0}"])
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.data.batch_size == 3
    assert cfg.optim.lr_mult == {"fusion.": 2.0}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    old = tmp_path / "old.yaml"
    old.write_text("modalities: rgb\n")
    assert load_config(str(old)).run_inputs == "rgb"
    assert load_config(str(old), ["modalities=thermal"]).run_inputs == "thermal"
    saved = tmp_path / "saved.yaml"
    load_config(str(old)).save(str(saved))
    assert "run_inputs: rgb" in saved.read_text() and "modalities" not in saved.read_text()


def test_warmup_then_poly():
    f = WarmupPoly(total_steps=110, warmup_steps=10, warmup_ratio=0.1, power=0.9)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 ** 0.9)
    assert f(110) == pytest.approx(0.0)
    values = [f(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(values, values[1:]))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.fusion = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_no_decay_on_1d_and_lr_multipliers():
    cfg = TrainConfig.from_dict({"optim": {"lr": 1e-3, "weight_decay": 0.01, "lr_mult": {"fusion.": 3.0}}})
    groups = build_param_groups(_Tiny(), cfg)
    model = _Tiny()
    by_id = {}
    for g in build_param_groups(model, cfg):
        for p in g["params"]:
            by_id[id(p)] = (g["weight_decay"], g["lr"])
    assert by_id[id(model.conv.weight)] == (0.01, 1e-3)
    assert by_id[id(model.conv.bias)] == (0.0, 1e-3)
    assert by_id[id(model.norm.weight)] == (0.0, 1e-3)
    assert by_id[id(model.fusion.weight)] == (0.01, pytest.approx(3e-3))
    assert by_id[id(model.fusion.bias)] == (0.0, pytest.approx(3e-3))
    assert id(model.frozen.weight) not in by_id
    assert sum(len(g["params"]) for g in groups) == 6


def test_modality_masks():
    torch.manual_seed(0)
    assert sample_modality_mask(3, "rgb", 0.5).tolist() == [[True, False]] * 3
    assert sample_modality_mask(3, "thermal", 0.5).tolist() == [[False, True]] * 3
    assert sample_modality_mask(4, "both", 0.0).all()
    mask = sample_modality_mask(4000, "both", 0.3)
    assert mask.any(dim=1).all()  # never both dropped
    dropped = (~mask).any(dim=1).float().mean().item()
    assert 0.27 < dropped < 0.33
    assert 0.4 < (~mask[:, 0]).float().sum().item() / (~mask).float().sum().item() < 0.6


def test_fraction_and_holdout_are_seeded_and_disjoint():
    a = select_fraction(range(100), 0.25, seed=4)
    assert (len(a) == 25 and a == select_fraction(range(100), 0.25, seed=4)
            and a != select_fraction(range(100), 0.25, seed=5))
    assert select_fraction(range(10), 1.0, seed=0) == list(range(10))
    train, held = split_holdout(50, 0.1, seed=0)
    assert len(held) == 5 and not set(train) & set(held) and sorted(train + held) == list(range(50))


def test_pretraining_configs_read_like_training_configs(repo_root, tmp_path):
    import os

    from training.pretrain.loop import PretrainConfig, load_pretrain_config

    for method in ("pccl", "cmss_mim"):
        path = os.path.join(repo_root, "config", "train", f"pretrain_{method}.yaml")
        cfg = load_pretrain_config(path, ["lr=1e-4", "pccl.threshold=0.5"])
        # "1e-4" is a string to YAML 1.1; the float field still gets a number.
        assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
        assert cfg.pccl.threshold == 0.5
        assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("cmss:\n  sparsity: 2\n")
    with pytest.raises(ValueError, match=r"cmss\.sparsity"):
        load_pretrain_config(str(bad))
