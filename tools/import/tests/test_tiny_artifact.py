"""`omni3-import tiny` on the CPU: it publishes the built-in tiny Omni as an hf-checkpoint artifact that loads,
that `omni3-import --hf-model DIR` takes as its input and that the tiny SFT variant finds as its hf_model.

Real files, no mocks. The model is built once with --vision omit (~13 MB, a few seconds) and copied where a
test needs a published one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

transformers = pytest.importorskip("transformers")

from omni3_import.builtin import ships_only_builtin_code  # noqa: E402
from omni3_import.cli import cli, plan_import  # noqa: E402
from omni3_import.settings import ImportSettings  # noqa: E402
from omni3_import.tiny_model import TINY_RECORD  # noqa: E402
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind, manifest_digest, read_manifest  # noqa: E402
from omni3_shared.pytest_plugin import dry_run_plan, nothing_written  # noqa: E402

DEFAULT_OUTPUT = Path("models/tiny_omni_hf")
CONFIG_CODE = "configuration_nemotron_omni_tiny.py"


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No OMNI3_* variable of the machine leaks in; the storage root is the test's scratch directory."""
    monkeypatch.setenv("OMNI3_STORAGE_ROOT", str(omni3_isolated))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One artifact written by the real command (--vision omit), shared read-only by the tests."""
    root = tmp_path_factory.mktemp("tiny_artifact")
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("OMNI3_")]:
            patch.delenv(name)
        patch.setenv("OMNI3_STORAGE_ROOT", str(root))
        assert cli(["tiny", "--output", str(DEFAULT_OUTPUT), "--vision", "omit"]) == 0
    yield root / DEFAULT_OUTPUT


def publish_copy(built: Path, storage_root: Path, relative: Path = DEFAULT_OUTPUT) -> Path:
    """A copy of the built artifact at ``relative`` under the storage root (the manifest travels with it)."""
    target = storage_root / relative
    shutil.copytree(built, target)
    return target


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


def test_writes_a_loadable_hf_checkpoint_artifact(built: Path) -> None:
    manifest = read_manifest(built, expect_kind=ArtifactKind.HF_CHECKPOINT, verify="sha256")
    for name in (
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00001.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "preprocessor_config.json",
        CONFIG_CODE,
        TINY_RECORD,
        MANIFEST_FILE,
    ):
        assert (built / name).is_file(), name
    record = json.loads((built / TINY_RECORD).read_text())
    assert manifest.config | {"output": None} == {
        "builtin": "tiny",
        "output": None,
        "seed": 0,
        "vision": "omit",
        "dtype": "bfloat16",
    }
    assert manifest.config["output"] == str(built)
    assert manifest.extra["tiny_record"] == record
    assert (manifest.extra["seed"], manifest.extra["vision"]) == (0, "omit")
    assert "initialises the vision tower randomly" in manifest.extra["vision_note"]
    assert manifest.tool.name == "omni3-import"
    assert manifest.tool.packages["transformers"] == transformers.__version__
    assert set(manifest.tool.packages) >= {"tokenizers", "safetensors", "torch"}
    assert manifest.inputs == []
    # Published by one rename: no staging directory or lock beside it.
    assert sorted(path.name for path in built.parent.iterdir()) == [built.name]

    load = {"trust_remote_code": True, "local_files_only": True}
    config = transformers.AutoConfig.from_pretrained(str(built), **load)
    assert config.architectures == ["NemotronH_Nano_Omni_Reasoning_V3"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(built), **load)
    assert len(tokenizer) == record["tokenizer_size"]
    processor = transformers.AutoProcessor.from_pretrained(str(built), **load)
    assert type(processor).__name__ == "NemotronH_Nano_Omni_Reasoning_V3Processor"


def test_second_run_without_force_is_refused_and_force_replaces(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = publish_copy(built, tmp_path)
    before = snapshot(target)

    assert cli(["tiny", "--vision", "omit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("omni3-import: error: a complete artifact already exists at ")
    assert "--force" in err
    assert snapshot(target) == before

    assert cli(["tiny", "--vision", "omit", "--seed", "1", "--force"]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    manifest = read_manifest(target, expect_kind=ArtifactKind.HF_CHECKPOINT, verify="sha256")
    assert manifest.config["seed"] == 1
    assert json.loads((target / TINY_RECORD).read_text())["seed"] == 1
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = dry_run_plan(cli, capsys, "tiny")
    assert plan["dry_run"] == "omni3-import tiny"
    assert plan["settings"] == {"storage_root": str(tmp_path)}
    assert plan["config"] == {
        "builtin": "tiny",
        "output": str(tmp_path / DEFAULT_OUTPUT),
        "seed": 0,
        "vision": "full",  # the default: what a round trip and image training need
        "dtype": "bfloat16",
    }
    assert plan["inputs"] == []
    assert plan["outputs"] == [
        {"role": "hf_model", "path": str(tmp_path / DEFAULT_OUTPUT), "kind": "hf-checkpoint", "status": "ok"}
    ]
    assert plan["tiny_model"]["estimated_gb"] > 1.3
    assert plan["verdict"] == "ready: every check passed"
    assert nothing_written(tmp_path / DEFAULT_OUTPUT)
    assert list(tmp_path.iterdir()) == []

    light = dry_run_plan(cli, capsys, "tiny", "--output", "elsewhere/tiny", "--vision", "omit", "--seed", "3")
    assert (light["config"]["vision"], light["config"]["seed"]) == ("omit", 3)
    assert light["tiny_model"]["estimated_gb"] < 0.1
    assert list(tmp_path.iterdir()) == []


def test_dry_run_over_a_complete_artifact_names_the_problem(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_copy(built, tmp_path)
    plan = dry_run_plan(cli, capsys, "tiny")
    assert plan["outputs"][0]["status"].startswith("not writable: a complete artifact already exists")
    assert plan["verdict"].startswith("1 problem")
    assert dry_run_plan(cli, capsys, "tiny", "--force")["outputs"][0]["status"] == "will be replaced (--force)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vision", "half"], "--vision must be full or omit, not 'half'"),
        (["--seed", "-1"], "--seed must be a whole number"),
        (["--seed", "abc"], "--seed must be a whole number"),
        (["--output", ""], "--output needs a directory"),
        (["--visoin", "omit"], "unknown flag --visoin"),
    ],
    ids=["vision", "negative-seed", "text-seed", "empty-output", "misspelt-flag"],
)
def test_bad_flag_value_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli(["tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"omni3-import: error: {message}")
    assert "Fix: " in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_help_says_omit_is_the_light_choice(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tiny", "--help"]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "--vision" in text and "--seed" in text and "--force" in text and "--dry_run" in text
    assert "omit (~13 MB) is the light choice for CI, and the bridge then initialises the vision tower randomly" in text


def test_import_takes_the_artifact_as_its_input_without_trust_remote_code(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = publish_copy(built, tmp_path)
    plan = dry_run_plan(cli, capsys, "--hf-model", str(DEFAULT_OUTPUT), "--megatron-path", "checkpoints/tiny_omni")
    assert plan["inputs"] == [{"role": "hf_model", "path": str(target), "status": "ok (hf-checkpoint)"}]
    assert plan["hf_checkpoint"]["code_is_builtin"] is True
    assert plan["hf_checkpoint"]["tensors"] == json.loads((target / TINY_RECORD).read_text())["num_tensors"]
    assert plan["verdict"] == "ready: every check passed"

    # What `run` hands to run_import, which passes it to the Megatron checkpoint's manifest as its inputs.
    settings = ImportSettings(hf_model=str(DEFAULT_OUTPUT))
    refs = plan_import(settings, target, builtin=False, own_code=True, force=False).input_refs
    assert [(ref.role, ref.kind, ref.external, ref.path) for ref in refs] == [
        ("hf_model", ArtifactKind.HF_CHECKPOINT, False, str(target))
    ]
    assert refs[0].manifest_sha256 == manifest_digest(target)


def test_edited_code_needs_trust_remote_code(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A plain copy (no manifest, as after `cp -r` of the files): the code alone decides whether trust is needed.
    target = publish_copy(built, tmp_path)
    (target / MANIFEST_FILE).unlink()
    plan = dry_run_plan(cli, capsys, "--hf-model", str(DEFAULT_OUTPUT))
    assert plan["inputs"][0]["status"] == "external directory (no omni3 manifest)"
    assert (plan["hf_checkpoint"]["code_is_builtin"], plan["verdict"]) == (True, "ready: every check passed")

    with (target / CONFIG_CODE).open("a") as handle:
        handle.write("\nprint('not the built-in code')\n")
    assert not ships_only_builtin_code(target)
    plan = dry_run_plan(cli, capsys, "--hf-model", str(DEFAULT_OUTPUT))
    assert (plan["hf_checkpoint"]["code_is_builtin"], plan["verdict"][:9]) == (False, "1 problem")
    assert cli(["--hf-model", str(DEFAULT_OUTPUT)]) == 2  # the real run stops on it before any GPU work
    assert "Fix: pass --trust-remote-code if you trust its source" in capsys.readouterr().err
    trusted = dry_run_plan(cli, capsys, "--hf-model", str(DEFAULT_OUTPUT), "--trust-remote-code")
    assert trusted["verdict"] == "ready: every check passed"


def test_auto_map_naming_another_repository_is_not_builtin_code(built: Path, tmp_path: Path) -> None:
    target = publish_copy(built, tmp_path)
    assert ships_only_builtin_code(target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "someone/else--configuration_evil.Config"
    (target / "config.json").write_text(json.dumps(config))
    assert not ships_only_builtin_code(target)


@pytest.mark.skipif(importlib.util.find_spec("omni3_sft") is None, reason="omni3-sft is not installed here")
def test_sft_tiny_variant_finds_the_artifact_as_its_hf_model(built: Path, tmp_path: Path) -> None:
    # Through the command line: tools talk only through artifacts on storage, never by importing each other.
    target = publish_copy(built, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "omni3_sft", "--config", "tiny", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    hf_model = [entry for entry in plan["inputs"] if entry["role"] == "hf_model"]
    # The dataset and the Megatron checkpoint are not there; only the hf_model input is this test's business.
    assert hf_model == [{"role": "hf_model", "path": str(target), "status": "ok (hf-checkpoint)"}]


@pytest.mark.slow
def test_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    """docker stop sends SIGTERM: the staging directory and the lock go, nothing is published."""
    output = tmp_path / "models" / "tiny_omni_hf"
    staging = output.parent / f".{output.name}.partial"
    # --vision full: the RADIO shards take long enough to stop the writer in the middle of them.
    process = subprocess.Popen(
        [sys.executable, "-m", "omni3_import", "tiny", "--output", str(output), "--vision", "full"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(staging.glob("*.safetensors")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never started its shards"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted; nothing was published" in err
    assert nothing_written(output)
