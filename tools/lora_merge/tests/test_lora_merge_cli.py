"""omni3-lora-merge on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_lora_merge.cli import cli
from omni3_lora_merge.settings import LoraMergeSettings
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
    assert "training-run artifact" in text


def test_settings_lists_every_field_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["settings"]) == 0
    out = capsys.readouterr().out
    for name in LoraMergeSettings.model_fields:
        assert f"OMNI3_{name.upper()}" in out


def test_dry_run_prints_the_plan_with_input_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys)
    assert plan["dry_run"] == "omni3-lora-merge run"
    assert [entry["role"] for entry in plan["inputs"]] == ["lora_checkpoint"]  # no base model unless given
    assert plan["inputs"][0]["path"] == str(tmp_path / "runs" / "stage0_sft")
    assert plan["inputs"][0]["status"].startswith("not ready")
    assert plan["outputs"][0] == {
        "role": "merged_checkpoint",
        "path": str(tmp_path / "exports" / "nemotron_omni_merged"),
        "kind": "hf-checkpoint",
        "status": "ok",
    }
    assert plan["verdict"].startswith("1 problem")


def test_dry_run_checks_the_base_model_when_given(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    plan = dry_run(capsys, "--lora-checkpoint", "run", "--hf-model-path", "base")
    statuses = {entry["role"]: entry["status"] for entry in plan["inputs"]}
    assert statuses == {"lora_checkpoint": "ok (training-run)", "hf_model": "external directory (no omni3 manifest)"}
    assert plan["verdict"] == "ready: every check passed"


def test_output_format_megatron_writes_a_megatron_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--output-format", "megatron")
    assert plan["outputs"][0]["kind"] == "megatron-checkpoint"


def test_unknown_output_format_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--dry-run", "--output-format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "output_format" in err
    assert "OMNI3_OUTPUT_FORMAT" in err


def test_missing_input_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--lora-checkpoint", "nowhere"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-lora-merge: error: input ")


def test_missing_base_model_is_exit_3(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    assert cli(["--lora-checkpoint", "run", "--hf-model-path", "no-base", "--output", "merged"]) == 3
    assert "no-base does not exist" in capsys.readouterr().err
    assert nothing_written(tmp_path / "merged")


def test_valid_inputs_are_not_available_yet_and_write_nothing(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    make_artifact(tmp_path / "base", ArtifactKind.HF_CHECKPOINT)
    assert cli(["--lora-checkpoint", "run", "--hf-model-path", "base", "--output", "merged"]) == 2
    assert "LoRA merge is not available in this version" in capsys.readouterr().err
    assert nothing_written(tmp_path / "merged")


@pytest.mark.parametrize(
    ("flag", "kind"),
    [
        ("--lora-checkpoint", ArtifactKind.MEGATRON_CHECKPOINT),
        ("--lora-checkpoint", ArtifactKind.ADAPTER),
        ("--hf-model-path", ArtifactKind.DATASET),
    ],
)
def test_wrong_kind_input_is_exit_3(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str], flag: str, kind: ArtifactKind
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    make_artifact(tmp_path / "wrong", kind)
    argv = {"--lora-checkpoint": "run", "--hf-model-path": None} | {flag: "wrong"}
    assert cli([item for key, value in argv.items() if value for item in (key, value)]) == 3
    assert f"is a {kind.value}" in capsys.readouterr().err


def test_complete_output_without_force_is_exit_2(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    existing = make_artifact(tmp_path / "merged", ArtifactKind.HF_CHECKPOINT)
    before = (existing / MANIFEST_FILE).read_bytes()
    assert cli(["--lora-checkpoint", "run", "--output", "merged"]) == 2
    assert "a complete artifact already exists" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before


def test_environment_sets_what_flags_leave_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNI3_OUTPUT", "env-out")
    monkeypatch.setenv("OMNI3_TENSOR_PARALLEL_SIZE", "4")
    plan = dry_run(capsys, "--tensor-parallel-size", "2")
    assert plan["settings"]["output"] == "env-out"
    assert plan["settings"]["tensor_parallel_size"] == 2
