"""Build the tiny Nemotron 3 Nano Omni checkpoint directory, offline and deterministically.

Layout written (what Megatron-Bridge's Omni bridge and training collate path read):
  config.json + configuration_nemotron_omni_tiny.py      AutoConfig with trust_remote_code
  model-0000k-of-0000n.safetensors + index.json           real HF key names, bf16
  tokenizer.json, tokenizer_config.json, ...              byte-level BPE, ChatML, specials at fixed ids
  processor_config.json, preprocessor_config.json, *.py   AutoProcessor -> NemotronH_Nano_Omni_Reasoning_V3Processor
  omni3-tiny.json                                         how it was made and which tensors it holds
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from omni3_import.tiny_model import remote
from omni3_import.tiny_model.spec import TinyOmniSpec
from omni3_import.tiny_model.tokenizer import save_tokenizer
from omni3_import.tiny_model.weights import iter_vision_state, small_state
from omni3_shared.hf_checkpoint import INDEX_FILE

BUILTIN_NAME = "tiny"
TINY_RECORD = "omni3-tiny.json"
CONFIG_MODULE = "configuration_nemotron_omni_tiny"
CONFIG_CLASS = f"{CONFIG_MODULE}.NemotronOmniTinyConfig"
REMOTE_FILES = (
    f"{CONFIG_MODULE}.py",
    "image_processing_nemotron_omni_tiny.py",
    "processing_nemotron_omni_tiny.py",
)
VISION_SHARD_PARAMS = 160_000_000  # ~320 MB of bf16 per vision shard
VisionMode = Literal["full", "omit"]


def build_tiny_omni(
    output_dir: Path,
    seed: int = 0,
    vision: VisionMode = "full",
    dtype: torch.dtype = torch.bfloat16,
    spec: TinyOmniSpec | None = None,
) -> dict:
    """Write the tiny Omni checkpoint into ``output_dir`` (created; must be empty or absent).

    Args:
        output_dir: target directory.
        seed: seed of every random tensor; the same seed gives byte-identical safetensors.
        vision: "full" writes the full-size RADIO ViT-H tensors (~1.3 GB bf16, what a round trip needs to
            account for every tensor); "omit" leaves them out (light CI runs; the bridge then keeps its own
            random vision init and the record says so).
        dtype: dtype of the floating tensors.
        spec: dimensions; the default is the built-in tiny model.

    Returns:
        The record also written to ``omni3-tiny.json``.
    """
    spec = spec or TinyOmniSpec()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty")

    for name in REMOTE_FILES:
        shutil.copyfile(Path(remote.__file__).parent / name, output_dir / name)
    (output_dir / "config.json").write_text(json.dumps(spec.config(CONFIG_CLASS), indent=2) + "\n")
    tokenizer = save_tokenizer(output_dir)
    _save_processor(output_dir, spec.image_max_side)

    shards = _write_weights(output_dir, seed, vision, dtype, spec)
    record = {
        "builtin": BUILTIN_NAME,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
        "vision": vision,
        "vision_note": (
            "full-size RADIO ViT-H/16 tensors (the bridge hard-codes that tower)"
            if vision == "full"
            else "vision tensors omitted: Megatron-Bridge keeps its own random init for them and warns"
        ),
        "tokenizer_size": len(tokenizer),
        "num_tensors": sum(len(keys) for keys in shards.values()),
        "shards": {name: len(keys) for name, keys in shards.items()},
    }
    (output_dir / TINY_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _save_processor(output_dir: Path, image_max_side: int) -> None:
    """Save processor and image-processor configs with auto_map entries pointing at the copied .py files."""
    image_module = "image_processing_nemotron_omni_tiny"
    processor_module = "processing_nemotron_omni_tiny"
    preprocessor = {
        "image_processor_type": "NemotronOmniTinyImageProcessor",
        "processor_class": "NemotronH_Nano_Omni_Reasoning_V3Processor",
        "max_side": image_max_side,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "auto_map": {
            "AutoImageProcessor": f"{image_module}.NemotronOmniTinyImageProcessor",
            "AutoProcessor": f"{processor_module}.NemotronH_Nano_Omni_Reasoning_V3Processor",
        },
    }
    processor = {
        "processor_class": "NemotronH_Nano_Omni_Reasoning_V3Processor",
        "auto_map": {"AutoProcessor": f"{processor_module}.NemotronH_Nano_Omni_Reasoning_V3Processor"},
    }
    (output_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    (output_dir / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    tokenizer_config_path = output_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["processor_class"] = "NemotronH_Nano_Omni_Reasoning_V3Processor"
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Integer buffers (BatchNorm's num_batches_tracked) keep their dtype.
    return tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor.contiguous()


def _write_weights(
    output_dir: Path, seed: int, vision: VisionMode, dtype: torch.dtype, spec: TinyOmniSpec
) -> dict[str, list[str]]:
    groups: list[dict[str, torch.Tensor]] = [{k: _cast(v, dtype) for k, v in small_state(spec, seed).items()}]
    if vision == "full":
        # A separate generator stream keeps the small tensors identical whether or not vision is written.
        generator = torch.Generator().manual_seed(seed + 1)
        current: dict[str, torch.Tensor] = {}
        count = 0
        for key, tensor in iter_vision_state(generator):
            current[key] = _cast(tensor, dtype)
            count += tensor.numel()
            if count >= VISION_SHARD_PARAMS:
                groups.append(current)
                current, count = {}, 0
        if current:
            groups.append(current)
    total = len(groups)
    shards: dict[str, list[str]] = {}
    weight_map: dict[str, str] = {}
    total_size = 0
    for index, group in enumerate(groups, start=1):
        name = f"model-{index:05d}-of-{total:05d}.safetensors"
        save_file(group, str(output_dir / name), metadata={"format": "pt"})
        (output_dir / name).chmod(0o644)  # safetensors creates 0600 files; containers may read as another user
        shards[name] = sorted(group)
        weight_map.update(dict.fromkeys(group, name))
        total_size += sum(t.numel() * t.element_size() for t in group.values())
    index_doc = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (output_dir / INDEX_FILE).write_text(json.dumps(index_doc, indent=2) + "\n")
    return shards
