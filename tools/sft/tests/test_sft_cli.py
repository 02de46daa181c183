"""omni3-sft on the CPU: variants, settings precedence with a variant's block, overrides, and pre-GPU checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omni3_sft.cli import cli
from omni3_sft.settings import SftSettings
from omni3_sft.stage_config import VARIANTS
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind, tool_info
from omni3_shared.publish import publish_artifact
from omni3_shared.pytest_plugin import dry_run_plan, nothing_written

MakeArtifact = Callable[..., Path]


@pytest.fixture
def tiny_inputs(tmp_path: Path, make_artifact: MakeArtifact, make_dataset, write_hf_config) -> Path:
    """What the tiny variant reads, where its settings block points (relative to the working directory)."""
    make_dataset(tmp_path / "datasets" / "synth_receipts")
    make_artifact(tmp_path / "checkpoints" / "tiny_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    write_hf_config(tmp_path / "models" / "tiny_omni_hf")
    return tmp_path


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    return dry_run_plan(cli, capsys, *argv)


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
    assert plan["config"]["model"]["seq_length"] == 1024


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


def test_valid_inputs_without_megatron_bridge_are_exit_2_and_write_nothing(
    tiny_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--config", "tiny", "train.train_iters=2"]) == 2
    err = capsys.readouterr().err
    assert "training needs Megatron-Bridge, which this environment lacks" in err
    assert "omni3-sft GPU image" in err
    assert nothing_written(tiny_inputs / "runs" / "tiny")


def test_training_run_is_a_valid_starting_checkpoint(
    tiny_inputs: Path, make_artifact: MakeArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    make_artifact(tiny_inputs / "runs" / "previous", ArtifactKind.TRAINING_RUN)
    assert cli(["--config", "tiny", "--megatron-checkpoint", "runs/previous", "--run-dir", "runs/next"]) == 2
    assert "training needs Megatron-Bridge" in capsys.readouterr().err


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
    assert "training needs Megatron-Bridge" in capsys.readouterr().err
    assert (existing / MANIFEST_FILE).read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------
# Preflight against the model and the GPUs, and the Megatron-Bridge plan, in the dry run and the real run


def test_dry_run_prints_the_checks_and_the_megatron_bridge_plan(
    tiny_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = dry_run(capsys, "--config", "tiny")
    assert plan["world_size"]["status"].startswith("world size unknown on this machine")
    assert plan["layout"] == "ok"
    assert plan["model"]["source"] == str(tiny_inputs / "models" / "tiny_omni_hf" / "config.json")
    assert plan["model"]["llm_layers"] == {"mamba": 2, "attention": 1, "moe": 2, "mlp": 1}
    assert plan["memory"]["per_gpu_gb"] < plan["memory"]["card_gb"]
    assert plan["memory"]["trains"].startswith("vision_projection, sound_projection")
    assert plan["resume"]["status"].startswith("no complete checkpoint")
    bridge = plan["megatron_bridge"]
    assert bridge["patch"].endswith(f"_DEFAULT_HF_PATH = {tiny_inputs / 'models' / 'tiny_omni_hf'}")
    assert bridge["set"]["model.tensor_model_parallel_size"] == 1
    assert bridge["set"]["checkpoint.save"] == str(tiny_inputs / "runs" / ".tiny.partial" / "checkpoints")
    assert bridge["set"]["dataset"]["build"].endswith(":EnergonDatasetConfig")
    assert bridge["runtime"]["dataset_form"] == "energon"
    assert "problems" not in plan


def test_world_size_from_nproc_and_torchrun(
    tiny_inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dry_run(capsys, "--config", "tiny", "--nproc", "1")["world_size"]["status"] == "ok"
    plan = dry_run(capsys, "--config", "tiny", "--nproc", "2")
    assert plan["world_size"]["status"].startswith("not ok: global batch 1 does not divide")
    assert plan["verdict"].startswith("1 problem(s)")
    assert plan["problems"][0].startswith("global batch 1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(["--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data-parallel size 2" in err
    assert cli(["--config", "tiny", "--nproc", "4"]) == 2
    assert "--nproc 4 but torchrun started 2" in capsys.readouterr().err
    assert cli(["--config", "tiny", "train.global_batch_size=2"]) == 2
    assert "training needs Megatron-Bridge" in capsys.readouterr().err


def test_a_bad_layout_stops_before_the_inputs_are_looked_at(
    tmp_path: Path, make_artifact: MakeArtifact, write_hf_config, capsys: pytest.CaptureFixture[str]
) -> None:
    write_hf_config(tmp_path / "models" / "tiny_omni_hf")  # no dataset, no checkpoint: those would be exit 3
    assert cli(["--config", "tiny", "model.tensor_model_parallel_size=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "4 attention heads do not divide by TP 3" in err and "Fix: set model.tensor_model_parallel_size" in err
    assert cli(["--config", "tiny", "model.expert_model_parallel_size=3"]) == 2
    assert "4 experts do not divide by EP 3" in capsys.readouterr().err


def test_checkpoint_code_runs_only_when_trusted(tiny_inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--config", "tiny", "--trust-remote-code=false"]) == 2
    err = capsys.readouterr().err
    assert "ships Python code" in err and "--trust-remote-code" in err


def test_memory_warning_before_the_run(tiny_inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--config", "tiny", "--gpu-memory-gb", "1")
    assert plan["warnings"][0].startswith("estimated 4 GB per GPU exceeds the 1 GB card")
    assert plan["verdict"] == "ready: every check passed"  # a warning does not stop the run
    assert cli(["--config", "tiny", "--gpu-memory-gb", "1"]) == 2  # still: training needs Megatron-Bridge
    err = capsys.readouterr().err
    assert "WARNING estimated 4 GB per GPU exceeds the 1 GB card" in err
    assert cli(["--config", "tiny", "--gpu-memory-gb", "0"]) == 2
    assert "gpu_memory_gb" in capsys.readouterr().err


def test_only_the_first_rank_logs_the_warnings(
    tiny_inputs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun starts the CLI once per GPU: 4 copies of each warning on 4x H200 (2026-11-27)."""
    monkeypatch.setenv("RANK", "1")
    assert cli(["--config", "tiny", "--gpu-memory-gb", "1"]) == 2
    assert "exceeds the 1 GB card" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert cli(["--config", "tiny", "--gpu-memory-gb", "1"]) == 2
    assert "exceeds the 1 GB card" in capsys.readouterr().err


