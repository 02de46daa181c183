"""omni3-adapter-export on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_adapter_export.cli import cli
from omni3_adapter_export.settings import AdapterExportSettings
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind
from omni3_shared.pytest_plugin import dry_run_plan, nothing_written

MakeArtifact = Callable[..., Path]


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    return dry_run_plan(cli, capsys, *argv)


def test_help_exits_0_and_names_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--help"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Checks before any work" in text
    assert "peft" in text


def test_settings_lists_every_field_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["settings"]) == 0
    out = capsys.readouterr().out
    for name in AdapterExportSettings.model_fields:
        assert f"OMNI3_{name.upper()}" in out


def test_dry_run_prints_the_plan_with_input_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--lora-checkpoint", "nowhere")
    assert plan["dry_run"] == "omni3-adapter-export run"
    assert plan["inputs"][0]["role"] == "lora_checkpoint"
    assert plan["inputs"][0]["status"].startswith("not ready: input ")
    assert plan["outputs"][0]["kind"] == "adapter"
    assert plan["outputs"][0]["path"] == str(tmp_path / "exports" / "nemotron_omni_adapter")
    assert plan["verdict"].startswith("1 problem")


def test_dry_run_with_ready_inputs(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "runs" / "stage0_sft", ArtifactKind.TRAINING_RUN)
    make_artifact(tmp_path / "base", ArtifactKind.HF_CHECKPOINT)
    plan = dry_run(capsys, "--hf-model-path", "base")
    assert [entry["status"] for entry in plan["inputs"]] == ["ok (training-run)", "ok (hf-checkpoint)"]
    assert plan["verdict"] == "ready: every check passed"


def test_missing_input_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--lora-checkpoint", "nowhere"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-adapter-export: error: input ")


def test_valid_input_is_not_available_yet_and_writes_nothing(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    assert cli(["--lora-checkpoint", "run", "--output", "adapters/a"]) == 2
    assert "PEFT adapter export is not available in this version" in capsys.readouterr().err
    assert nothing_written(tmp_path / "adapters" / "a")


@pytest.mark.parametrize("kind", [ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.ADAPTER, ArtifactKind.DATASET])
def test_wrong_kind_input_is_exit_3(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str], kind: ArtifactKind
) -> None:
    make_artifact(tmp_path / "run", kind)
    assert cli(["--lora-checkpoint", "run"]) == 3
    assert "expected a training-run" in capsys.readouterr().err


def test_damaged_input_is_exit_3(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    (run / "weights.bin").write_bytes(b"short")
    assert cli(["--lora-checkpoint", "run"]) == 3
    assert "is damaged" in capsys.readouterr().err


def test_complete_output_without_force_is_exit_2(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    existing = make_artifact(tmp_path / "adapter", ArtifactKind.ADAPTER)
    before = (existing / MANIFEST_FILE).read_bytes()
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 2
    assert "a complete artifact already exists" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before


def test_non_artifact_output_directory_is_exit_2(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "notes.txt").write_text("mine")
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 2
    assert "not an omni3 artifact" in capsys.readouterr().err
    assert (tmp_path / "adapter" / "notes.txt").read_text() == "mine"


def test_verify_switch_does_not_swallow_and_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run(capsys, "--verify=false")["settings"]["verify"] is False
    assert dry_run(capsys, "--noverify")["settings"]["verify"] is False
    assert dry_run(capsys, "--verify")["settings"]["verify"] is True
