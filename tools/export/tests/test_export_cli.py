"""omni3-export on the CPU: help, settings, --dry-run, and every check a real run makes before any work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omni3_export.cli import cli
from omni3_export.settings import ExportSettings
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind
from omni3_shared.pytest_plugin import nothing_written

MakeArtifact = Callable[..., Path]


def test_help_exits_0_and_names_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--help"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Checks before any work" in text
    assert "megatron-checkpoint or training-run" in text


def test_help_of_run_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["run", "--help"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "--megatron_path" in text or "--megatron-path" in text
    assert "OMNI3_HF_PATH" in text


def test_settings_lists_every_field_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["settings"]) == 0
    out = capsys.readouterr().out
    for name in ExportSettings.model_fields:
        assert f"OMNI3_{name.upper()}" in out
        assert name in out


def test_dry_run_reports_a_missing_input_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--dry-run", "--megatron-path", "nowhere"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["dry_run"] == "omni3-export run"
    assert plan["settings"]["megatron_path"] == "nowhere"
    assert plan["inputs"][0]["path"] == str(tmp_path / "nowhere")
    assert plan["inputs"][0]["status"].startswith("not ready")
    assert plan["outputs"][0]["kind"] == "hf-checkpoint"
    assert plan["verdict"].startswith("1 problem")
    assert nothing_written(tmp_path / "exports" / "nemotron_omni_hf")


def test_dry_run_with_a_ready_input(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "checkpoints" / "nemotron_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    assert cli(["--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["inputs"][0]["status"] == "ok (megatron-checkpoint)"
    assert plan["outputs"][0]["status"] == "ok"
    assert plan["verdict"] == "ready: every check passed"


def test_missing_input_is_exit_3_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--megatron-path", "nowhere", "--hf-path", "out"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-export: error: input ")
    assert "Fix:" in err


def test_incomplete_input_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights.bin").write_bytes(b"1")
    assert cli(["--megatron-path", "half"]) == 3
    assert "not a complete omni3 artifact" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["import", "full-run"])
def test_valid_input_without_the_gpu_stack_is_exit_2_and_writes_nothing(
    tmp_path: Path,
    make_artifact: MakeArtifact,
    make_lora_run: MakeArtifact,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    if kind == "import":
        make_artifact(tmp_path / "ckpt", ArtifactKind.MEGATRON_CHECKPOINT)
    else:
        make_lora_run(tmp_path / "ckpt", hf_model=None, peft=None)
    assert cli(["--megatron-path", "ckpt", "--hf-path", "out/hf"]) == 2
    err = capsys.readouterr().err
    assert "needs Megatron-Bridge" in err
    assert "GPU image" in err
    assert nothing_written(tmp_path / "out" / "hf")


def test_a_training_run_loads_the_iteration_its_manifest_records(
    tmp_path: Path, make_lora_run: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the run directory: Megatron-Bridge would read omni3's own run_config.yaml there (KeyError 'model' on
    4x H200, 2026-11-27)."""
    make_lora_run(tmp_path / "runs" / "default", hf_model=None, peft=None, iteration=50)
    assert cli(["--dry-run", "--megatron-path", "runs/default"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["weights"] == {"folder": str(tmp_path / "runs" / "default" / "checkpoints" / "iter_0000050"),
                               "iteration": 50}  # fmt: skip
    assert plan["verdict"].startswith("ready")


def test_a_lora_run_is_exit_3_pointing_at_the_merge(
    tmp_path: Path, make_lora_run: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_lora_run(tmp_path / "runs" / "lora", hf_model=None)
    assert cli(["--megatron-path", "runs/lora", "--hf-path", "out/hf"]) == 3
    err = capsys.readouterr().err
    assert "is a LoRA run" in err and "omni3-lora-merge" in err and "omni3-adapter-export" in err
    assert nothing_written(tmp_path / "out" / "hf")


@pytest.mark.parametrize(
    ("drop", "changes", "message"),
    [
        ((".metadata",), {}, "is incomplete: .metadata missing"),
        ((), {"checkpoint": None}, "records no saved checkpoint"),
        ((), {"checkpoint": {"dir": "checkpoints", "iteration": 5, "path": "checkpoints/iter_0000009"}}, "missing"),
    ],
)
def test_a_run_without_a_complete_save_is_exit_3(
    tmp_path: Path,
    make_lora_run: MakeArtifact,
    capsys: pytest.CaptureFixture[str],
    drop: tuple[str, ...],
    changes: dict[str, object],
    message: str,
) -> None:
    make_lora_run(tmp_path / "run", hf_model=None, peft=None, drop=drop, extra_changes=changes)
    assert cli(["--megatron-path", "run", "--hf-path", "out/hf"]) == 3
    assert message in capsys.readouterr().err
    assert cli(["--dry-run", "--megatron-path", "run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["verdict"].startswith("1 problem")


@pytest.mark.parametrize("kind", [ArtifactKind.DATASET, ArtifactKind.HF_CHECKPOINT, ArtifactKind.ADAPTER])
def test_wrong_kind_input_is_exit_3(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str], kind: ArtifactKind
) -> None:
    make_artifact(tmp_path / "ckpt", kind)
    assert cli(["--megatron-path", "ckpt"]) == 3
    assert f"is a {kind.value}" in capsys.readouterr().err


def test_complete_output_without_force_is_exit_2(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "ckpt", ArtifactKind.MEGATRON_CHECKPOINT)
    existing = make_artifact(tmp_path / "out", ArtifactKind.HF_CHECKPOINT)
    before = (existing / MANIFEST_FILE).read_bytes()
    for argv in (
        ["--megatron-path", "ckpt", "--hf-path", "out"],
        ["--megatron-path=ckpt", "--hf-path=out", "--force=false"],
    ):
        assert cli(argv) == 2
        assert "a complete artifact already exists" in capsys.readouterr().err
    assert cli(["--megatron-path", "ckpt", "--hf-path", "out", "--force"]) == 2  # passes the checks, then not yet
    assert "needs Megatron-Bridge" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before


def test_dry_run_reports_an_existing_output(
    tmp_path: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "out", ArtifactKind.HF_CHECKPOINT)
    assert cli(["--dry-run", "--hf-path", "out"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["outputs"][0]["status"].startswith("not writable")
    assert cli(["--dry-run", "--hf-path", "out", "--force"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["outputs"][0]["status"] == "will be replaced (--force)"


def test_settings_come_from_flag_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file = tmp_path / "export.yaml"
    settings_file.write_text("megatron_path: from-file\nhf_path: file-out\nstrict: true\n")
    monkeypatch.setenv("OMNI3_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("OMNI3_MEGATRON_PATH", "from-env")
    monkeypatch.setenv("OMNI3_VERIFY", "false")
    assert cli(["--dry-run", "--hf-path", "flag-out"]) == 0
    settings = yaml.safe_load(capsys.readouterr().out)["settings"]
    assert settings["megatron_path"] == "from-env"
    assert settings["hf_path"] == "flag-out"
    assert settings["strict"] is True
    assert settings["verify"] is False


def test_storage_root_anchors_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tmp_path / "store" / "checkpoints" / "nemotron_omni", ArtifactKind.TRAINING_RUN)
    monkeypatch.setenv("OMNI3_STORAGE_ROOT", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path / "store" / "checkpoints")
    assert cli(["--dry-run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["inputs"][0]["status"] == "ok (training-run)"
    assert plan["outputs"][0]["path"] == str(tmp_path / "store" / "exports" / "nemotron_omni_hf")


def test_bad_setting_value_is_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNI3_STRICT", "perhaps")
    assert cli(["--dry-run"]) == 2
    assert "OMNI3_STRICT" in capsys.readouterr().err


def test_unknown_flag_is_exit_2_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--megatron-pth", "x"]) == 2
    assert "did you mean --megatron-path?" in capsys.readouterr().err


def test_unknown_key_in_settings_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text("hf_pth: x\n")
    assert cli(["--dry-run", "--settings-file", "s.yaml"]) == 2
    assert "unknown setting 'hf_pth'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [("/models/base", "/models/base"), ("models/base", "/store/models/base")],
    ids=["absolute", "relative-to-its-storage-root"],
)
def test_the_reference_hf_model_comes_from_the_checkpoint_manifest(recorded: str, expected: str) -> None:
    from types import SimpleNamespace

    from omni3_export.cli import reference_hf_model

    manifest = SimpleNamespace(config={"hf_model": recorded, "storage_root": "/store"})
    plan = SimpleNamespace(input_manifests={"megatron_checkpoint": manifest})
    settings = ExportSettings(megatron_path="checkpoints/x", hf_path="exports/x", storage_root="/elsewhere")
    assert reference_hf_model(settings, plan) == Path(expected)
