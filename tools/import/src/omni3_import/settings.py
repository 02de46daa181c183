"""Settings of omni3-import (environment prefix OMNI3_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from omni3_shared.settings import ToolSettings


class ImportSettings(ToolSettings):
    hf_model: str = "models/nemotron_omni_hf"
    """Hugging Face checkpoint directory to convert (config.json and *.safetensors)."""

    megatron_path: Path = Path("checkpoints/nemotron_omni")
    """Directory the Megatron distributed checkpoint is written to."""

    tensor_parallel_size: int = 1
    """Tensor-parallel size the checkpoint is converted with."""

    expert_parallel_size: int = 1
    """Expert-parallel size the checkpoint is converted with."""

    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Parameter dtype of the Megatron checkpoint."""

    trust_remote_code: bool = False
    """Run Python code shipped inside the HF checkpoint (configuration_*.py). Off unless you trust the source."""

    verify: bool = True
    """Compare logits of the HF source and the Megatron result on a fixed multimodal batch."""
