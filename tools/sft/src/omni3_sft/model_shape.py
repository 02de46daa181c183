"""The shape of a Nemotron 3 Nano Omni checkpoint, its parameter counts and its model FLOPs.

The shape comes from the HF checkpoint's ``config.json`` (``llm_config``, ``projector_hidden_size``,
``sound_config``), read as plain JSON: no transformers import, no remote code run. When ``hf_model`` is the
hub id and there is no local copy, the published Nemotron 3 Nano shape stands in (``published_shape``).

Layer types of ``hybrid_override_pattern``: ``M`` Mamba-2 mixer, ``*`` self-attention, ``E`` mixture of
experts, ``-`` dense MLP. MLPs and experts use squared ReLU, so each has two matrices (no gate).

FLOP counting (``forward_flops`` and friends), the rules this module applies and the bench reuses:

- A multiply-add is 2 FLOPs. Matrix products are counted in full; element-wise work (norms, activations,
  softmax, rotary, residual adds, gating) is not, except inside the Mamba scan, where it is the computation.
- Per token, forward:
    - Mamba: in_proj ``2·h·(2·d_in + 2·G·N + H)``; depthwise conv ``2·K·(d_in + 2·G·N)``; selective scan in its
      recurrent form ``5·d_in·N + 3·d_in`` (decay ``d_in·N``, input outer product and accumulate ``2·d_in·N``,
      output contraction ``2·d_in·N``, ``dt·x`` ``d_in`` and the ``D`` skip ``2·d_in``); out_proj ``2·d_in·h``.
      ``d_in = mamba_num_heads · mamba_head_dim``, ``G`` groups, ``N`` state size, ``H`` Mamba heads, ``K`` = 4.
    - Attention: QKV ``2·h·(n_q + 2·n_kv)·d``; output projection ``2·n_q·d·h``.
    - MoE: router ``2·h·E``; routed experts ``top_k · 4·h·f``; shared expert ``4·h·f_shared``.
    - Dense MLP: ``4·h·f_dense``.
    - Vocabulary projection ``2·h·V``; the embedding lookup is free.
- Attention scores and values are counted per (query, key) pair the causal mask keeps: ``4·n_q·d`` per pair and
  attention layer, ``L·(L+1)/2`` pairs for a sequence of L tokens (packed sequences each count their own L).
- RADIO vision tower, per image (or video tubelet) of P 16x16 patches and its ``n = P + 10`` tokens (class
  tokens included): patch embedding ``2·P·768·1280``; per layer (32) ``2·n·(4·1280² + 2·1280·5120)`` for the
  linears and ``4·n²·1280`` for scores and values (full attention within the image).
- Vision projector, per image embedding (``P/4`` after the 2x2 pixel shuffle): ``2·(5120·p + p·h)``, ``p`` the
  projector's hidden size.
- Training is 3 x forward (backward costs twice the forward). These are model FLOPs: recomputation is not
  added, and the language model counts as trained even when frozen (the backward still runs through it to the
  projectors), so TFLOP/s stays comparable across variants. The vision tower counts 3 x forward only when a
  backward runs through it (it trains, or LoRA adapts it); frozen, it runs its forward alone and counts 1 x.
  The projector counts 3 x when it or the tower trains.
- The Parakeet sound encoder is not counted (its shape is an estimate; audio batches understate their FLOPs).

Parameter counts are exact for the language model, the projectors and the RADIO ViT-H/16 tensors the bridge
maps (Megatron-Bridge 0.6.2 builds that tower whatever the config says; the optional video embedder aside);
the Parakeet conformer's count is an estimate (within a few percent), used only for memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni3_shared.errors import InvalidInputError

LAYER_TYPES = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}
BLOCK_TYPE_CHARS = {"mamba": "M", "attention": "*", "moe": "E", "mlp": "-"}
MAMBA_CONV_KERNEL = 4  # Megatron's Mamba mixer fixes d_conv = 4
TRAINING_FACTOR = 3  # forward + backward (twice the forward)

# RADIO ViT-H/16 as Megatron-Bridge 0.6.2 builds it (not read from config.json).
VISION_LAYERS = 32
VISION_HIDDEN = 1280
VISION_FFN = 5120
VISION_HEADS = 16
VISION_CLASS_TOKENS = 10
VISION_PATCH_PIXELS = 16 * 16 * 3
VISION_POSITIONS = (2048 // 16) ** 2
VISION_PROJECTOR_INPUT = VISION_HIDDEN * 4  # after the 2x2 pixel shuffle
SOUND_SUBSAMPLING_CHANNELS = 256

# Freeze groups (the provider's freeze_* flags) and how each component is split across GPUs.
GROUPS = ("language_model", "vision_model", "vision_projection", "sound_encoder", "sound_projection")
SHARDING = ("tp", "expert", "replicated")

# Published Nemotron 3 Nano Omni (30B-A3B) shape, for a hub id without a local copy. The language model is the
# published Nemotron 3 Nano; projector and sound sizes are the Megatron-Bridge provider's defaults.
PUBLISHED_CONFIG: dict[str, Any] = {
    "llm_config": {
        "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
        "hidden_size": 2688,
        "vocab_size": 131072,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "mamba_num_heads": 64,
        "mamba_head_dim": 64,
        "n_groups": 8,
        "ssm_state_size": 128,
        "n_routed_experts": 128,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 1856,
        "moe_shared_expert_intermediate_size": 3712,
        "tie_word_embeddings": False,
    },
    "projector_hidden_size": 20480,
    "sound_config": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 8,
        "intermediate_size": 4096,
        "num_mel_bins": 128,
        "projection_hidden_size": 4096,
    },
}


@dataclass(frozen=True)
class LlmShape:
    """The hybrid Mamba/attention/MoE language model."""

    hybrid_override_pattern: str
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    mamba_num_heads: int
    mamba_head_dim: int
    n_groups: int
    ssm_state_size: int
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    moe_shared_expert_intermediate_size: int = 0
    intermediate_size: int = 0  # the dense MLP ('-' layers)
    tie_word_embeddings: bool = False

    def count(self, layer_type: str) -> int:
        return sum(1 for char in self.hybrid_override_pattern if LAYER_TYPES[char] == layer_type)

    @property
    def num_layers(self) -> int:
        return len(self.hybrid_override_pattern)

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_in_proj_width(self) -> int:
        """z, x, B, C and dt, concatenated: 2·d_in + 2·G·N + H."""
        return 2 * self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size + self.mamba_num_heads

    @property
    def mamba_conv_channels(self) -> int:
        return self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class SoundShape:
    """The Parakeet conformer encoder and its projection (absent when the checkpoint has no sound)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    projection_hidden_size: int
    num_mel_bins: int = 128


