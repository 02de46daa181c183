"""omni3-sft: Fine-tune Nemotron 3 Omni with Megatron-Bridge from a stage config (full, projector-only, LoRA)."""

__version__ = "0.1.0"
