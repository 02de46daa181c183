"""Run outputs on the CPU: metrics JSON lines, the progress line, the plot, run_config.yaml and the report."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from omni3_sft import run_outputs
from omni3_sft.run_outputs import EtaClock, MetricsWriter, RunSummary, StepMetrics


def metrics(iteration: int, loss: float = 2.0, seconds: float = 2.0) -> StepMetrics:
    return StepMetrics(
        iteration=iteration, loss=loss, lr=1e-4, tokens=8192, seconds=seconds, gpus=2, flops=4e14, grad_norm=None
    )


def test_throughput_per_gpu() -> None:
    step = metrics(10)
    assert step.tokens_per_s_per_gpu == pytest.approx(2048.0)
    assert step.tflops_per_gpu == pytest.approx(100.0)
    record = step.record()
    assert record["tokens_per_s_per_gpu"] == 2048.0 and record["tflops_per_gpu"] == 100.0
    assert "grad_norm" not in record
    assert math.isnan(metrics(1, seconds=0.0).tokens_per_s_per_gpu)
    assert "tokens_per_s_per_gpu" not in metrics(1, seconds=0.0).record()


def test_metrics_are_json_lines_flushed_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "run" / run_outputs.METRICS_FILE
    writer = MetricsWriter(path)
    writer.write(metrics(10, 3.0))
    # readable before the writer closes: a killed run keeps every finished interval
    assert [r["iteration"] for r in run_outputs.read_metrics(path)] == [10]
    writer.write(metrics(20, 2.5))
    writer.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [3.0, 2.5]


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / run_outputs.METRICS_FILE
    with MetricsWriter(path) as writer:
        writer.write(metrics(10))
    with path.open("a") as handle:
        handle.write('{"iteration": 20, "lo')
    assert [r["iteration"] for r in run_outputs.read_metrics(path)] == [10]
    assert run_outputs.read_metrics(tmp_path / "absent.jsonl") == []


def test_resume_drops_the_records_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / run_outputs.METRICS_FILE
    with MetricsWriter(path) as writer:
        for iteration in (5, 10, 15):
            writer.write(metrics(iteration))
    with path.open("a") as handle:
        handle.write('{"iteration": 20, "lo')  # killed mid-line
    with MetricsWriter(path, resume_iteration=10) as writer:
        writer.write(metrics(15, 1.5))
    assert [(r["iteration"], r["loss"]) for r in run_outputs.read_metrics(path)] == [(5, 2.0), (10, 2.0), (15, 1.5)]
    with MetricsWriter(path, resume_iteration=None):  # a fresh start keeps nothing
        pass
    assert run_outputs.read_metrics(path) == []


def test_progress_line() -> None:
    line = run_outputs.progress_line(metrics(20), 100, 1.5)
    assert line == "iter 20/100 | loss 2.0000 | lr 1.00e-04 | 2,048 tok/s/GPU | 100.0 TFLOP/s/GPU | ETA 0:02:00"
    tiny = StepMetrics(20, 2.0, 1e-4, 8192, 2.0, 2, 0.0213e12 * 2.0 * 2)
    assert "| 0.0213 TFLOP/s/GPU |" in run_outputs.progress_line(tiny, 100, 6.0)
    with_norm = run_outputs.progress_line(StepMetrics(20, 2.0, 1e-4, 8192, 2.0, 2, 4e14, grad_norm=0.5), 100, None)
    assert "grad norm 0.500" in with_norm and with_norm.endswith("ETA after warm-up")


def test_eta_clock_drops_the_warm_up_interval() -> None:
    clock = EtaClock(window=3)
    assert clock.add(10, 100.0) is None  # the warm-up interval alone says nothing about the steps to come
    assert clock.add(10, 20.0) == pytest.approx(2.0)  # warm-up dropped
    assert clock.add(10, 40.0) == pytest.approx(3.0)
    assert clock.add(0, 0.0) == pytest.approx(3.0)


def test_plot_is_a_png_with_both_curves(tmp_path: Path) -> None:
    records = [metrics(i * 10, loss=3.0 - 0.1 * i).record() for i in range(1, 21)]
    path = run_outputs.plot(records, tmp_path / run_outputs.PLOT_FILE, title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (run_outputs.WIDTH, run_outputs.HEIGHT)
        colors = {color for _, color in image.getcolors(maxcolors=1 << 20)}
    assert run_outputs.LOSS_COLOR in colors
    assert run_outputs.THROUGHPUT_COLOR in colors
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_without_data_still_writes(tmp_path: Path) -> None:
    path = run_outputs.plot([], tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
    single = run_outputs.plot([metrics(1).record()], tmp_path / "one.png")
    assert single.stat().st_size > 0


def test_run_config_yaml_round_trips(tmp_path: Path) -> None:
    document = {"config": {"model": {"tensor_model_parallel_size": 2}}, "path": tmp_path, "tuple": (1, 2)}
    path = run_outputs.write_run_config(tmp_path / run_outputs.RUN_CONFIG_FILE, document)
    assert yaml.safe_load(path.read_text()) == {
        "config": {"model": {"tensor_model_parallel_size": 2}},
        "path": str(tmp_path),
        "tuple": [1, 2],
    }


def test_checkpoint_entry_names_what_lifecycle_tools_load(tmp_path: Path) -> None:
    entry = run_outputs.checkpoint_entry(tmp_path / "checkpoints", tmp_path, 20)
    assert entry == {"dir": "checkpoints", "format": "torch_dist", "iteration": 20, "path": "checkpoints/iter_0000020"}
    assert "path" not in run_outputs.checkpoint_entry(tmp_path / "checkpoints", tmp_path, None)


def test_report(tmp_path: Path) -> None:
    records = [metrics(10, 3.0, seconds=10.0).record(), metrics(20, 2.0).record(), metrics(30, 1.5).record()]
    summary = RunSummary(
        variant="tiny",
        recipe="nemotron_omni_cord_v2_sft_config",
        layout="TP 1 x PP 1 x CP 1, EP 1 x ETP 1",
        gpus=2,
        train_iters=30,
        seq_length=512,
        global_batch_size=2,
        wall_seconds=75.0,
        checkpoint=run_outputs.checkpoint_entry(tmp_path / "checkpoints", tmp_path, 30),
        resumed_from=10,
    )
    text = run_outputs.render_report(summary, records)
    assert text.startswith("# omni3-sft run: tiny")
    assert "Loss 3.0000 at the first interval, 1.5000 at iteration 30" in text
    assert "2,048.0 tokens/s/GPU, 100.00 TFLOP/s/GPU" in text  # the warm-up interval left out
    assert "resumed from iteration 10" in text
    assert "`checkpoints/iter_0000030`" in text
    assert re.search(r"Wall time 0:01:15", text)
    assert "No metrics" in run_outputs.render_report(summary, [])
    assert "data loader" not in text  # records without data_wait_seconds say nothing about it

    waited = [replace(metrics(10 * i), data_wait_seconds=0.5).record() for i in (1, 2, 3)]
    assert run_outputs.summarize_metrics(waited)["data_wait_share"] == 0.25  # 0.5 s of every 2 s after warm-up
    assert "Waiting for the data loader: 25.0% of the time" in run_outputs.render_report(summary, waited)
    assert "Padding" not in text  # records without positions say nothing about it


def test_padding_is_the_share_of_positions_that_are_no_sample_tokens(tmp_path: Path) -> None:
    padded = [replace(metrics(10 * i), positions=4 * 8192).record() for i in (1, 2, 3)]
    assert padded[0]["padding_share"] == 0.75 and padded[0]["positions"] == 4 * 8192
    assert run_outputs.summarize_metrics(padded)["padding_share"] == 0.75
    assert "padding_share" not in metrics(1).record()  # unknown, not zero
    # One record without positions (an older run resumed) leaves the share unknown rather than wrong.
    assert "padding_share" not in run_outputs.summarize_metrics([*padded, metrics(40).record()])
    summary = RunSummary("tiny", "r", "EP 4", 4, 30, 4096, 8, 60.0, {"path": "checkpoints/iter_0000030"})
    assert "Padding: 75.0% of the positions the model ran" in run_outputs.render_report(summary, padded)
