"""Every test here runs without the machine's OMNI3_* settings, in its own scratch directory.

``make_adapter`` writes a PEFT LoRA adapter on a base from ``make_lora_base``; that fixture, ``make_lora_run``,
``omni3_isolated`` and ``make_artifact`` come from the omni3 pytest plugin (omni3_shared.pytest_plugin).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_shared.pytest_plugin import LORA_BASE_MODULES


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """See omni3_shared.pytest_plugin."""


@pytest.fixture
def make_adapter() -> Callable[..., Path]:
    def make(path: Path, base: Path, modules: dict[str, tuple[int, int]] | None = None, rank: int = 4,
             zero_b: bool = False, targets: list[str] | None = None) -> Path:  # fmt: skip
        torch = pytest.importorskip("torch")
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(1)
        modules = LORA_BASE_MODULES if modules is None else modules
        tensors = {}
        for module, (out_features, in_features) in modules.items():
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
            b = torch.zeros(out_features, rank) if zero_b else torch.randn(out_features, rank, generator=generator)
            tensors[f"base_model.model.{module}.lora_B.weight"] = b * 0.01
        path.mkdir(parents=True)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
            "target_modules": targets or ["in_proj", "up_proj", "down_proj"], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": str(base), "inference_mode": True,
        }  # fmt: skip
        (path / "adapter_config.json").write_text(json.dumps(config))
        return path

    return make
