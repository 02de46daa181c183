"""omni3-import: Convert a Hugging Face Nemotron 3 Omni checkpoint to a Megatron distributed checkpoint."""

__version__ = "0.1.0"
