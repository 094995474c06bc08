"""The frozen-trunk check of make gpu-check, run small on the CPU: SAM2-layout checkpoints in, three runs out."""
from __future__ import annotations

import json

import pytest
import torch

from training import sam2_lora_check

pytestmark = pytest.mark.slow


def test_check_trains_from_sam2_layout_checkpoints_and_reports_every_run(tmp_path, one_torch_thread, capsys):
    out = tmp_path / "check"
    argv = ["--out", str(out), "--train", "8", "--val", "4", "--epochs", "2", "--batch", "4",
            "--input-size", "128x128", "--workers", "0", "--allow-cpu", "--variant", "micro"]
    assert sam2_lora_check.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {row["run"]: row for row in results["runs"]}
    assert list(runs) == ["full", "lora_random", "lora_trained"]
    assert (out / "sam2_random.pt").is_file() and (out / "sam2_trained.pt").is_file()
    # Each run's checkpoints go once it is measured (--keep-checkpoints keeps them); its logs stay.
    for name in runs:
        assert not list((out / name).glob("*.pt")) and (out / name / "train_epochs.csv").is_file()
    assert runs["full"]["trunk_largest_change"] > 0
    assert runs["full"]["init_loaded"] is None
    for name in ("lora_random", "lora_trained"):
        assert runs[name]["trunk"] == "frozen" and runs[name]["modalities"] == "both"
        assert runs[name]["init_loaded"] is True  # every trunk tensor came from the file
        assert runs[name]["trunk_largest_change"] == 0.0
    for row in runs.values():
        assert row["problems"] == [] and row["lora_largest_change"] > 0
        assert row["steps"] == 4 and [e["epoch"] for e in row["evaluations"]] == [1, 2]
        assert row["loss_last_epoch"] < row["loss_first_epoch"]
        # rgbt-train's loop and guards: the warm-up sized to the 4-step run, no step skipped.
        assert row["warmup_steps"] == 1 and row["nonfinite_steps"] == 0 and row["trainable"] > 0
    assert runs["lora_random"]["trainable"] < runs["full"]["trainable"]
    table = (out / "results.md").read_text()
    assert table.count("| frozen | both |") == 2 and "| full | full | rgb | none | 4 |" in table

    # A second check into the same folder would mix its runs' logs with these.
    assert sam2_lora_check.main(argv) == 2
    assert "already holds data, full, lora_random, lora_trained" in capsys.readouterr().err
    assert sam2_lora_check.main(["--out", str(tmp_path / "other"), "--runs", "lora_trained"]) == 2
    assert sam2_lora_check.main(["--out", str(tmp_path / "v"), "--variant", "huge", "--allow-cpu"]) == 2
    assert "--variant huge is not one of micro, tiny" in capsys.readouterr().err
    if not torch.cuda.is_available():  # without a GPU and without --allow-cpu nothing trains
        assert sam2_lora_check.main(["--out", str(tmp_path / "cpu")]) == 2
        assert "no CUDA GPU here" in capsys.readouterr().err and not (tmp_path / "cpu").exists()
