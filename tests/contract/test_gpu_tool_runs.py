"""The GPU tests' tool runner (``tests/gpu/tool_runs.py``), on the CPU: the log, the exit code, torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni3_shared.pytest_plugin import load_script

TOOL_RUNS = load_script(Path(__file__).resolve().parents[1] / "gpu" / "tool_runs.py", "omni3_gpu_tool_runs")
run_tool = TOOL_RUNS.run_tool


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMNI3_GPU_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def test_a_run_keeps_its_command_exit_code_and_output(tmp_path: Path, logs: Path) -> None:
    document = tmp_path / "ok.json"
    document.write_text(json.dumps({"probe": 1}))
    run = run_tool(tmp_path, "probe-ok", "json.tool", str(document))
    assert run.returncode == 0 and '"probe": 1' in run.stdout
    assert run.log == logs / "probe-ok.log"
    text = run.log.read_text()
    assert "json.tool" in text.splitlines()[0] and "exit 0" in text and '"probe": 1' in text


def test_a_failing_run_is_reported_with_its_last_lines(tmp_path: Path, logs: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    run = run_tool(tmp_path, "probe-broken", "json.tool", str(broken))
    assert run.returncode != 0
    assert "Expecting property name" in run.tail(3)
    assert f"exit {run.returncode}" in run.log.read_text()


def test_several_processes_run_under_torchrun(tmp_path: Path, logs: Path) -> None:
    pytest.importorskip("torch")
    # A bare JSON string: json.tool writes it with one write(), so the two unbuffered processes' outputs cannot
    # interleave inside it (an indented object is written token by token and did, in CI).
    document = tmp_path / "ok.json"
    document.write_text(json.dumps("rank_probe"))
    run = run_tool(tmp_path, "probe-torchrun", "json.tool", str(document), nproc=2)
    assert run.returncode == 0, run.tail()
    assert run.stdout.count('"rank_probe"') == 2  # one per process
    assert "torch.distributed.run" in run.log.read_text().splitlines()[0]
