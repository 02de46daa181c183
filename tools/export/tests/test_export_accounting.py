"""omni3-export's tensor accounting: what came from the reference, and what the reference lacks (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from omni3_export.core import account_tensors  # noqa: E402


def write(directory: Path, names: list[str]) -> Path:
    directory.mkdir()
    save_file({name: torch.zeros(1) for name in names}, str(directory / "model.safetensors"))
    return directory


def test_copied_and_extra_tensors_are_listed(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref", ["a", "b", "video_embedder.weight"])
    exported = write(tmp_path / "out", ["a", "b", "c", "video_embedder.weight"])
    result = account_tensors(reference, exported, ["video_embedder.weight"])
    assert result == {
        "reference_tensors": 3,
        "exported_tensors": 4,
        "copied_from_reference": ["video_embedder.weight"],
        "not_in_reference": ["c"],
    }
