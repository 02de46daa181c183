"""omni3-lora-merge: Merge a LoRA training checkpoint into its base model."""

__version__ = "0.1.0"
