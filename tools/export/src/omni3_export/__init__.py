"""omni3-export: Convert a Megatron checkpoint to a Hugging Face checkpoint."""

__version__ = "0.1.0"
