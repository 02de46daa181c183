"""omni3-adapter-export: Export a LoRA training checkpoint as a Hugging Face PEFT adapter."""

__version__ = "0.1.0"
