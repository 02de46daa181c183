"""Settings of omni3-lora-merge (environment prefix OMNI3_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from omni3_shared.settings import ToolSettings


class LoraMergeSettings(ToolSettings):
    lora_checkpoint: Path = Path("runs/stage0_sft")
    """LoRA training run (an omni3 training-run artifact from omni3-sft)."""

    output: Path = Path("exports/nemotron_omni_merged")
    """Directory the merged checkpoint is written to."""

    hf_model_path: str | None = None
    """Base HF checkpoint; unset: the one the LoRA run's manifest names."""

    output_format: Literal["hf", "megatron"] = "hf"
    """Format of the merged checkpoint: hf (default) or megatron."""

    tensor_parallel_size: int = 1
    """Tensor-parallel size used while merging."""

    verify: bool = True
    """Compare merged logits with base-plus-adapter logits on a fixed multimodal batch."""
