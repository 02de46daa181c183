"""Reading a Hugging Face checkpoint directory's safetensors shards without loading their tensors."""

from __future__ import annotations

from pathlib import Path


def tensor_names(directory: Path) -> set[str]:
    """Every tensor name in the ``*.safetensors`` shards of ``directory`` (headers only)."""
    from safetensors import safe_open

    names: set[str] = set()
    for shard in Path(directory).glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            names.update(handle.keys())
    return names
