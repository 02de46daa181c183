"""Dimensions of the built-in tiny Nemotron 3 Nano Omni and the config.json written for it.

The LLM and the sound encoder are the real architectures at tiny size. The vision tower cannot shrink:
Megatron-Bridge 0.6.2 hard-codes RADIO ViT-H/16 (32 layers, hidden 1280), so its tensors keep full size.
Head counts, kv heads, Mamba heads and groups are divisible by 2 and 4, and experts by 2 and 4, so the same
checkpoint converts at TP in {1, 2, 4} and EP in {1, 2, 4}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Token ids the Omni bridge and collator rely on (image context 18, image start/end 21/22, sound 27-29).
IMAGE_CONTEXT_ID = 18
IMAGE_START_ID = 21
IMAGE_END_ID = 22
SOUND_CONTEXT_ID = 27
SOUND_START_ID = 28
SOUND_END_ID = 29

# RADIO ViT-H/16 as the provider builds it; none of it is read from our config.
VISION_LAYERS = 32
VISION_HIDDEN = 1280
VISION_FFN = 5120
VISION_CLASS_TOKENS = 10
VISION_PATCH_PIXELS = 16 * 16 * 3
# Like the real model, a separate patch embedder for video, fed two frames at a time (the temporal recipes use it;
# an imported checkpoint without it cannot be loaded by them).
VIDEO_TEMPORAL_PATCH = 2
VISION_MAX_POSITIONS = 16384  # (2048 / 16) ** 2 positions of RADIO's max_img
PIXEL_SHUFFLE_DIM = VISION_HIDDEN * 4  # the projector input after 2x2 pixel shuffle


@dataclass(frozen=True)
class TinyOmniSpec:
    # LLM: Mamba (M), attention (*), MoE (E) and a dense MLP (-) layer, so every mapping family is exercised.
    hybrid_override_pattern: str = "M*EM-E"
    hidden_size: int = 256
    vocab_size: int = 1024
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 64
    intermediate_size: int = 512
    mamba_num_heads: int = 8
    mamba_head_dim: int = 32
    n_groups: int = 4
    ssm_state_size: int = 16
    n_routed_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    moe_shared_expert_intermediate_size: int = 256
    max_position_embeddings: int = 4096
    projector_hidden_size: int = 512
    # The image processor's longest side after resizing: 512 keeps the tests' images light; a benchmark that wants
    # CORD-sized images (about 1,500 image tokens each) raises it.
    image_max_side: int = 512
    # Sound: Parakeet conformer at tiny size; subsampling 8 and 128 mels are fixed by the collator.
    sound_hidden_size: int = 128
    sound_layers: int = 2
    sound_heads: int = 4
    sound_intermediate_size: int = 256
    sound_projection_hidden_size: int = 256

    def llm_config(self) -> dict[str, Any]:
        return {
            "architectures": ["NemotronHForCausalLM"],
            "hybrid_override_pattern": self.hybrid_override_pattern,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "mamba_num_heads": self.mamba_num_heads,
            "mamba_head_dim": self.mamba_head_dim,
            "n_groups": self.n_groups,
            "ssm_state_size": self.ssm_state_size,
            "conv_kernel": 4,  # Megatron's Mamba mixer fixes d_conv=4
            "chunk_size": 64,
            "n_routed_experts": self.n_routed_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_shared_experts": 1,
            "moe_intermediate_size": self.moe_intermediate_size,
            "moe_shared_expert_intermediate_size": self.moe_shared_expert_intermediate_size,
            "n_group": 1,
            "topk_group": 1,
            "routed_scaling_factor": 1.0,
            "norm_topk_prob": True,
            "mlp_hidden_act": "relu2",  # squared ReLU, what the bridge forces on the Megatron side
            "max_position_embeddings": self.max_position_embeddings,
            "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "use_bias": False,
            "residual_in_fp32": False,
            "num_nextn_predict_layers": 0,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 11,
            "pad_token_id": 3,
        }

    def sound_config(self) -> dict[str, Any]:
        return {
            "model_type": "parakeet",
            "hidden_size": self.sound_hidden_size,
            "num_hidden_layers": self.sound_layers,
            "num_attention_heads": self.sound_heads,
            "intermediate_size": self.sound_intermediate_size,
            "num_mel_bins": 128,
            "subsampling_factor": 8,
            "conv_kernel_size": 9,
            "convolution_bias": False,
            "projection_hidden_size": self.sound_projection_hidden_size,
            "sampling_rate": 16000,
        }

    def vision_config(self) -> dict[str, Any]:
        # Documentation of what the provider builds; the bridge reads only the two video fields here.
        return {
            "model_type": "radio",
            "architecture": "vit_huge_patch16_224",
            "hidden_size": VISION_HIDDEN,
            "num_hidden_layers": VISION_LAYERS,
            "patch_size": 16,
            "separate_video_embedder": True,
            "video_temporal_patch_size": VIDEO_TEMPORAL_PATCH,
        }

    def config(self, config_class: str) -> dict[str, Any]:
        return {
            "architectures": ["NemotronH_Nano_Omni_Reasoning_V3"],
            "model_type": "NemotronH_Nano_Omni_Reasoning_V3",
            "auto_map": {"AutoConfig": config_class},
            "llm_config": self.llm_config(),
            "vision_config": self.vision_config(),
            "sound_config": self.sound_config(),
            "projector_hidden_size": self.projector_hidden_size,
            "img_context_token_id": IMAGE_CONTEXT_ID,
            "img_start_token_id": IMAGE_START_ID,
            "img_end_token_id": IMAGE_END_ID,
            "sound_context_token_id": SOUND_CONTEXT_ID,
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
        }


def vision_shapes() -> dict[str, tuple[int, ...]]:
    """HF key -> shape of every RADIO ViT-H tensor the bridge maps, the video embedder included."""
    prefix = "vision_model.radio_model.model."
    shapes: dict[str, tuple[int, ...]] = {
        prefix + "patch_generator.cls_token.token": (VISION_CLASS_TOKENS, VISION_HIDDEN),
        prefix + "patch_generator.pos_embed": (1, VISION_MAX_POSITIONS, VISION_HIDDEN),
        prefix + "patch_generator.embedder.weight": (VISION_HIDDEN, VISION_PATCH_PIXELS),
        prefix + "patch_generator.video_embedder.weight": (VISION_HIDDEN, VIDEO_TEMPORAL_PATCH * VISION_PATCH_PIXELS),
    }
    for i in range(VISION_LAYERS):
        block = f"{prefix}blocks.{i}."
        shapes.update(
            {
                block + "norm1.weight": (VISION_HIDDEN,),
                block + "norm1.bias": (VISION_HIDDEN,),
                block + "norm2.weight": (VISION_HIDDEN,),
                block + "norm2.bias": (VISION_HIDDEN,),
                block + "attn.qkv.weight": (3 * VISION_HIDDEN, VISION_HIDDEN),
                block + "attn.qkv.bias": (3 * VISION_HIDDEN,),
                block + "attn.proj.weight": (VISION_HIDDEN, VISION_HIDDEN),
                block + "attn.proj.bias": (VISION_HIDDEN,),
                block + "mlp.fc1.weight": (VISION_FFN, VISION_HIDDEN),
                block + "mlp.fc1.bias": (VISION_FFN,),
                block + "mlp.fc2.weight": (VISION_HIDDEN, VISION_FFN),
                block + "mlp.fc2.bias": (VISION_HIDDEN,),
            }
        )
    return shapes


def projector_shapes(spec: TinyOmniSpec) -> dict[str, tuple[int, ...]]:
    return {
        "mlp1.0.weight": (PIXEL_SHUFFLE_DIM,),
        "mlp1.1.weight": (spec.projector_hidden_size, PIXEL_SHUFFLE_DIM),
        "mlp1.3.weight": (spec.hidden_size, spec.projector_hidden_size),
        "sound_projection.norm.weight": (spec.sound_hidden_size,),
        "sound_projection.linear1.weight": (spec.sound_projection_hidden_size, spec.sound_hidden_size),
        "sound_projection.linear2.weight": (spec.hidden_size, spec.sound_projection_hidden_size),
    }
