"""omni3-sft on the CPU: variants, settings precedence with a variant's block, overrides, and pre-GPU checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omni3_sft.cli import cli
from omni3_sft.settings import SftSettings
from omni3_sft.stage_config import VARIANTS
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind

MakeArtifact = Callable[..., Path]


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli([*argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def nothing_written(output: Path) -> bool:
    return not output.exists() and not list(output.parent.glob(f".{output.name}.*"))


@pytest.fixture
def tiny_inputs(tmp_path: Path, make_artifact: MakeArtifact) -> Path:
    """What the tiny variant reads, where its settings block points (relative to the working directory)."""
    make_artifact(tmp_path / "datasets" / "synth_receipts", ArtifactKind.DATASET)
    make_artifact(tmp_path / "checkpoints" / "tiny_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    (tmp_path / "models" / "tiny_omni_hf").mkdir(parents=True)
    (tmp_path / "models" / "tiny_omni_hf" / "config.json").write_text("{}")
    return tmp_path


def test_help_exits_0_and_names_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--help"]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "Before any GPU work it checks" in text
    assert "variants" in text


def test_help_after_flags_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--config", "tiny", "train.train_iters=20", "--help"]) == 0
    captured = capsys.readouterr()
    assert "not available" not in captured.err  # the command did not run
    assert "megatron_checkpoint" in captured.out + captured.err  # the help of run, with its flags


def test_variants_lists_the_six(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["variants"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert sorted(line.split(":")[0] for line in lines) == sorted(VARIANTS)


def test_settings_lists_every_field_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["settings"]) == 0
    out = capsys.readouterr().out
    for name in SftSettings.model_fields:
        assert f"OMNI3_{name.upper()}" in out


@pytest.mark.parametrize("variant", VARIANTS)
def test_dry_run_of_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    plan = dry_run(capsys, "--config", variant)
    assert plan["dry_run"] == "omni3-sft run"
    assert plan["config"]["variant"].endswith(f"stage0_sft/{variant}.yaml")
    assert {"dataset", "megatron_checkpoint"} <= {entry["role"] for entry in plan["inputs"]}
    assert all(entry["status"].startswith("not ready") for entry in plan["inputs"])
    assert plan["outputs"][0]["kind"] == "training-run"
    assert "${" not in yaml.safe_dump(plan["config"])
    assert plan["config"]["dataset"]["path"].startswith(str(tmp_path))


def test_default_variant_leaves_the_hub_model_to_run_time(capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys)
    assert plan["settings"]["config"] == "default"
    assert "hf_model" not in {entry["role"] for entry in plan["inputs"]}
    assert any("hub id" in line for line in plan["not_checked"])


def test_dry_run_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--config", "tiny", "train.train_iters=20", "model.seq_length=256")
    assert plan["config"]["train"]["train_iters"] == 20
    assert plan["config"]["model"]["seq_length"] == 256
    assert plan["config"]["overrides"] == ["train.train_iters=20", "model.seq_length=256"]


def test_dry_run_with_ready_inputs(tiny_inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--config", "tiny")
    statuses = {entry["role"]: entry["status"] for entry in plan["inputs"]}
    assert statuses == {
        "dataset": "ok (dataset)",
        "megatron_checkpoint": "ok (megatron-checkpoint)",
        "hf_model": "external directory (no omni3 manifest)",
    }
    assert plan["outputs"][0]["path"] == str(tiny_inputs / "runs" / "tiny")
    assert plan["verdict"] == "ready: every check passed"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trian.train_iters=20", "unknown section 'trian'"),
        ("train.train_itres=20", "unknown key 'train.train_itres'"),
        ("train.train_iters", "not of the form section.field=value"),
        ("train.train_iters=many", "train.train_iters"),
    ],
)
def test_bad_override_is_exit_2_even_in_a_dry_run(
    capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert cli(["--config", "tiny", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_bare_switches_do_not_swallow_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--config", "tiny", "--trust-remote-code", "train.train_iters=20")
    assert plan["settings"]["trust_remote_code"] is True
    assert plan["config"]["train"]["train_iters"] == 20


def test_unknown_config_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--config", "tinyy", "--dry-run"]) == 2
    assert "unknown stage config 'tinyy'" in capsys.readouterr().err


def test_config_as_a_yaml_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "own.yaml"
    document = yaml.safe_load(Path(dry_run(capsys, "--config", "tiny")["config"]["variant"]).read_text())
    document["train"]["train_iters"] = 3
    path.write_text(yaml.safe_dump(document))
    plan = dry_run(capsys, "--config", str(path))
    assert plan["config"]["train"]["train_iters"] == 3
    assert plan["settings"]["run_dir"] == "runs/tiny"


def test_variant_settings_block_may_not_choose_the_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("recipe: nemotron_omni_cord_v2_sft_config\nsettings:\n  config: tiny\n")
    assert cli(["--config", str(path), "--dry-run"]) == 2
    assert "'settings' must map settings other than config and stage_dir" in capsys.readouterr().err


def test_variant_settings_block_with_an_unknown_setting_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).resolve().parents[3] / "stages" / "stage0_sft" / "tiny.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("run_dir: runs/tiny", "rundir: runs/tiny"))
    assert cli(["--config", str(tmp_path / "typo.yaml"), "--dry-run"]) == 2
    assert "unknown setting 'rundir'" in capsys.readouterr().err


def test_variant_block_is_below_file_environment_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dry_run(capsys, "--config", "tiny")["settings"]["megatron_checkpoint"] == "checkpoints/tiny_omni"

    (tmp_path / "s.yaml").write_text("megatron_checkpoint: from-file\nrun_dir: file-run\n")
    settings = dry_run(capsys, "--config", "tiny", "--settings-file", "s.yaml")["settings"]
    assert (settings["megatron_checkpoint"], settings["run_dir"]) == ("from-file", "file-run")

    monkeypatch.setenv("OMNI3_MEGATRON_CHECKPOINT", "from-env")
    plan = dry_run(capsys, "--config", "tiny", "--settings-file", "s.yaml")
    assert plan["settings"]["megatron_checkpoint"] == "from-env"
    assert plan["settings"]["run_dir"] == "file-run"
    assert plan["config"]["checkpoint"]["pretrained_checkpoint"] == str(tmp_path / "from-env")

    plan = dry_run(capsys, "--config", "tiny", "--megatron-checkpoint", "from-flag")
    assert plan["settings"]["megatron_checkpoint"] == "from-flag"
    assert plan["settings"]["cord_v2_path"] == "datasets/synth_receipts"  # the rest of the block still applies


def test_variant_chosen_through_the_environment(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("OMNI3_CONFIG", "tiny")
    plan = dry_run(capsys)
    assert plan["settings"]["run_dir"] == "runs/tiny"
    assert plan["config"]["model"]["seq_length"] == 512


def test_relative_paths_resolve_under_storage_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    make_artifact(store / "datasets" / "mine", ArtifactKind.DATASET)
    make_artifact(store / "checkpoints" / "tiny_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("OMNI3_STORAGE_ROOT", str(store))
    plan = dry_run(capsys, "--config", "tiny", "--cord-v2-path", "datasets/mine", "--hf-model", "hf://tiny")
    assert [entry["status"] for entry in plan["inputs"]] == ["ok (dataset)", "ok (megatron-checkpoint)"]
    assert plan["outputs"][0]["path"] == str(store / "runs" / "tiny")
    # a relative path written straight into the stage config lands under the storage root too
    plan = dry_run(capsys, "--config", "tiny", "dataset.path=datasets/mine", "--hf-model", "hf://tiny")
    assert plan["inputs"][0]["path"] == str(store / "datasets" / "mine")
    assert plan["inputs"][0]["status"] == "ok (dataset)"


def test_missing_input_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--config", "tiny"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-sft: error: input ")
    assert "synth_receipts" in err  # the first input checked is the dataset


def test_valid_inputs_are_not_available_yet_and_write_nothing(
    tiny_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--config", "tiny", "train.train_iters=2"]) == 2
    assert "training is not available in this version" in capsys.readouterr().err
    assert nothing_written(tiny_inputs / "runs" / "tiny")


def test_training_run_is_a_valid_starting_checkpoint(
    tiny_inputs: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tiny_inputs / "runs" / "previous", ArtifactKind.TRAINING_RUN)
    assert cli(["--config", "tiny", "--megatron-checkpoint", "runs/previous", "--run-dir", "runs/next"]) == 2
    assert "training is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "kind"),
    [("--cord-v2-path", ArtifactKind.HF_CHECKPOINT), ("--megatron-checkpoint", ArtifactKind.DATASET)],
)
def test_wrong_kind_input_is_exit_3(
    tiny_inputs: Path,
    make_artifact: MakeArtifact,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    kind: ArtifactKind,
) -> None:
    make_artifact(tiny_inputs / "wrong", kind)
    assert cli(["--config", "tiny", flag, "wrong"]) == 3
    assert f"is a {kind.value}" in capsys.readouterr().err
    assert nothing_written(tiny_inputs / "runs" / "tiny")


def test_complete_run_dir_without_force_is_exit_2(
    tiny_inputs: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = make_artifact(tiny_inputs / "runs" / "tiny", ArtifactKind.TRAINING_RUN)
    before = (existing / MANIFEST_FILE).read_bytes()
    assert cli(["--config", "tiny"]) == 2
    assert "a complete artifact already exists" in capsys.readouterr().err
    assert cli(["--config", "tiny", "--force"]) == 2
    assert "training is not available" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before
