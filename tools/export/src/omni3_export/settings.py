"""Settings of omni3-export (environment prefix OMNI3_)."""

from __future__ import annotations

from pathlib import Path

from omni3_shared.settings import ToolSettings


class ExportSettings(ToolSettings):
    megatron_path: Path = Path("checkpoints/nemotron_omni")
    """Megatron checkpoint to convert: an omni3 megatron-checkpoint or training-run artifact."""

    hf_path: Path = Path("exports/nemotron_omni_hf")
    """Directory the Hugging Face checkpoint is written to."""

    hf_model: str | None = None
    """Reference HF checkpoint for config, tokenizer and processor files; unset: the one the input recorded."""

    strict: bool = False
    """Fail when the model lacks a reference tensor (else copied from the reference) or exports an extra one."""

    verify: bool = True
    """Compare logits of the Megatron source and the exported model on a fixed multimodal batch."""
