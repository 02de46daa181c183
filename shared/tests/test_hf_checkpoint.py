"""Completing an exported HF checkpoint with the reference's tensors it lacks (CPU, real safetensors files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file  # noqa: E402

from omni3_shared.hf_checkpoint import CARRIED_SHARD, INDEX_FILE, copy_missing_tensors, tensor_names  # noqa: E402

VIDEO = "vision_model.radio_model.model.patch_generator.video_embedder.weight"


def shards(directory: Path, files: dict[str, dict[str, torch.Tensor]], index: bool) -> Path:
    directory.mkdir()
    for name, tensors in files.items():
        save_file(tensors, str(directory / name))
    if index:
        weight_map = {tensor: name for name, tensors in files.items() for tensor in tensors}
        total = sum(t.numel() * t.element_size() for tensors in files.values() for t in tensors.values())
        (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return directory


def reference(tmp_path: Path) -> Path:
    return shards(
        tmp_path / "reference",
        {
            "model-00001-of-00002.safetensors": {"a": torch.ones(2, 3), "b": torch.zeros(4)},
            "model-00002-of-00002.safetensors": {VIDEO: torch.arange(6.0).reshape(2, 3)},
        },
        index=True,
    )


def test_a_tensor_the_model_did_not_hold_is_copied_unchanged_and_indexed(tmp_path: Path) -> None:
    # The bridge keeps the reference's sharding and index, so the index still names the shard that lacks it.
    exported = shards(
        tmp_path / "exported",
        {
            "model-00001-of-00002.safetensors": {"a": torch.full((2, 3), 7.0), "b": torch.zeros(4)},
            "model-00002-of-00002.safetensors": {"c": torch.ones(1)},
        },
        index=True,
    )
    index_before = json.loads((exported / INDEX_FILE).read_text())
    source = reference(tmp_path)
    assert copy_missing_tensors(source, exported) == [VIDEO]
    carried = load_file(str(exported / CARRIED_SHARD))
    assert list(carried) == [VIDEO] and carried[VIDEO].equal(torch.arange(6.0).reshape(2, 3))
    assert load_file(str(exported / "model-00001-of-00002.safetensors"))["a"].equal(torch.full((2, 3), 7.0))
    index = json.loads((exported / INDEX_FILE).read_text())
    assert (
        index["weight_map"][VIDEO] == CARRIED_SHARD and index["weight_map"]["a"] == "model-00001-of-00002.safetensors"
    )
    assert index["metadata"]["total_size"] == index_before["metadata"]["total_size"] + 6 * 4
    # Every name the index gives is in the file it names: what a loader of the index reads.
    for name, shard in index["weight_map"].items():
        assert name in load_file(str(exported / shard)), (name, shard)
    assert copy_missing_tensors(source, exported) == []  # complete now: nothing to do


def test_a_single_file_export_gets_an_index_naming_both_files(tmp_path: Path) -> None:
    exported = shards(tmp_path / "exported", {"model.safetensors": {"a": torch.ones(2, 3), "b": torch.zeros(4)}}, False)
    assert copy_missing_tensors(reference(tmp_path), exported) == [VIDEO]
    index = json.loads((exported / INDEX_FILE).read_text())
    assert index["weight_map"] == {"a": "model.safetensors", "b": "model.safetensors", VIDEO: CARRIED_SHARD}
    assert tensor_names(exported) == {"a", "b", VIDEO}


def test_a_complete_export_is_left_alone(tmp_path: Path) -> None:
    exported = shards(
        tmp_path / "exported",
        {"model.safetensors": {"a": torch.ones(2, 3), "b": torch.zeros(4), VIDEO: torch.ones(2, 3)}},
        False,
    )
    assert copy_missing_tensors(reference(tmp_path), exported) == []
    assert sorted(p.name for p in exported.iterdir()) == ["model.safetensors"]