@dataclass(frozen=True)
class OmniShape:
    llm: LlmShape
    projector_hidden_size: int
    sound: SoundShape | None
    source: str  # where the shape came from, for the dry run
    remote_code: bool = False  # config.json names Python code (auto_map) the loader would run


@dataclass(frozen=True)
class Component:
    """A part of the model: its parameter count, freeze group and how it is split across GPUs."""

    name: str
    params: int
    group: str
    sharding: str  # "tp": split by tensor parallelism; "expert": by EP x ETP; "replicated": whole on every GPU
    llm: bool = True  # split by pipeline parallelism too


# ---------------------------------------------------------------------------------------------------------------
# Reading the shape


def published_shape() -> OmniShape:
    return parse_config(PUBLISHED_CONFIG, "published Nemotron 3 Nano Omni shape (hub id, no local config.json)")


def read_model_shape(hf_dir: Path) -> OmniShape:
    """The shape in ``hf_dir/config.json``.

    Raises:
        InvalidInputError: the file is missing, not JSON, or lacks a field the shape needs.
    """
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise InvalidInputError(
            f"HF checkpoint {hf_dir} has no config.json", fix="point --hf-model at the HF checkpoint directory"
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not readable JSON ({exc.__class__.__name__})") from None
    return parse_config(document, str(path))


def parse_config(document: Mapping[str, Any], source: str) -> OmniShape:
    if not isinstance(document, Mapping) or not isinstance(document.get("llm_config"), Mapping):
        raise InvalidInputError(
            f"{source} has no llm_config: not a Nemotron 3 Nano Omni checkpoint",
            fix="point --hf-model at an Omni checkpoint (architectures NemotronH_Nano_Omni_Reasoning_V3)",
        )
    llm = _parse_llm(document["llm_config"], source)
    projector = _positive(document, "projector_hidden_size", source, default=20480)
    sound_config = document.get("sound_config")
    sound = None
    if isinstance(sound_config, Mapping):
        sound = SoundShape(
            hidden_size=_positive(sound_config, "hidden_size", source),
            num_hidden_layers=_positive(sound_config, "num_hidden_layers", source),
            num_attention_heads=_positive(sound_config, "num_attention_heads", source),
            intermediate_size=_positive(sound_config, "intermediate_size", source),
            projection_hidden_size=_positive(sound_config, "projection_hidden_size", source, default=4096),
            num_mel_bins=_positive(sound_config, "num_mel_bins", source, default=128),
        )
    auto_map = document.get("auto_map")
    return OmniShape(llm=llm, projector_hidden_size=projector, sound=sound, source=source, remote_code=bool(auto_map))


def _parse_llm(config: Mapping[str, Any], source: str) -> LlmShape:
    pattern = config.get("hybrid_override_pattern")
    if pattern is None and isinstance(config.get("layers_block_type"), list):
        try:
            pattern = "".join(BLOCK_TYPE_CHARS[str(kind)] for kind in config["layers_block_type"])
        except KeyError as exc:
            raise InvalidInputError(f"{source}: llm_config.layers_block_type has unknown type {exc}") from None
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInputError(f"{source}: llm_config has no hybrid_override_pattern", fix="use an Omni config.json")
    unknown = sorted(set(pattern) - set(LAYER_TYPES))
    if unknown:
        raise InvalidInputError(
            f"{source}: hybrid_override_pattern has unknown layer type(s) {''.join(unknown)!r}",
            fix="use M (Mamba), * (attention), E (MoE) and - (MLP)",
        )
    hidden = _positive(config, "hidden_size", source)
    heads = _positive(config, "num_attention_heads", source)
    has_moe = "E" in pattern
    return LlmShape(
        hybrid_override_pattern=pattern,
        hidden_size=hidden,
        vocab_size=_positive(config, "vocab_size", source),
        num_attention_heads=heads,
        num_key_value_heads=_positive(config, "num_key_value_heads", source, default=heads),
        head_dim=_positive(config, "head_dim", source, default=hidden // heads),
        mamba_num_heads=_positive(config, "mamba_num_heads", source),
        mamba_head_dim=_positive(config, "mamba_head_dim", source),
        n_groups=_positive(config, "n_groups", source),
        ssm_state_size=_positive(config, "ssm_state_size", source),
        n_routed_experts=_positive(config, "n_routed_experts", source) if has_moe else 0,
        num_experts_per_tok=_positive(config, "num_experts_per_tok", source) if has_moe else 0,
        moe_intermediate_size=_positive(config, "moe_intermediate_size", source) if has_moe else 0,
        moe_shared_expert_intermediate_size=_nonnegative(config, "moe_shared_expert_intermediate_size", source),
        intermediate_size=_positive(config, "intermediate_size", source) if "-" in pattern else 0,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _positive(config: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(
            f"{source}: {key} must be a positive integer, found {value!r}", fix="use a complete Omni config.json"
        )
    return value


def _nonnegative(config: Mapping[str, Any], key: str, source: str) -> int:
    value = config.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{source}: {key} must be a non-negative integer, found {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def llm_layer_params(llm: LlmShape) -> dict[str, int]:
    """Parameters of one layer of each type, its pre-norm included (Megatron fuses it into the first linear)."""
    h = llm.hidden_size
    mamba = (
        h  # pre-norm
        + h * llm.mamba_in_proj_width
        + llm.mamba_conv_channels * (MAMBA_CONV_KERNEL + 1)  # depthwise conv weight and bias
        + 3 * llm.mamba_num_heads  # dt_bias, A_log, D
        + llm.mamba_d_inner  # gated RMSNorm
        + llm.mamba_d_inner * h
    )
    attention = h + h * (llm.q_width + 2 * llm.kv_width) + llm.q_width * h
    moe_shared = 2 * h * llm.moe_shared_expert_intermediate_size
    return {
        "mamba": mamba,
        "attention": attention,
        "moe_router": h + h * llm.n_routed_experts,  # pre-norm and router weight
        "moe_shared_expert": moe_shared,
        "moe_experts": llm.n_routed_experts * 2 * h * llm.moe_intermediate_size,
        "mlp": h + 2 * h * llm.intermediate_size,
    }


def vision_encoder_params() -> int:
    block = (
        4 * VISION_HIDDEN  # two LayerNorms with bias
        + 3 * VISION_HIDDEN * VISION_HIDDEN
        + 3 * VISION_HIDDEN  # qkv
        + VISION_HIDDEN * VISION_HIDDEN
        + VISION_HIDDEN  # proj
        + 2 * VISION_HIDDEN * VISION_FFN
        + VISION_FFN
        + VISION_HIDDEN  # fc1, fc2
    )
    embeddings = VISION_CLASS_TOKENS * VISION_HIDDEN + VISION_POSITIONS * VISION_HIDDEN
    return VISION_LAYERS * block + embeddings + VISION_HIDDEN * VISION_PATCH_PIXELS


def sound_encoder_params(sound: SoundShape) -> int:
    """Parakeet conformer, estimated: subsampling convs, then per layer two feed-forwards, relative-position
    self-attention, the convolution module (kernel 9) and five LayerNorms."""
    c = SOUND_SUBSAMPLING_CHANNELS
    subsampling = (9 * c + c) + 2 * (9 * c + c + c * c + c) + c * (sound.num_mel_bins // 8) * sound.hidden_size
    h, f = sound.hidden_size, sound.intermediate_size
    layer = 2 * (2 * h * f + f + h) + (5 * h * h + 4 * h) + (3 * h * h + 9 * h + 2 * h) + 5 * 2 * h
    return subsampling + sound.num_hidden_layers * layer


def components(shape: OmniShape) -> list[Component]:
    """Every parameter of the model, by component."""
    llm = shape.llm
    layer = llm_layer_params(llm)
    moe_layers = llm.count("moe")
    embedding = llm.vocab_size * llm.hidden_size
    parts = [
        Component("llm.embedding", embedding, "language_model", "tp"),
        Component("llm.mamba", llm.count("mamba") * layer["mamba"], "language_model", "tp"),
        Component("llm.attention", llm.count("attention") * layer["attention"], "language_model", "tp"),
        Component("llm.mlp", llm.count("mlp") * layer["mlp"], "language_model", "tp"),
        Component("llm.moe_router", moe_layers * layer["moe_router"], "language_model", "replicated"),
        Component("llm.moe_shared_expert", moe_layers * layer["moe_shared_expert"], "language_model", "tp"),
        Component("llm.moe_experts", moe_layers * layer["moe_experts"], "language_model", "expert"),
        Component("llm.final_norm", llm.hidden_size, "language_model", "replicated"),
        Component("llm.output", 0 if llm.tie_word_embeddings else embedding, "language_model", "tp"),
        Component("vision.encoder", vision_encoder_params(), "vision_model", "tp", llm=False),
        Component(
            "vision.projection",
            VISION_PROJECTOR_INPUT
            + VISION_PROJECTOR_INPUT * shape.projector_hidden_size
            + shape.projector_hidden_size * llm.hidden_size,
            "vision_projection",
            "tp",
            llm=False,
        ),
    ]
    if shape.sound is not None:
        sound = shape.sound
        parts += [
            Component("sound.encoder", sound_encoder_params(sound), "sound_encoder", "replicated", llm=False),
            Component(
                "sound.projection",
                sound.hidden_size
                + sound.hidden_size * sound.projection_hidden_size
                + sound.projection_hidden_size * llm.hidden_size,
                "sound_projection",
                "replicated",
                llm=False,
            ),
        ]
    return [part for part in parts if part.params]


def total_params(shape: OmniShape) -> int:
    return sum(part.params for part in components(shape))


def llm_params(llm: LlmShape) -> int:
    layer = llm_layer_params(llm)
    moe = layer["moe_router"] + layer["moe_shared_expert"] + layer["moe_experts"]
    embeddings = llm.vocab_size * llm.hidden_size * (1 if llm.tie_word_embeddings else 2)
    return (
        llm.count("mamba") * layer["mamba"]
        + llm.count("attention") * layer["attention"]
        + llm.count("mlp") * layer["mlp"]
        + llm.count("moe") * moe
        + llm.hidden_size
        + embeddings
    )


def llm_active_params(llm: LlmShape) -> int:
    """Parameters one token passes through: the routed experts count top_k of n_routed_experts."""
    inactive = 0
    if llm.n_routed_experts:
        per_expert = 2 * llm.hidden_size * llm.moe_intermediate_size
        inactive = llm.count("moe") * (llm.n_routed_experts - llm.num_experts_per_tok) * per_expert
    return llm_params(llm) - inactive


# LoRA targets: Megatron module name -> (in, out) features of each matched linear, with where it lives.
@dataclass(frozen=True)
class LoraTarget:
    module: str
    in_features: int
    out_features: int
    count: int  # how many such linears the model has
    sharding: str  # "tp", or "expert": one adapter per EP rank shared by its local experts
    group: str


def lora_targets(shape: OmniShape, targets: Iterable[str]) -> list[LoraTarget]:
    """The linears a LoRA with ``target_modules`` adapts (language model, vision tower and vision projector)."""
    llm = shape.llm
    h = llm.hidden_size
    wanted = set(targets)
    found: list[LoraTarget] = []

    def add(module: str, a: int, b: int, count: int, sharding: str = "tp", group: str = "language_model") -> None:
        if module in wanted and count and a and b:
            found.append(LoraTarget(module, a, b, count, sharding, group))

    add("linear_qkv", h, llm.q_width + 2 * llm.kv_width, llm.count("attention"))
    add("linear_proj", llm.q_width, h, llm.count("attention"))
    add("in_proj", h, llm.mamba_in_proj_width, llm.count("mamba"))
    add("out_proj", llm.mamba_d_inner, h, llm.count("mamba"))
    add("linear_fc1", h, llm.moe_intermediate_size, llm.count("moe"), sharding="expert")
    add("linear_fc2", llm.moe_intermediate_size, h, llm.count("moe"), sharding="expert")
    add("linear_fc1", h, llm.moe_shared_expert_intermediate_size, llm.count("moe"))
    add("linear_fc2", llm.moe_shared_expert_intermediate_size, h, llm.count("moe"))
    add("linear_fc1", h, llm.intermediate_size, llm.count("mlp"))
    add("linear_fc2", llm.intermediate_size, h, llm.count("mlp"))
    add("linear_qkv", VISION_HIDDEN, 3 * VISION_HIDDEN, VISION_LAYERS, group="vision_model")
    add("linear_proj", VISION_HIDDEN, VISION_HIDDEN, VISION_LAYERS, group="vision_model")
    add("linear_fc1", VISION_HIDDEN, VISION_FFN, VISION_LAYERS, group="vision_model")
    add("linear_fc2", VISION_FFN, VISION_HIDDEN, VISION_LAYERS, group="vision_model")
    add("linear_fc1", VISION_PROJECTOR_INPUT, shape.projector_hidden_size, 1, group="vision_projection")
    add("linear_fc2", shape.projector_hidden_size, h, 1, group="vision_projection")
    return found


def lora_params(target: LoraTarget, dim: int) -> int:
    """A (in x dim) and B (dim x out) of every matched linear."""
    return target.count * dim * (target.in_features + target.out_features)


# ---------------------------------------------------------------------------------------------------------------
# FLOPs (see the module docstring for the rules)


def linear_flops_per_token(llm: LlmShape) -> dict[str, int]:
    """Forward FLOPs per token that do not depend on the sequence length, by component (whole model)."""
    h = llm.hidden_size
    d_in, n = llm.mamba_d_inner, llm.ssm_state_size
    mamba = (
        2 * h * llm.mamba_in_proj_width
        + 2 * MAMBA_CONV_KERNEL * llm.mamba_conv_channels
        + 5 * d_in * n
        + 3 * d_in
        + 2 * d_in * h
    )
    attention = 2 * h * (llm.q_width + 2 * llm.kv_width) + 2 * llm.q_width * h
    moe = (
        2 * h * llm.n_routed_experts
        + llm.num_experts_per_tok * 4 * h * llm.moe_intermediate_size
        + 4 * h * llm.moe_shared_expert_intermediate_size
    )
    return {
        "mamba": llm.count("mamba") * mamba,
        "attention_projections": llm.count("attention") * attention,
        "moe": llm.count("moe") * moe,
        "mlp": llm.count("mlp") * 4 * h * llm.intermediate_size,
        "vocab_projection": 2 * h * llm.vocab_size,
    }


def attention_flops_per_pair(llm: LlmShape) -> int:
    """Forward FLOPs of scores and weighted values for one (query, key) pair, over all attention layers."""
    return llm.count("attention") * 4 * llm.q_width


def causal_pairs(length: int) -> int:
    return length * (length + 1) // 2


def forward_flops(llm: LlmShape, sequence_lengths: Iterable[int]) -> int:
    """Forward FLOPs of the language model over sequences of these lengths (a micro batch, a packed row...)."""
    lengths = list(sequence_lengths)
    per_token = sum(linear_flops_per_token(llm).values())
    return per_token * sum(lengths) + attention_flops_per_pair(llm) * sum(causal_pairs(n) for n in lengths)


def training_flops(llm: LlmShape, sequence_lengths: Iterable[int]) -> int:
    """Model FLOPs of one training step over these sequences: 3 x forward."""
    return TRAINING_FACTOR * forward_flops(llm, sequence_lengths)


def vision_image_flops(patches: int) -> int:
    """Forward FLOPs of the RADIO tower over one image (or video tubelet) of ``patches`` 16x16 patches."""
    tokens = patches + VISION_CLASS_TOKENS
    h = VISION_HIDDEN
    per_layer = 2 * tokens * (4 * h * h + 2 * h * VISION_FFN) + 4 * tokens * tokens * h
    return 2 * patches * VISION_PATCH_PIXELS * h + VISION_LAYERS * per_layer


def vision_projection_flops(shape: OmniShape, embeddings: int) -> int:
    """Forward FLOPs of the vision projector over ``embeddings`` pixel-shuffled image embeddings."""
    p = shape.projector_hidden_size
    return 2 * embeddings * (VISION_PROJECTOR_INPUT * p + p * shape.llm.hidden_size)


@dataclass(frozen=True)
class FlopCounter:
    """Model FLOPs of one training step of a run: language model, vision tower and vision projector."""

    shape: OmniShape
    vision_backward: bool  # the tower trains or carries LoRA: a backward runs through it
    projection_backward: bool  # the projector trains, or a backward runs through it to the tower

    def step(self, sequence_lengths: Iterable[int], image_patches: Iterable[int] = ()) -> int:
        """``sequence_lengths``: the language model's sequences; ``image_patches``: patches of each tower input."""
        patches = list(image_patches)
        tower = sum(vision_image_flops(count) for count in patches)
        projection = vision_projection_flops(self.shape, sum(count // 4 for count in patches))  # 2x2 shuffle
        return (
            training_flops(self.shape.llm, sequence_lengths)
            + tower * (TRAINING_FACTOR if self.vision_backward else 1)
            + projection * (TRAINING_FACTOR if self.projection_backward else 1)
        )


def training_flops_per_token(llm: LlmShape, seq_length: int) -> float:
    """Training FLOPs per token for full sequences of ``seq_length`` tokens."""
    return training_flops(llm, [seq_length]) / seq_length


def tflops_per_gpu(flops: float, seconds: float, gpus: int) -> float:
    if seconds <= 0 or gpus <= 0:
        return math.nan
    return flops / seconds / gpus / 1e12


def summary(shape: OmniShape, seq_length: int) -> dict[str, Any]:
    llm = shape.llm
    by_group: dict[str, int] = {}
    for part in components(shape):
        by_group[part.group] = by_group.get(part.group, 0) + part.params
    return {
        "source": shape.source,
        "llm_layers": {kind: llm.count(kind) for kind in ("mamba", "attention", "moe", "mlp") if llm.count(kind)},
        "params": {group: human_count(count) for group, count in by_group.items()},
        "params_total": human_count(total_params(shape)),
        "llm_active_params_per_token": human_count(llm_active_params(llm)),
        "llm_training_gflop_per_token": round(training_flops_per_token(llm, seq_length) / 1e9, 2),
    }


def human_count(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.1f}K"
