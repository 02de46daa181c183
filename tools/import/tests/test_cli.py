"""omni3-import on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from omni3_import.cli import cli
from omni3_import.settings import ImportSettings
from omni3_import.tiny_model.spec import TinyOmniSpec
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind, tool_info
from omni3_shared.publish import publish_artifact
from omni3_shared.pytest_plugin import dry_run_plan, nothing_written


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """No OMNI3_* or launcher variable leaks in; scratch directory (omni3_shared.pytest_plugin)."""


# An Omni config without auto_map: loading it needs no code from the checkpoint.
OMNI_CONFIG = json.dumps({k: v for k, v in TinyOmniSpec().config("x.Config").items() if k != "auto_map"})


def safetensors_bytes() -> bytes:
    """A valid one-tensor safetensors file (a float32 scalar), written by hand to keep the tests light."""
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * 4


def make_artifact(path: Path, kind: ArtifactKind) -> Path:
    with publish_artifact(path, kind=kind, tool=tool_info("omni3-test", "0.0"), config={}, inputs=[]) as staging:
        (staging.path / "config.json").write_text(OMNI_CONFIG)
        (staging.path / "model.safetensors").write_bytes(safetensors_bytes())
    return path


def make_plain_hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(OMNI_CONFIG)
    (path / "model.safetensors").write_bytes(safetensors_bytes())
    return path


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    return dry_run_plan(cli, capsys, *argv)


def test_help_exits_0_and_names_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--help"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Checks before any work" in text
    assert "--trust-remote-code" in text


def test_settings_lists_every_field_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["settings"]) == 0
    out = capsys.readouterr().out
    for name in ImportSettings.model_fields:
        assert f"OMNI3_{name.upper()}" in out


def test_dry_run_prints_the_plan_with_input_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys)
    assert plan["dry_run"] == "omni3-import run"
    assert plan["settings"]["tensor_parallel_size"] == 1
    assert plan["settings"]["trust_remote_code"] is False
    assert plan["inputs"][0]["role"] == "hf_model"
    assert plan["inputs"][0]["path"] == str(tmp_path / "models" / "nemotron_omni_hf")
    assert plan["inputs"][0]["status"].startswith("not ready")
    assert plan["outputs"][0]["kind"] == "megatron-checkpoint"
    assert plan["verdict"].startswith("1 problem")


def test_dry_run_accepts_a_plain_hf_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_plain_hf_dir(tmp_path / "hf")
    plan = dry_run(capsys, "--hf-model", "hf")
    assert plan["inputs"][0]["status"] == "external directory (no omni3 manifest)"
    assert plan["verdict"] == "ready: every check passed"


def test_missing_input_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--hf-model", "nowhere"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-import: error: input ")
    assert "Traceback" not in err


@pytest.mark.parametrize("external", [False, True], ids=["hf-checkpoint-artifact", "plain-hf-directory"])
def test_valid_input_without_the_gpu_stack_is_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], external: bool
) -> None:
    if external:
        make_plain_hf_dir(tmp_path / "hf")
    else:
        make_artifact(tmp_path / "hf", ArtifactKind.HF_CHECKPOINT)
    assert cli(["--hf-model", "hf", "--megatron-path", "ckpt/omni", "--tensor-parallel-size", "2"]) == 2
    assert "HF -> Megatron import needs Megatron-Bridge" in capsys.readouterr().err
    assert nothing_written(tmp_path / "ckpt" / "omni")


@pytest.mark.parametrize("kind", [ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.DATASET, ArtifactKind.TRAINING_RUN])
def test_wrong_kind_input_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: ArtifactKind) -> None:
    make_artifact(tmp_path / "hf", kind)
    assert cli(["--hf-model", "hf"]) == 3
    assert "expected a hf-checkpoint" in capsys.readouterr().err


def test_complete_output_without_force_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_plain_hf_dir(tmp_path / "hf")
    existing = make_artifact(tmp_path / "ckpt", ArtifactKind.MEGATRON_CHECKPOINT)
    before = (existing / MANIFEST_FILE).read_bytes()
    assert cli(["--hf-model", "hf", "--megatron-path", "ckpt"]) == 2
    assert "a complete artifact already exists" in capsys.readouterr().err
    assert cli(["--hf-model", "hf", "--megatron-path", "ckpt", "--force"]) == 2
    assert "needs Megatron-Bridge" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before


def test_bad_dtype_is_exit_2_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--dry-run", "--dtype", "int4"]) == 2
    err = capsys.readouterr().err
    assert "dtype" in err
    assert "OMNI3_DTYPE" in err


def test_flag_beats_environment_beats_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "import.yaml").write_text("tensor_parallel_size: 8\nexpert_parallel_size: 8\ndtype: float32\n")
    monkeypatch.setenv("OMNI3_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("OMNI3_EXPERT_PARALLEL_SIZE", "4")
    settings = dry_run(capsys, "--settings-file", "import.yaml", "--expert-parallel-size", "2")["settings"]
    assert (settings["tensor_parallel_size"], settings["expert_parallel_size"], settings["dtype"]) == (4, 2, "float32")


def test_trust_remote_code_is_a_switch(capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run(capsys, "--trust-remote-code")["settings"]["trust_remote_code"] is True
    assert dry_run(capsys, "--trust-remote-code", "--verify=false")["settings"]["verify"] is False
