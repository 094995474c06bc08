"""Box-only training: samples without masks train the box head, fusion, necks and LoRA only, and mix
with mask samples in one batch and one run."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import yaml

from rgbt_perception.core.classes import LLVIP, SYNTHETIC, get_class_set
from rgbt_perception.model import ModelConfig, RGBTNet
from training.cli import evaluate as eval_cli
from training.cli import train as train_cli
from training.datasets import (
    ClassMappedDataset,
    PairTransform,
    TransformedDataset,
    build_dataset,
    class_map,
    collate,
    mix_datasets,
)
from training.datasets.synthetic_layouts import (
    DETECTION_LAYOUTS,
    EVAL_SPLIT,
    write_detection_scenes,
    write_llvip_scenes,
)
from training.losses import LossWeights, RGBTCriterion, ohem_cross_entropy, soft_jaccard_loss
from training.synth.scenes import SynthConfig, generate_dataset

INPUT = (64, 96)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llvip_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("llvip"))
    write_llvip_scenes(root, num_train=8, num_test=4, seed=2, size=(128, 160), min_box_area=16)
    return root


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(root, num_train=4, num_val=2, num_test=0, seed=4,
                     cfg=SynthConfig(size=(128, 160), thermal_size=(64, 80)), progress=False)
    return root


def micro(num_classes: int) -> RGBTNet:
    torch.manual_seed(0)
    return RGBTNet(ModelConfig(variant="micro", num_classes=num_classes, input_size=INPUT))


def head_state(model: RGBTNet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if n.startswith(("semantic_head.", "aux_head.", "fusion."))}


def test_box_only_training_lowers_box_loss_and_keeps_segmentation_weights(llvip_root):
    data = TransformedDataset(build_dataset("llvip", llvip_root, "train"), PairTransform(INPUT, augment=None))
    batch = collate([data[i] for i in range(len(data))])
    assert batch["has_mask"].tolist() == [False] * 8 and sum(len(b) for b in batch["boxes"]) > 0
    model = micro(LLVIP.num_classes)
    before = head_state(model)
    box_path = {n: p.detach().clone() for n, p in model.named_parameters()
                if p.requires_grad and (n.startswith(("box_head.", "box_fusion.", "necks.")) or "lora" in n)}
    criterion = RGBTCriterion(LossWeights(aux=0.4, box=1.0, lang=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.01)
    targets = [{"boxes": boxes, "labels": labels} for boxes, labels in zip(batch["boxes"], batch["box_labels"])]
    losses = []
    model.train()
    for _ in range(25):
        outputs = model(batch["rgb"], batch["thermal"])
        loss, parts = criterion(outputs, batch["label"], targets, model.box_head.loss, has_mask=batch["has_mask"])
        assert parts["ce_main"] == 0.0 and parts["ce_aux"] == 0.0 and parts["mask_samples"] == 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if n in before)
        optimizer.step()
        losses.append(parts["box"])
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
    # The segmentation heads and their fusion are untouched (no gradient, so no weight decay
    # either) and still work; the box head and what feeds it (box fusion, necks, LoRA) trained.
    after = head_state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    changed = [n for n, p in model.named_parameters() if n in box_path and not torch.equal(box_path[n], p.detach())]
    for part in ("box_head.", "box_fusion.", "necks."):
        assert any(n.startswith(part) for n in changed), part
    assert any("lora" in n for n in changed)
    model.eval()
    with torch.no_grad():
        semantic = model(batch["rgb"][:2], batch["thermal"][:2])["semantic"]
    assert semantic.shape == (2, LLVIP.num_classes, INPUT[0] // 4, INPUT[1] // 4)
    assert bool(torch.isfinite(semantic).all())


def test_segmentation_terms_are_masked_per_sample(synth_root, llvip_root):
    """In a mixed batch the cross-entropy is the one of the mask samples alone."""
    main = build_dataset("synthetic", synth_root, "train")
    boxes = ClassMappedDataset(build_dataset("llvip", llvip_root, "train"), SYNTHETIC,
                               class_map(LLVIP, SYNTHETIC))
    transform = PairTransform(INPUT, augment=None)
    batch = collate([transform(main[0]), transform(boxes[0]), transform(main[1]), transform(boxes[1])])
    assert batch["has_mask"].tolist() == [True, False, True, False]
    model = micro(SYNTHETIC.num_classes)
    outputs = model(batch["rgb"], batch["thermal"])
    criterion = RGBTCriterion(LossWeights(aux=0.0, box=0.0, lang=0.0, jaccard=0.5))
    # A mask-less sample's label is all ignore already; corrupt it to show the flag masks it anyway.
    label = batch["label"].clone()
    label[1] = 2
    total, parts = criterion(outputs, label, has_mask=batch["has_mask"])
    alone = ohem_cross_entropy(outputs["semantic"][[0, 2]], batch["label"][[0, 2]])
    jaccard_alone = soft_jaccard_loss(outputs["semantic"][[0, 2]], batch["label"][[0, 2]])
    assert parts["jaccard"] == pytest.approx(jaccard_alone.item(), rel=1e-5)
    assert total.item() == pytest.approx(alone.item() + 0.5 * jaccard_alone.item(), rel=1e-5)
    assert parts["mask_samples"] == 2.0
    with pytest.raises(ValueError, match="nothing to train"):
        criterion(outputs, label, has_mask=torch.zeros(4, dtype=torch.bool))


def test_mixed_set_maps_classes(synth_root, llvip_root):
    main = build_dataset("synthetic", synth_root, "train")
    mixed = mix_datasets(main, [{"dataset": "llvip", "root": llvip_root, "repeat": 2}])
    llvip = build_dataset("llvip", llvip_root, "train")
    assert len(mixed) == len(main) + 2 * len(llvip) and mixed.class_set is SYNTHETIC
    sample = mixed[len(main) + len(llvip) + 1]
    assert sample["label"] is None
    np.testing.assert_array_equal(sample["boxes"], llvip[1]["boxes"])
    # LLVIP's person (1) is the synthetic/MFNet person (2).
    assert set(sample["box_labels"].tolist()) <= {SYNTHETIC.names.index("person")}
    assert mixed[0]["label"] is not None


# ----------------------------------------------------------------------------- rgbt-train / rgbt-eval


@pytest.mark.parametrize("layout", DETECTION_LAYOUTS)
def test_demo_config_trains_and_evaluates_each_layout(layout, tmp_path, repo_root):
    """config/train/synthetic_micro.yaml pointed at a detection set with --set data.dataset/root."""
    root = str(tmp_path / layout)
    written = write_detection_scenes(root, layout, num_train=10, num_eval=3, seed=5, size=(128, 160),
                                     min_box_area=16)
    out, weights = str(tmp_path / "run"), str(tmp_path / "w.safetensors")
    args = ["--config", os.path.join(repo_root, "config/train/synthetic_micro.yaml"), "--set", f"data.dataset={layout}",
            "--set", f"data.root={root}", "--out", out, "--epochs", "1", "--export", weights, "--no-progress",
            "--set", "data.num_workers=0", "--set", "threads=1", "--set", "data.batch_size=4",
            "--set", "model.input_size=[64,96]", "--set", "data.train_size=[]", "--set", "loss.lang=0"]
    assert train_cli.main(args) == 0
    with open(os.path.join(out, "train_epochs.csv")) as f:
        epoch = next(csv.DictReader(f))
    assert float(epoch["train_ce_main"]) == 0.0 and float(epoch["train_mask_samples"]) == 0.0
    assert float(epoch["train_box"]) > 0 and epoch["val_map_50"] not in ("", "nan")
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    # LLVIP and KAIST ship no validation split: checkpoints are picked on a holdout of train.
    assert saved["data"]["val_split"] == ("holdout" if layout in ("llvip", "kaist") else "val")
    assert torch.load(os.path.join(out, "best.pt"), weights_only=False)["select_on"] == "map_50"

    split = EVAL_SPLIT[layout]
    report = str(tmp_path / "eval")
    assert eval_cli.main(["--weights", weights, "--data-root", root, "--dataset", layout, "--split", split,
                          "--out", report, "--device", "cpu", "--no-progress", "--overlays", "1"]) == 0
    metrics = json.load(open(os.path.join(report, "metrics.json")))
    assert metrics["segmentation"] is None and metrics["frames"] == len(written[split])
    detection = metrics["detection"]["overall"]
    assert detection["gt_boxes"] > 0 and 0.0 <= detection["map_50"] <= 1.0
    assert set(detection["per_class"]) <= set(get_class_set(layout).names[1:]) and detection["per_class"]
    assert ("miss_rate" in metrics) == (layout == "kaist")
    if layout == "kaist":
        assert set(metrics["miss_rate"]["subsets"]) == {"reasonable", "all"}
        assert set(metrics["miss_rate"]["conditions"]) == {"day", "night"}
    assert os.path.isfile(os.path.join(report, "overlays", f"000_{sorted(written[split])[0]}.png"))


def test_mixed_mask_and_box_run(synth_root, llvip_root, tmp_path, repo_root):
    """A segmentation set with a box-only set mixed in (data.mix) trains end to end in one run."""
    out = str(tmp_path / "run")
    mix = f"[{{dataset: llvip, root: {llvip_root}, repeat: 1}}]"
    args = ["--config", os.path.join(repo_root, "config/train/synthetic_micro.yaml"), "--data-root", synth_root,
            "--set", f"data.mix={mix}", "--out", out, "--epochs", "1", "--no-progress", "--set", "data.num_workers=0",
            "--set", "threads=1", "--set", "data.batch_size=6", "--set", "model.input_size=[64,96]",
            "--set", "data.train_size=[]", "--set", "loss.lang=0"]
    assert train_cli.main(args) == 0
    with open(os.path.join(out, "train_steps.csv")) as f:
        steps = list(csv.DictReader(f))
    with open(os.path.join(out, "train_epochs.csv")) as f:
        epoch = next(csv.DictReader(f))
    # 4 synthetic (mask) + 8 LLVIP (box-only) frames in batches of 6: masks are a minority.
    assert 0.0 < float(epoch["train_mask_samples"]) < 6.0 and float(epoch["train_ce_main"]) > 0
    assert len(steps) == 2 and epoch["val_miou"] not in ("", "nan")
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["data"]["mix"][0]["dataset"] == "llvip" and saved["data"]["mix"][0]["split"] == "train"


def test_mix_config_errors(tmp_path, repo_root, capsys):
    config = os.path.join(repo_root, "config/train/synthetic_micro.yaml")
    assert train_cli.main(["--config", config, "--data-root", str(tmp_path), "--set",
                           "data.mix=[{dataset: nope, root: x}]"]) == 2
    assert "data.mix[0].dataset must be one of" in capsys.readouterr().err
    assert train_cli.main(["--config", config, "--data-root", str(tmp_path), "--set",
                           "data.mix=[{dataset: llvip, root: x, weight: 2}]"]) == 2
    assert "data.mix[0]: unknown key(s) ['weight']" in capsys.readouterr().err


@pytest.mark.parametrize("name", DETECTION_LAYOUTS)
def test_detection_configs(name, repo_root):
    """config/train/<set>_base_plus.yaml: box-only recipe, checkpoints picked on a holdout by mAP."""
    from rgbt_perception.model import ModelConfig as Model
    from training.config import load_config

    cfg = load_config(os.path.join(repo_root, f"config/train/{name}_base_plus.yaml"))
    assert cfg.data.dataset == name and cfg.model["variant"] == "base_plus" and cfg.init.sam2
    assert cfg.data.val_split == "holdout" and cfg.select_on == "map_50"
    assert cfg.loss.aux == 0.0 and cfg.loss.lang == 0.0 and cfg.loss.box > 0 and not cfg.text_embeddings
    model = Model.from_dict({**cfg.model, "num_classes": get_class_set(name).num_classes})
    assert model.num_classes == len(get_class_set(name).names)
