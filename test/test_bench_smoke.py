"""rgbt-bench: the smoke run produces complete, positive numbers; options are checked."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rgbt_perception.bench import render, settings, stats
from rgbt_perception.cli import bench


def test_smoke_run_writes_json_and_markdown(tmp_path, capsys):
    out_md = tmp_path / "docs" / "benchmarks.md"
    out_md.parent.mkdir()
    out_md.write_text("# Benchmarks\n\nHand-written prose before.\n\n"
                      f"{render.RESULTS_BEGIN}\nold numbers\n{render.RESULTS_END}\n\nProse after.\n")
    out_json = tmp_path / "bench.json"

    code = bench.main(["--smoke", "--json", str(out_json), "--out", str(out_md)])

    assert code == 0, capsys.readouterr().err
    results = json.loads(out_json.read_text())
    assert {"command", "machine", "settings", "variants", "goals"} <= set(results)
    assert results["command"].startswith("rgbt-bench --smoke")
    machine = results["machine"]
    assert machine["cpu"] and machine["cpu_cores"] >= 1 and machine["torch"] == torch.__version__
    assert results["settings"]["size"] == list(settings.SMOKE_SIZE)
    assert results["settings"]["node"] is False

    (row,) = results["variants"]
    assert row["variant"] == "micro"
    assert row["input_size"] == [64, 96] and row["frame_size"] == [64, 96]
    assert row["parameters_total"] >= row["parameters_trainable"] > 0  # micro trains its whole trunk
    for name in ("model", "engine"):
        stats = row[name]
        assert stats["count"] == 2
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"] <= stats["max_ms"]
        assert math.isclose(stats["fps"], 1000.0 / stats["mean_ms"])
    assert row["engine_over_model"] == pytest.approx(row["engine"]["p50_ms"] / row["model"]["p50_ms"])
    stages = row["engine_stages_p50_ms"]
    assert set(stages) == {"preprocess", "forward", "postprocess", "total"}
    assert all(value > 0 for value in stages.values())
    # The engine's own stage timings cannot exceed what was measured around the call.
    assert stages["total"] <= row["engine"]["max_ms"] + 1e-6
    cpu = row["cpu_ms_per_frame"]
    assert set(cpu) == {"model", "engine"} and all(value > 0 for value in cpu.values())
    assert row["cpu_engine_over_model"] == pytest.approx(cpu["engine"] / cpu["model"])
    assert row["node"] is None and row["node_over_model"] is None and row["cpu_node_over_model"] is None
    assert row["peak_rss_mb"] > 50 and row["peak_gpu_mb"] is None

    text = out_md.read_text()
    assert "Hand-written prose before." in text and "Prose after." in text
    assert "old numbers" not in text
    assert text.count(render.RESULTS_BEGIN) == 1 and text.count(render.RESULTS_END) == 1
    table_row = next(line for line in text.splitlines() if line.startswith("| micro | "))
    assert f"{row['engine_over_model']:.3f}" in table_row
    assert "AMD" in text or machine["cpu"] in text


def test_write_markdown_creates_and_appends(tmp_path):
    fresh = tmp_path / "new.md"
    render.write_markdown(str(fresh), f"{render.RESULTS_BEGIN}\nA\n{render.RESULTS_END}\n")
    assert fresh.read_text().startswith("# Benchmarks")

    prose = tmp_path / "prose.md"
    prose.write_text("# Speed\n\nNo results yet.\n")
    render.write_markdown(str(prose), f"{render.RESULTS_BEGIN}\nB\n{render.RESULTS_END}\n")
    render.write_markdown(str(prose), f"{render.RESULTS_BEGIN}\nC\n{render.RESULTS_END}\n")
    text = prose.read_text()
    assert text.startswith("# Speed\n\nNo results yet.\n")
    assert "\nC\n" in text and "\nB\n" not in text


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--size", "480x"], "not HEIGHTxWIDTH"),
        (["--size", "16x640"], "too small"),
        (["--variants", "micro,huge"], "unknown variant"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--steps", "channels_last,warp"], "unknown --steps"),
        (["--weights", "/nonexistent/w.safetensors"], "file not found"),
        (["--variants", "micro", "--size", "64x96", "--device", "cuda:7"], "cuda"),
        (["--variants", "micro", "--size", "64x96", "--precision", "fp16"], "fp16"),
    ],
)
def test_bad_options_are_named_without_traceback(argv, problem, capsys):
    code = bench.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("rgbt-bench: error:") and problem in err
    assert "Traceback" not in err


def test_interleave_alternates_and_drops_lost_iterations():
    calls: list[str] = []

    def measure(name, value):
        def run():
            calls.append(name)
            return value
        return run

    samples = stats.interleave({"a": measure("a", 1.0), "b": measure("b", None)}, iters=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert samples == {"a": [1.0, 1.0, 1.0], "b": []}
    assert stats.summarize([]) is None


def test_network_input_size_rounds_up_to_multiples_of_32():
    assert settings.network_input_size((720, 1280)) == (736, 1280)
    assert settings.network_input_size((240, 320)) == (256, 320)
    assert settings.network_input_size((480, 640)) == (480, 640)
