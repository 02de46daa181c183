"""omni3-export's tensor accounting: reference tensors the export lacks are listed, not fatal (CPU)."""

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


def test_missing_and_extra_tensors_are_listed(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref", ["a", "b", "sound_encoder.feature_extractor.featurizer.fb"])
    exported = write(tmp_path / "out", ["a", "b", "c"])
    result = account_tensors(reference, exported)
    assert result == {
        "reference_tensors": 3,
        "exported_tensors": 3,
        "regenerated_from_config": ["sound_encoder.feature_extractor.featurizer.fb"],
        "not_in_reference": ["c"],
    }