def test_unreadable_model_config_is_exit_3(tiny_inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_inputs / "models" / "tiny_omni_hf" / "config.json").write_text("{}")
    assert cli(["--config", "tiny"]) == 3
    assert "has no llm_config" in capsys.readouterr().err
    plan = dry_run(capsys, "--config", "tiny")
    assert any("layout, world size and memory" in line for line in plan["not_checked"])


def complete_iteration(save_dir: Path, iteration: int, model: dict, tracker: int | None = None) -> None:
    """An iteration as Megatron-Bridge leaves it after a finished save."""
    path = save_dir / f"iter_{iteration:07d}"
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"\x00" * 8)
    (path / ".metadata").write_bytes(b"\x00" * 8)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (path / "train_state.pt").write_bytes(b"\x01" * 8)
    (path / "run_config.yaml").write_text(yaml.safe_dump({"model": model}))
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(tracker or iteration))


def test_checkpoint_of_another_model_is_exit_3(
    tmp_path: Path, make_dataset, write_hf_config, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path / "datasets" / "synth_receipts")
    write_hf_config(tmp_path / "models" / "tiny_omni_hf")
    source = tmp_path / "import-staging"
    complete_iteration(source, 1, {"hidden_size": 2688, "num_moe_experts": 128})
    with publish_artifact(
        tmp_path / "checkpoints" / "tiny_omni",
        kind=ArtifactKind.MEGATRON_CHECKPOINT,
        tool=tool_info("omni3-import", "0"),
        config={},
        inputs=[],
    ) as staging:
        for path in source.rglob("*"):
            if path.is_file():
                target = staging.path / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    assert cli(["--config", "tiny"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was saved from another model: hidden_size 2688" in err


def test_resume_point_shows_in_the_dry_run(tiny_inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_dir = tiny_inputs / "runs" / ".tiny.partial" / "checkpoints"
    model = {"hidden_size": 256}
    complete_iteration(save_dir, 5, model)
    plan = dry_run(capsys, "--config", "tiny")
    assert plan["resume"]["status"] == "resumes from iteration 5"
    assert "checkpoint.ckpt_step" not in plan["megatron_bridge"]["set"]
    (save_dir / "iter_0000010").mkdir()  # a save killed before its metadata, the tracker already moved on
    (save_dir / "latest_checkpointed_iteration.txt").write_text("10")
    plan = dry_run(capsys, "--config", "tiny")
    assert plan["resume"]["status"].startswith("resumes from iteration 5 (the tracker says 10")
    assert plan["resume"]["incomplete_never_loaded"][0].startswith("iter_0000010 (missing .metadata")
    assert plan["megatron_bridge"]["set"]["checkpoint.ckpt_step"] == 5


def test_audio_filter_on_a_dataset_without_audio_is_exit_3(
    tmp_path: Path, make_dataset, make_artifact: MakeArtifact, write_hf_config, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path / "datasets" / "valor32k" / "energon")  # image samples only
    make_artifact(tmp_path / "checkpoints" / "nemotron_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    write_hf_config(tmp_path / "hf")
    argv = ["--config", "audio_text", "--hf-model", "hf", "--trust-remote-code", "--nproc", "4"]
    assert cli(argv) == 3
    assert "has no audio samples" in capsys.readouterr().err
    make_dataset(tmp_path / "datasets" / "with_audio", audio=3)
    assert cli([*argv, "--valor32k-energon-path", "datasets/with_audio"]) == 2
    assert "training needs Megatron-Bridge" in capsys.readouterr().err


def test_default_variant_is_checked_with_the_published_shape(capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run(capsys, "--nproc", "8")
    assert plan["model"]["source"].startswith("published Nemotron 3 Nano Omni shape")
    assert plan["world_size"]["status"] == "ok"
    assert plan["memory"]["assumes"] == "8 GPU(s), TP 4 x PP 1 x CP 1, EP 8 x ETP 1"
    assert "megatron_bridge" not in plan
    assert any("field assignments" in line for line in plan["not_checked"])


def test_hub_model_is_passed_to_the_recipe_without_the_scheme(
    tiny_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = dry_run(capsys, "--config", "tiny", "--hf-model", "hf://nvidia/some-omni")
    assert plan["megatron_bridge"]["patch"].endswith("_DEFAULT_HF_PATH = nvidia/some-omni")
    assert plan["model"]["source"].startswith("published")
