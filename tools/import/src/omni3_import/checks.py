"""CPU-side checks of an HF Omni checkpoint and of the requested layout, made before any GPU work.

Each failure is an omni3 error with a one-line message and a fix: a missing or truncated shard and a config
that is not Nemotron 3 Omni are bad inputs (exit 3); a TP/EP layout that does not fit the world size or the
model is a usage error (exit 2); too little disk is a failure (exit 1) raised by the shared publish checks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_shared.errors import InvalidInputError, UsageError
from omni3_shared.hf_checkpoint import INDEX_FILE

OMNI_ARCHITECTURE = "NemotronH_Nano_Omni_Reasoning_V3"
HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors refuses larger headers too


@dataclass
class HfCheckpointFacts:
    """What the checks learned; recorded in the plan and the manifest."""

    path: Path
    config: dict[str, Any]
    shards: list[str] = field(default_factory=list)
    num_tensors: int = 0
    weight_bytes: int = 0
    has_vision_tensors: bool = False
    has_sound_tensors: bool = False
    remote_code_files: list[str] = field(default_factory=list)

    @property
    def needs_remote_code(self) -> bool:
        return bool(self.config.get("auto_map"))

    def summary(self) -> dict[str, Any]:
        return {
            "architecture": OMNI_ARCHITECTURE,
            "shards": len(self.shards),
            "tensors": self.num_tensors,
            "weight_gb": round(self.weight_bytes / 1e9, 3),
            "vision_tensors": self.has_vision_tensors,
            "sound_tensors": self.has_sound_tensors,
            "remote_code_files": self.remote_code_files,
        }


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InvalidInputError(f"{path} has no config.json", fix="point --hf-model at an HF checkpoint directory")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{config_path} is unreadable ({exc.__class__.__name__})") from None
    architectures = config.get("architectures") or []
    if OMNI_ARCHITECTURE not in architectures:
        raise InvalidInputError(
            f"{path} is a {', '.join(architectures) or 'model without architectures'} checkpoint, "
            f"not Nemotron 3 Nano Omni ({OMNI_ARCHITECTURE})",
            fix="use a Nemotron 3 Nano Omni checkpoint, or --hf-model tiny for the built-in test model",
        )
    if not isinstance(config.get("llm_config"), dict):
        raise InvalidInputError(f"{config_path} has no llm_config section", fix="re-download or re-export it")
    return config


def safetensors_header(shard: Path) -> dict[str, Any]:
    """The shard's JSON header, after checking the file is as long as the header says (catches truncation)."""
    size = shard.stat().st_size
    with shard.open("rb") as handle:
        raw_length = handle.read(HEADER_LENGTH_BYTES)
        if len(raw_length) < HEADER_LENGTH_BYTES:
            raise _truncated(shard, size, HEADER_LENGTH_BYTES)
        (length,) = struct.unpack("<Q", raw_length)
        if length > MAX_HEADER_BYTES:
            raise InvalidInputError(f"{shard} is not a safetensors file (header length {length})")
        raw_header = handle.read(length)
    if len(raw_header) < length:
        raise _truncated(shard, size, HEADER_LENGTH_BYTES + length)
    try:
        header = json.loads(raw_header)
    except json.JSONDecodeError:
        raise InvalidInputError(f"{shard} has a corrupt safetensors header", fix="re-download it") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size < HEADER_LENGTH_BYTES + length + end:
        raise _truncated(shard, size, HEADER_LENGTH_BYTES + length + end)
    return header


def _truncated(shard: Path, size: int, expected: int) -> InvalidInputError:
    return InvalidInputError(
        f"{shard} is truncated: {size} bytes on disk, its header needs at least {expected}",
        fix="re-download or re-export the checkpoint; an interrupted copy leaves short shards",
    )


def check_hf_checkpoint(path: Path) -> HfCheckpointFacts:
    """Config, index and every shard's header and length, without reading the tensors."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"HF checkpoint {path} does not exist", fix="check --hf-model")
    facts = HfCheckpointFacts(path=path, config=read_config(path))
    index_path = path / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInputError(f"{index_path} is unreadable or has no weight_map") from None
        shard_names = sorted(set(weight_map.values()))
        missing = [name for name in shard_names if not (path / name).is_file()]
        if missing:
            raise InvalidInputError(
                f"{path} is missing {len(missing)} shard(s) listed in {INDEX_FILE}: {', '.join(missing[:3])}",
                fix="re-download or re-export the checkpoint",
            )
    else:
        shard_names = sorted(p.name for p in path.glob("*.safetensors"))
        weight_map = None
    if not shard_names:
        raise InvalidInputError(f"{path} has no *.safetensors weights", fix="point --hf-model at a full checkpoint")
    keys: set[str] = set()
    for name in shard_names:
        header = safetensors_header(path / name)
        shard_keys = {key for key in header if key != "__metadata__"}
        if weight_map is not None:
            listed = {key for key, shard in weight_map.items() if shard == name}
            if not listed <= shard_keys:
                raise InvalidInputError(
                    f"{path / name} lacks {len(listed - shard_keys)} tensor(s) the index assigns to it",
                    fix="re-download or re-export the checkpoint",
                )
        keys |= shard_keys
        facts.weight_bytes += (path / name).stat().st_size
    facts.shards = shard_names
    facts.num_tensors = len(keys)
    facts.has_vision_tensors = any(key.startswith("vision_model.") for key in keys)
    facts.has_sound_tensors = any(key.startswith("sound_encoder.") for key in keys)
    facts.remote_code_files = sorted(p.name for p in path.glob("*.py"))
    return facts


def check_remote_code(facts: HfCheckpointFacts, trust_remote_code: bool) -> None:
    if facts.needs_remote_code and not trust_remote_code:
        raise UsageError(
            f"{facts.path} loads its config through code in the checkpoint ({', '.join(facts.remote_code_files)})",
            fix="pass --trust-remote-code if you trust its source",
        )


def check_layout(llm_config: dict[str, Any], tensor_parallel: int, expert_parallel: int, world_size: int) -> None:
    """The TP/EP layout fits the processes and the model's head, group and expert counts."""
    if tensor_parallel < 1 or expert_parallel < 1:
        raise UsageError("--tensor-parallel-size and --expert-parallel-size must be at least 1")
    if world_size % tensor_parallel or world_size % expert_parallel:
        raise UsageError(
            f"world size {world_size} is not a multiple of TP={tensor_parallel} and EP={expert_parallel}",
            fix="launch with torchrun --nproc-per-node equal to a multiple of both",
        )
    for name in ("num_attention_heads", "num_key_value_heads", "mamba_num_heads", "n_groups"):
        value = llm_config.get(name)
        if isinstance(value, int) and value % tensor_parallel:
            raise UsageError(
                f"TP={tensor_parallel} does not divide the model's {name} ({value})",
                fix="choose a tensor-parallel size that divides it",
            )
    experts = llm_config.get("n_routed_experts")
    if isinstance(experts, int) and experts % expert_parallel:
        raise UsageError(
            f"EP={expert_parallel} does not divide the model's {experts} experts",
            fix="choose an expert-parallel size that divides the expert count",
        )
