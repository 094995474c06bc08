"""Training output people can follow: fixed CSV columns, one line per epoch, per-camera supervision."""
from __future__ import annotations

import csv

import torch

from training.engine import BRANCHES, EPOCH_COLUMNS, epoch_line
from training.log import CsvLog
from training.steps import forward_model


def test_epoch_csv_columns_are_fixed_from_the_first_row(tmp_path):
    path = tmp_path / "train_epochs.csv"
    log = CsvLog(str(path), EPOCH_COLUMNS)
    log.write({"epoch": 1, "train_total": 2.5, "train_ce_main": 1.0, "seconds": 10.0})
    log.write({"epoch": 2, "train_total": 2.0, "val_miou": 0.5, "val_map_50": 0.4, "seconds": 12.0, "train_new": 1.0})
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == EPOCH_COLUMNS + ["train_new"]
    assert rows[0][:3] == ["epoch", "seconds", "train_total"]
    first, second = (dict(zip(rows[0], r)) for r in rows[1:])
    assert first["val_miou"] == "" and first["train_total"] == "2.5"
    assert second["val_miou"] == "0.5" and second["train_new"] == "1"


def test_epoch_line_names_loss_terms_scores_and_seconds():
    row = {"epoch": 3, "train_total": 1.25, "train_ce_main": 0.5, "train_box": 0.7, "train_rgb_total": 0.9,
           "val_miou": 0.6123, "val_map_50": 0.401, "seconds": 61.7}
    line = epoch_line(row, 24)
    assert line == ("epoch 3/24 | loss 1.2500 | ce 0.5000 | box 0.7000 | rgb 0.9000 | val mIoU 61.23 | "
                    "mAP@0.5 40.10 | 62 s")
    # Epochs without validation leave the scores out.
    assert "mIoU" not in epoch_line({"epoch": 1, "train_total": 2.0, "seconds": 5.0}, 2)


def test_branches_give_fused_and_single_camera_outputs_for_the_losses():
    from rgbt_perception.model import ModelConfig, RGBTNet

    torch.manual_seed(0)
    model = RGBTNet(ModelConfig(variant="micro", num_classes=4, input_size=(64, 64))).train()
    batch = {"rgb": torch.rand(2, 3, 64, 64), "thermal": torch.rand(2, 1, 64, 64)}
    mask = torch.tensor([[True, False], [True, True]])
    outputs = forward_model(model, batch, mask, torch.device("cpu"), BRANCHES)
    assert set(outputs) == set(BRANCHES)
    for branch in BRANCHES:
        assert outputs[branch]["semantic"].shape == (2, 4, 16, 16) and "aux" in outputs[branch]
    plain = forward_model(model, batch, mask, torch.device("cpu"))
    assert "semantic" in plain
