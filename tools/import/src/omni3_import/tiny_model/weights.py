"""Random weights of the tiny Omni under the HF key names Megatron-Bridge's Omni bridge maps.

The LLM and the sound encoder come from transformers' own NemotronH and Parakeet modules, so their key names
and shapes are the real ones by construction. Every norm weight is moved off 1.0: a norm the bridge fails to
map would otherwise keep the same value by accident and hide from a logit comparison.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM, ParakeetEncoder, ParakeetEncoderConfig

from omni3_import.tiny_model.spec import TinyOmniSpec, projector_shapes, vision_shapes

INIT_STD = 0.02
NORM_JITTER = 0.1


def _jitter_norms(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    for key, tensor in state.items():
        if "norm" in key and key.endswith(".weight") and tensor.is_floating_point():
            state[key] = tensor + NORM_JITTER * torch.randn(tensor.shape, generator=generator)


def llm_state(spec: TinyOmniSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    model = NemotronHForCausalLM(NemotronHConfig(**spec.llm_config()))
    # transformers 5.12 names the trunk "backbone", 5.17 "model"; the checkpoint format (and the bridge) say backbone.
    state = {}
    for key, value in model.state_dict().items():
        key = "backbone." + key.removeprefix("model.") if key.startswith("model.") else key
        state[f"language_model.{key}"] = value.detach().clone()
    _split_fused_experts(state)
    # The router's correction bias starts at zero in HF; give it values so its mapping is tested too.
    for key in state:
        if key.endswith("gate.e_score_correction_bias"):
            state[key] = 0.01 * torch.randn(state[key].shape, generator=generator)
    return state


def _split_fused_experts(state: dict[str, torch.Tensor]) -> None:
    """transformers >= 5.17 keeps the experts of a layer in one [E, out, in] tensor; the checkpoint format has
    one ``experts.{e}.{up,down}_proj.weight`` per expert (what 5.12 writes and the bridge maps)."""
    for key in [k for k in state if k.endswith(("mixer.experts.up_proj", "mixer.experts.down_proj"))]:
        fused = state.pop(key)
        base, name = key.rsplit(".", 1)
        for expert, tensor in enumerate(fused.unbind(0)):
            state[f"{base}.{expert}.{name}.weight"] = tensor.clone()


def sound_encoder_config(spec: TinyOmniSpec) -> ParakeetEncoderConfig:
    """The ParakeetEncoderConfig Megatron-Bridge's sound encoder builds from our sound_config."""
    sound = spec.sound_config()
    return ParakeetEncoderConfig(
        hidden_size=sound["hidden_size"],
        num_hidden_layers=sound["num_hidden_layers"],
        num_attention_heads=sound["num_attention_heads"],
        intermediate_size=sound["intermediate_size"],
        num_mel_bins=sound["num_mel_bins"],
        subsampling_factor=sound["subsampling_factor"],
        conv_kernel_size=sound["conv_kernel_size"],
        attention_bias=False,
        convolution_bias=sound["convolution_bias"],
        scale_input=False,
    )


def sound_state(spec: TinyOmniSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    encoder = ParakeetEncoder(sound_encoder_config(spec))
    state = {f"sound_encoder.encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    # BatchNorm statistics that are not 0/1, so a lost buffer shows in the outputs.
    for key in state:
        if key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(state[key].shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = 1.0 + 0.1 * torch.rand(state[key].shape, generator=generator)
    return state


def _random(shape: tuple[int, ...], key: str, generator: torch.Generator) -> torch.Tensor:
    if key.endswith("bias"):
        return 0.01 * torch.randn(shape, generator=generator)
    if len(shape) == 1:  # norm weights
        return 1.0 + NORM_JITTER * torch.randn(shape, generator=generator)
    return INIT_STD * torch.randn(shape, generator=generator)


def projector_state(spec: TinyOmniSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {key: _random(shape, key, generator) for key, shape in projector_shapes(spec).items()}


def iter_vision_state(generator: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
    """The full-size RADIO tensors one at a time (~654M parameters), so memory stays at one tensor."""
    for key, shape in vision_shapes().items():
        yield key, _random(shape, key, generator)


def small_state(spec: TinyOmniSpec, seed: int) -> dict[str, torch.Tensor]:
    """Everything except the vision tower, in float32; the caller casts to the checkpoint dtype."""
    generator = torch.Generator().manual_seed(seed)
    state = llm_state(spec, generator)
    _jitter_norms(state, generator)
    state.update(sound_state(spec, generator))
    state.update(projector_state(spec, generator))
    return state
