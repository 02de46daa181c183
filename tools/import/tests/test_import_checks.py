"""omni3-import's checks of the HF checkpoint and the layout (issue 4, item 9): each bad case is one clear
message with its exit code, and nothing is written."""

from __future__ import annotations

import json
import shutil
import struct
from collections import namedtuple
from pathlib import Path

import pytest

from omni3_import.cli import cli
from omni3_import.tiny_model.spec import TinyOmniSpec

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """No OMNI3_* or launcher variable leaks in; scratch directory (omni3_shared.pytest_plugin)."""


def shard_bytes(names: list[str], floats: int = 4) -> bytes:
    header, offset = {}, 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [floats], "data_offsets": [offset, offset + 4 * floats]}
        offset += 4 * floats
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * offset


def make_hf(path: Path, auto_map: bool = False, **config_changes: object) -> Path:
    """A two-shard Omni checkpoint with an index, small enough for the CPU tests."""
    path.mkdir(parents=True)
    config = TinyOmniSpec().config("configuration_x.Config")
    if not auto_map:
        config.pop("auto_map")
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    shards = {"model-00001-of-00002.safetensors": ["a", "b"], "model-00002-of-00002.safetensors": ["c"]}
    weight_map = {}
    for shard, names in shards.items():
        (path / shard).write_bytes(shard_bytes(names))
        weight_map.update(dict.fromkeys(names, shard))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def run(*args: str) -> int:
    return cli(["--hf-model", "hf", "--megatron-path", "out/ckpt", *args])


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()


def test_a_valid_checkpoint_passes_the_checks_and_reports_facts(tmp_path: Path, capsys) -> None:
    make_hf(tmp_path / "hf")
    assert run("--dry-run") == 0
    out = capsys.readouterr().out
    assert "ready: every check passed" in out and "shards: 2" in out and "tensors: 3" in out


def test_missing_shard_is_exit_3(tmp_path: Path, capsys) -> None:
    (make_hf(tmp_path / "hf") / "model-00002-of-00002.safetensors").unlink()
    assert run() == 3
    assert "missing 1 shard(s)" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_truncated_shard_is_exit_3(tmp_path: Path, capsys) -> None:
    shard = make_hf(tmp_path / "hf") / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    assert run() == 3
    assert "is truncated" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_shard_without_the_tensors_the_index_names_is_exit_3(tmp_path: Path, capsys) -> None:
    hf = make_hf(tmp_path / "hf")
    (hf / "model-00002-of-00002.safetensors").write_bytes(shard_bytes(["other"]))
    assert run() == 3
    assert "lacks 1 tensor(s)" in capsys.readouterr().err


def test_non_omni_architecture_is_exit_3(tmp_path: Path, capsys) -> None:
    make_hf(tmp_path / "hf", architectures=["LlamaForCausalLM"])
    assert run() == 3
    err = capsys.readouterr().err
    assert "LlamaForCausalLM" in err and "not Nemotron 3 Nano Omni" in err
    assert_nothing_written(tmp_path)


def test_remote_code_needs_the_opt_in(tmp_path: Path, capsys) -> None:
    make_hf(tmp_path / "hf", auto_map=True)
    assert run() == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert run("--trust-remote-code", "--dry-run") == 0


@pytest.mark.parametrize(
    ("args", "world", "message"),
    [
        (["--tensor-parallel-size", "2"], "3", "world size 3 is not a multiple"),
        (["--tensor-parallel-size", "8"], None, "does not divide the model's num_attention_heads"),
        (["--expert-parallel-size", "3"], None, "does not divide the model's 4 experts"),
    ],
)
def test_layout_that_does_not_fit_is_exit_2(tmp_path, capsys, monkeypatch, args, world, message) -> None:
    make_hf(tmp_path / "hf")
    if world:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert run(*args) == 2
    assert message in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_too_little_disk_is_exit_1(tmp_path: Path, capsys, monkeypatch) -> None:
    make_hf(tmp_path / "hf")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 * MiB, 10 * MiB, 0))
    assert run() == 1
    assert "not enough disk" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_builtin_tiny_dry_run_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OMNI3_CACHE_DIR", str(tmp_path / "cache"))
    assert cli(["--hf-model", "tiny", "--megatron-path", "out/ckpt", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "generated on the first real run" in out and "ready: every check passed" in out
    assert not (tmp_path / "cache").exists()
