"""A Hugging Face checkpoint directory's safetensors shards: their tensor names, and completing one from another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INDEX_FILE = "model.safetensors.index.json"
CARRIED_SHARD = "model-from-reference.safetensors"  # what copy_missing_tensors adds


def tensor_names_of(shard: Path) -> list[str]:
    """The tensor names in one safetensors file (header only)."""
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as handle:
        return list(handle.keys())


def tensor_names(directory: Path) -> set[str]:
    """Every tensor name in the ``*.safetensors`` shards of ``directory`` (headers only)."""
    names: set[str] = set()
    for shard in Path(directory).glob("*.safetensors"):
        names.update(tensor_names_of(shard))
    return names


def copy_missing_tensors(reference: Path, target: Path) -> list[str]:
    """Copy into ``target`` every tensor of ``reference`` that ``target`` lacks, unchanged; their names, sorted.

    A Megatron model holds only the modules its recipe built: the CORD recipes train at temporal_patch_dim 1, which
    builds no temporal video embedder, so exporting such a run leaves out a tensor the reference checkpoint has and
    its config asks for. Training never saw those tensors, so the reference's values are the right ones. They go
    into one extra shard, and the index (written here when ``target`` had none) names it.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    reference, target = Path(reference), Path(target)
    located = {name: shard.name for shard in target.glob("*.safetensors") for name in tensor_names_of(shard)}
    carried: dict[str, Any] = {}
    for shard in sorted(reference.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            carried.update({name: handle.get_tensor(name) for name in handle.keys() if name not in located})  # noqa: SIM118 (no __iter__)
    if not carried:
        return []
    index_path = target / INDEX_FILE
    # A single model.safetensors has no index: one naming it and the new shard makes them one checkpoint.
    index = json.loads(index_path.read_text()) if index_path.exists() else {"metadata": {}, "weight_map": located}
    save_file(carried, str(target / CARRIED_SHARD), metadata={"format": "pt"})
    metadata = index.setdefault("metadata", {})
    if "total_size" in metadata:
        metadata["total_size"] += sum(t.numel() * t.element_size() for t in carried.values())
    weight_map = {**index.get("weight_map", {}), **dict.fromkeys(carried, CARRIED_SHARD)}
    index["weight_map"] = dict(sorted(weight_map.items()))
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return sorted(carried)
