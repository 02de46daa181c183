"""A Megatron Omni model built from an HF checkpoint through Megatron-Bridge, as the omni3 tools build it for checks.

The settings are those the lifecycle runs proved on the lent H100s (tests/gpu/lifecycle_driver.py, 2026-11-26):
bf16, TP over the running processes, EP 1, no APEX gradient fusion and cuDNN attention (the machines outside the
NeMo image have neither APEX nor flash-attn). Used by omni3-lora-merge and by omni3-export's verification.
Needs CUDA and the Megatron stack; nothing here runs on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def configure(provider: Any, tensor_parallel: int) -> Any:
    """``provider`` with the layout and the portable settings above."""
    import torch
    from megatron.core.transformer.enums import AttnBackend

    provider.tensor_model_parallel_size = tensor_parallel
    provider.expert_model_parallel_size = 1
    provider.expert_tensor_parallel_size = tensor_parallel
    provider.pipeline_model_parallel_size = 1
    provider.sequence_parallel = False
    provider.params_dtype = torch.bfloat16
    provider.bf16 = True
    provider.gradient_accumulation_fusion = False
    provider.attention_backend = AttnBackend.fused
    return provider


def build_model(
    hf_dir: Path, tensor_parallel: int, lora: Any = None, temporal_patch_dim: int | None = None
) -> tuple[Any, list]:
    """The bridge and the eval-mode Megatron model with ``hf_dir``'s weights, wrapped with ``lora`` if given.

    ``hf_dir`` is a checkpoint an omni3 tool already accepted (its configuration code runs here).
    ``temporal_patch_dim``: the vision tower's frames per embedding, where it must match another model's rather
    than the config's (the CORD recipes train at 1 a checkpoint whose config has a temporal video embedder).
    """
    import torch
    from megatron.bridge import AutoBridge

    bridge = AutoBridge.from_hf_pretrained(str(hf_dir), trust_remote_code=True, torch_dtype=torch.bfloat16)
    provider = configure(bridge.to_megatron_provider(load_weights=True), tensor_parallel)
    if temporal_patch_dim is not None:
        provider.temporal_patch_dim = temporal_patch_dim
    provider.finalize()
    if lora is not None:
        provider.register_pre_wrap_hook(lambda chunks: lora(chunks, training=False))
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    for chunk in model:
        chunk.eval()
    return bridge, model
