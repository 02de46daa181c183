"""omni3-adapter-export on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

import importlib.util
import shutil
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
    assert "routed expert" in text


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
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    make_lora_run(tmp_path / "runs" / "stage0_sft", base)
    plan = dry_run(capsys)
    assert [entry["status"] for entry in plan["inputs"]] == ["ok (training-run)", "named by the LoRA run"]
    assert plan["lora_run"]["iteration"] == 5
    assert plan["lora_run"]["hf_model"] == str(base)
    assert plan["lora_run"]["target_modules"] == ["in_proj", "linear_fc1", "linear_fc2"]
    assert plan["verdict"] == "ready: every check passed"


def test_hf_model_path_overrides_the_run_s_base(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "other")
    make_lora_run(tmp_path / "run", tmp_path / "gone")
    plan = dry_run(capsys, "--lora-checkpoint", "run", "--hf-model-path", "other")
    assert [entry["status"] for entry in plan["inputs"]] == [
        "ok (training-run)",
        "external directory (no omni3 manifest)",
    ]
    assert plan["lora_run"]["hf_model"] == str(base)


def test_missing_input_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--lora-checkpoint", "nowhere"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-adapter-export: error: input ")


def test_valid_input_without_megatron_bridge_is_exit_2_after_the_checks(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.bridge") is not None:
        pytest.skip("Megatron-Bridge is installed here: the real run would start")
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    assert cli(["--lora-checkpoint", "run", "--output", "adapters/a"]) == 2
    err = capsys.readouterr().err
    assert "needs Megatron-Bridge, which this environment lacks" in err
    assert err.count("\n") == 1
    assert nothing_written(tmp_path / "adapters" / "a")


@pytest.mark.parametrize(
    ("change", "exit_code", "message"),
    [
        ({"peft": None}, 3, "is a full fine-tuning run"),
        ({"peft": {"type": "ia3", "target_modules": ["x"], "dim": 1, "alpha": 1}}, 3, "only LoRA runs"),
        ({"drop": ("run_config.yaml",)}, 3, "run_config.yaml missing"),
        ({"drop": (".metadata",)}, 3, "is incomplete: .metadata missing"),
        ({"run_config_peft": {"dim": 99, "alpha": 8}}, 3, "says LoRA dim=99"),
        ({"extra_changes": {"checkpoint": {"dir": "checkpoints"}}}, 3, "records no saved checkpoint"),
        ({"extra_changes": {"checkpoint": {"iteration": 9, "path": "checkpoints/iter_0000009"}}}, 3, "is missing"),
        ({"extra_changes": {"hf_model": None}}, 2, "records no base HF model"),
        ({"extra_changes": {"hf_model": "/nowhere/base"}}, 3, "that the LoRA run names does not exist"),
    ],
    ids=[
        "full-ft",
        "not-lora",
        "no-run-config",
        "no-dcp-metadata",
        "peft-mismatch",
        "no-checkpoint",
        "missing-iteration",
        "no-base-recorded",
        "base-gone",
    ],
)
def test_bad_lora_run_is_refused_with_one_line_and_writes_nothing(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str],
    change: dict, exit_code: int, message: str,
) -> None:  # fmt: skip
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"), **change)
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == exit_code
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Fix: " in err
    assert nothing_written(tmp_path / "adapter")


def test_base_that_is_not_omni_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base", architecture="LlamaForCausalLM"))
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 3
    assert "is a LlamaForCausalLM checkpoint, not Nemotron 3 Nano Omni" in capsys.readouterr().err
    assert nothing_written(tmp_path / "adapter")


def test_base_with_a_missing_shard_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    next(base.glob("*.safetensors")).unlink()
    make_lora_run(tmp_path / "run", base)
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 3
    assert "is missing 1 shard(s)" in capsys.readouterr().err


def test_truncated_file_of_the_run_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    shard = run / "checkpoints" / "iter_0000005" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 3
    assert "is damaged: checkpoints/iter_0000005/__0_0.distcp has 100 bytes" in capsys.readouterr().err
    assert nothing_written(tmp_path / "adapter")


def test_missing_file_of_the_run_is_exit_3(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    (run / "checkpoints" / "iter_0000005" / "__0_0.distcp").unlink()
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 3
    assert "listed file checkpoints/iter_0000005/__0_0.distcp is missing" in capsys.readouterr().err


def test_too_little_disk_is_exit_1(
    tmp_path: Path, make_lora_run: MakeArtifact, make_lora_base: MakeArtifact, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    make_lora_run(tmp_path / "run", make_lora_base(tmp_path / "base"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: type(usage)(usage.total, usage.total, 1024))
    assert cli(["--lora-checkpoint", "run", "--output", "adapter"]) == 1
    assert "not enough disk" in capsys.readouterr().err
    assert nothing_written(tmp_path / "adapter")


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
