"""rgbt-bench with backends: the interleaved engine ladder, --backend onnxruntime, option errors."""
from __future__ import annotations

import json

import pytest

from rgbt_perception.bench.ladder import Contender, LadderRun, ladder_contenders, render_ladder, run_ladder
from rgbt_perception.cli import bench as bench_cli


@pytest.mark.slow  # two worker processes that each load torch
def test_ladder_runs_each_engine_in_its_own_process(tmp_path):
    contenders = [Contender("torch unmerged", merge="off"), Contender("torch merged")]
    run = LadderRun(frame_size=(64, 96), input_size=(64, 96), iters=2, warmup=1)
    results = run_ladder(contenders, str(tmp_path), run)
    rows = results["contenders"]
    assert [row["name"] for row in rows] == ["torch unmerged", "torch merged"]
    assert [row["engine_class"] for row in rows] == ["InferenceEngine", "InferenceEngine"]
    for row in rows:
        assert row["wall"]["count"] == 2 and row["cpu_ms_per_frame"] > 0
        assert set(row["stages_p50_ms"]) == {"preprocess", "forward", "postprocess", "total"}
    # Same weights file for both: merging LoRA leaves the masks as they were.
    assert rows[1]["mask_agreement_with_tree_reference"] >= 0.999
    assert rows[0]["gain_over_previous"] is None and rows[1]["gain_over_previous"] > 0
    assert rows[1]["memory"]["torch_loaded"] is True
    table = render_ladder(results)
    assert table.count("\n|") == 4 and "torch merged" in table


def test_ladder_steps_start_from_the_baseline_tree():
    steps = ladder_contenders("/some/tree", bf16=True)
    assert steps[0].tree == "/some/tree" and [s.merge for s in steps[1:4]] == ["off", "per_camera", "batched"]
    assert steps[4].backend == "onnxruntime" and steps[-1].precision == "bf16"
    assert len(ladder_contenders(None, bf16=False)) == 4


def test_bench_smoke_on_onnxruntime(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_cli.main(["--smoke", "--backend", "onnxruntime", "--threads", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["variants"][0]
    assert row["backend"] == "onnxruntime" and row["forward_options"] == "onnxruntime fp32"
    assert row["model"]["count"] == row["engine"]["count"] == 2
    assert "backend onnxruntime" in capsys.readouterr().out


def test_bad_backend_options_are_named(capsys, repo_root):
    with pytest.raises(SystemExit):
        bench_cli.main(["--backend", "onnx"])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    for argv, problem in ((["--ladder", "--baseline-tree", "/nonexistent"], "holds no rgbt_perception/inference.py"),
                          (["--baseline-tree", repo_root], "--baseline-tree is measured by --ladder"),
                          (["--ladder", "--out", "x.md"], "does not rewrite the --out")):
        assert bench_cli.main(argv) == 2
        assert problem in capsys.readouterr().err
