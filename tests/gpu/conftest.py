"""What the GPU tests share: a variant's resolved stage config and settings on a storage root, and ``run_tool``
(``tool_runs.py``), which runs an omni3 tool's own command line and keeps its whole output in a log file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omni3_sft import stage_config
from omni3_sft.settings import SftSettings
from omni3_shared.pytest_plugin import load_script
from omni3_shared.settings import load_settings

TOOL_RUNS = load_script(Path(__file__).with_name("tool_runs.py"), "omni3_gpu_tool_runs")

ResolveVariant = Callable[..., tuple[dict[str, Any], SftSettings]]


@pytest.fixture(scope="session")
def resolve_variant() -> ResolveVariant:
    """``resolve(store, variant, cord_v2_path=..., valor32k_energon_path=...)``: the config omni3-sft would run."""

    def resolve(
        store: Path, variant: str, cord_v2_path: str, valor32k_energon_path: str
    ) -> tuple[dict[str, Any], SftSettings]:
        values = {
            "storage_root": str(store),
            "hf_model": "models/tiny_omni_hf",
            "megatron_checkpoint": "checkpoints/tiny_omni",
            "cord_v2_path": cord_v2_path,
            "valor32k_energon_path": valor32k_energon_path,
            "run_dir": f"runs/{variant}",
            "trust_remote_code": True,
        }
        settings = load_settings(SftSettings, values)
        path = stage_config.variant_path(variant, None)
        config = stage_config.validate(stage_config.read_variant(path), variant)
        return stage_config.interpolate(config, settings), settings

    return resolve


@pytest.fixture(scope="session")
def run_tool() -> Callable[..., Any]:
    """``tool_runs.run_tool``: an omni3 tool's own command line, its whole output kept in a log file."""
    return TOOL_RUNS.run_tool
