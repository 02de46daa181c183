"""Settings of omni3-adapter-export (environment prefix OMNI3_)."""

from __future__ import annotations

from pathlib import Path

from omni3_shared.settings import ToolSettings


class AdapterExportSettings(ToolSettings):
    lora_checkpoint: Path = Path("runs/stage0_sft")
    """LoRA training run (an omni3 training-run artifact from omni3-sft)."""

    output: Path = Path("exports/nemotron_omni_adapter")
    """Directory the HF PEFT adapter (adapter_config.json, adapter_model.safetensors) is written to."""

    hf_model_path: str | None = None
    """Base HF checkpoint the adapter applies to; unset: the one the LoRA run's manifest names."""

    verify: bool = True
    """Check that every adapter module matches a base module and that peft loads the adapter."""
