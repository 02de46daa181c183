"""Fixtures of the sft tests: a clean OMNI3_*/launcher environment, a scratch working directory, artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_shared.manifest import ArtifactKind


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """No OMNI3_*, torchrun or Slurm variable leaks in; scratch directory (omni3_shared.pytest_plugin)."""


def tiny_omni_config(**llm_changes: object) -> dict:
    """A config.json of a tiny Omni checkpoint (the shape of omni3-import's built-in one)."""
    llm = {
        "hybrid_override_pattern": "M*EM-E",
        "hidden_size": 256,
        "vocab_size": 1024,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "intermediate_size": 512,
        "mamba_num_heads": 8,
        "mamba_head_dim": 32,
        "n_groups": 4,
        "ssm_state_size": 16,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "moe_shared_expert_intermediate_size": 256,
        **llm_changes,
    }
    return {
        "architectures": ["NemotronH_Nano_Omni_Reasoning_V3"],
        "auto_map": {"AutoConfig": "configuration_nemotron_omni_tiny.NemotronOmniTinyConfig"},
        "llm_config": llm,
        "projector_hidden_size": 512,
        "sound_config": {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "projection_hidden_size": 256,
            "num_mel_bins": 128,
        },
    }


@pytest.fixture
def write_hf_config() -> Callable[..., Path]:
    """Write a tiny Omni config.json into ``directory`` (changes apply to llm_config)."""

    def write(directory: Path, **llm_changes: object) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(tiny_omni_config(**llm_changes)))
        return directory

    return write


@pytest.fixture
def make_dataset(make_artifact: Callable[..., Path]) -> Callable[..., Path]:
    """Publish a dataset artifact shaped like omni3-prep's: Energon shards with .nv-meta, optionally the
    CORD-style parquet under hf/data, with the manifest facts prep records (counts, subset)."""

    def make(path: Path, parquet_splits: tuple[str, ...] = (), audio: int = 0, energon: bool = True) -> Path:
        files: dict[str, bytes] = {}
        if energon:
            files[".nv-meta/dataset.yaml"] = b"sample_type: ChatMLWebdataset\n"
            files["train-000000.tar"] = b"\x00" * 512
        for split in parquet_splits:
            files[f"hf/data/{split}-00000-of-00001.parquet"] = b"PAR1"
        total = {"samples": 4, "shards": 1, "image": 4 - audio, "audio": audio, "video": 0}
        extra_counts = {"train": dict(total), "total": total}
        path = make_artifact(path, ArtifactKind.DATASET, files)
        manifest_path = path / "omni3-manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["extra"] = {"format": "energon", "counts": extra_counts}
        if parquet_splits:
            manifest["extra"]["subset"] = {"hf_parquet": "hf", "rows": {split: 2 for split in parquet_splits}}
        manifest_path.write_text(json.dumps(manifest))
        return path

    return make
