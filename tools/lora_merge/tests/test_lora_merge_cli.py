"""omni3-lora-merge on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

import importlib.util
import shutil
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
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lora_run(tmp_path / "run", tmp_path / "recorded-but-gone")
    make_lora_base(tmp_path / "base")
    plan = dry_run(capsys, "--lora-checkpoint", "run", "--hf-model-path", "base")
    statuses = {entry["role"]: entry["status"] for entry in plan["inputs"]}
    assert statuses == {"lora_checkpoint": "ok (training-run)", "hf_model": "external directory (no omni3 manifest)"}
    assert plan["lora_run"]["hf_model"] == str(tmp_path / "base")
    assert plan["verdict"] == "ready: every check passed"


def test_a_plain_training_run_without_lora_fields_is_refused(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    plan = dry_run(capsys, "--lora-checkpoint", "run")
    assert plan["verdict"].startswith("1 problem")
    assert cli(["--lora-checkpoint", "run"]) == 3
    assert "is a full fine-tuning run" in capsys.readouterr().err


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


def test_valid_inputs_without_megatron_bridge_are_exit_2_after_the_checks(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.bridge") is not None:
        pytest.skip("Megatron-Bridge is installed here: the real run would start")
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    assert cli(["--lora-checkpoint", "run", "--output", "merged"]) == 2
    err = capsys.readouterr().err
    assert "LoRA merge needs Megatron-Bridge, which this environment lacks" in err
    assert err.count("\n") == 1
    assert nothing_written(tmp_path / "merged")


def test_dry_run_with_a_ready_lora_run_names_its_base(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    make_lora_run(tmp_path / "run", base)
    plan = dry_run(capsys, "--lora-checkpoint", "run", "--output-format", "megatron")
    assert [entry["status"] for entry in plan["inputs"]] == ["ok (training-run)", "named by the LoRA run"]
    assert plan["lora_run"]["hf_model"] == str(base)
    assert plan["lora_run"]["dim"] == 4 and plan["lora_run"]["alpha"] == 8.0
    assert plan["verdict"] == "ready: every check passed"


@pytest.mark.parametrize(
    ("change", "exit_code", "message"),
    [
        ({"peft": None}, 3, "is a full fine-tuning run"),
        ({"drop": ("run_config.yaml",)}, 3, "run_config.yaml missing"),
        ({"run_config_peft": {"dim": 4, "alpha": 64}}, 3, "says LoRA alpha=64"),
        ({"extra_changes": {"checkpoint": None}}, 3, "records no saved checkpoint"),
        ({"extra_changes": {"checkpoint": {"iteration": 9, "path": "checkpoints/iter_0000009"}}}, 3, "is missing"),
        ({"extra_changes": {"hf_model": None}}, 2, "records no base HF model"),
    ],
    ids=["full-ft", "no-run-config", "peft-mismatch", "no-checkpoint", "missing-iteration", "no-base-recorded"],
)
def test_bad_lora_run_is_refused_with_one_line_and_writes_nothing(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str],
    change: dict, exit_code: int, message: str,
) -> None:  # fmt: skip
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"), **change)
    assert cli(["--lora-checkpoint", "run", "--output", "merged"]) == exit_code
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Fix: " in err
    assert nothing_written(tmp_path / "merged")


def test_base_that_is_not_omni_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base", architecture="Qwen3ForCausalLM"))
    assert cli(["--lora-checkpoint", "run", "--output", "merged"]) == 3
    assert "not Nemotron 3 Nano Omni" in capsys.readouterr().err
    assert nothing_written(tmp_path / "merged")


def test_truncated_shard_of_the_run_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    shard = run / "checkpoints" / "iter_0000005" / "__0_0.distcp"
    shard.write_bytes(b"")
    assert cli(["--lora-checkpoint", "run", "--output", "merged"]) == 3
    assert "is damaged" in capsys.readouterr().err
    assert nothing_written(tmp_path / "merged")


@pytest.mark.parametrize("output_format", ["hf", "megatron"])
def test_too_little_disk_is_exit_1(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, output_format: str,
) -> None:  # fmt: skip
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: type(usage)(usage.total, usage.total, 100))
    assert cli(["--lora-checkpoint", "run", "--output", "merged", "--output-format", output_format]) == 1
    assert "not enough disk" in capsys.readouterr().err
    assert nothing_written(tmp_path / "merged")


def test_tensor_parallel_size_below_1_is_exit_2(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    assert cli(["--lora-checkpoint", "run", "--tensor-parallel-size", "0"]) == 2
    assert "--tensor-parallel-size must be at least 1" in capsys.readouterr().err


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
