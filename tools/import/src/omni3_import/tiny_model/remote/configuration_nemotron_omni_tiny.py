"""Configuration of the omni3 tiny Nemotron 3 Nano Omni checkpoint (loaded with trust_remote_code=True).

Megatron-Bridge 0.6.2 reads ``llm_config``, ``vision_config`` and ``sound_config`` as objects with attributes,
so the plain dicts of config.json are turned into config objects here. ``model_type`` only has to let
AutoConfig build this class; the bridge dispatches on ``architectures``.
"""

from __future__ import annotations

from typing import Any

from transformers import NemotronHConfig, PretrainedConfig


class NemotronOmniTinySubConfig(PretrainedConfig):
    """A vision or sound sub-config: a bag of attributes with ``to_dict()`` (the bridge reads both)."""

    model_type = "nemotron_omni_tiny_sub"


class NemotronOmniTinyConfig(PretrainedConfig):
    model_type = "NemotronH_Nano_Omni_Reasoning_V3"

    def __init__(
        self,
        llm_config: dict[str, Any] | NemotronHConfig | None = None,
        vision_config: dict[str, Any] | PretrainedConfig | None = None,
        sound_config: dict[str, Any] | PretrainedConfig | None = None,
        projector_hidden_size: int = 256,
        img_context_token_id: int = 18,
        img_start_token_id: int = 21,
        img_end_token_id: int = 22,
        sound_context_token_id: int = 27,
        **kwargs: Any,
    ) -> None:
        self.llm_config = _as_config(llm_config, NemotronHConfig)
        self.vision_config = _as_config(vision_config, NemotronOmniTinySubConfig)
        self.sound_config = None if sound_config is None else _as_config(sound_config, NemotronOmniTinySubConfig)
        self.projector_hidden_size = projector_hidden_size
        self.img_context_token_id = img_context_token_id
        self.img_start_token_id = img_start_token_id
        self.img_end_token_id = img_end_token_id
        self.sound_context_token_id = sound_context_token_id
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for name in ("llm_config", "vision_config", "sound_config"):
            value = getattr(self, name, None)
            output[name] = value.to_dict() if isinstance(value, PretrainedConfig) else value
        return output


def _as_config(value: Any, cls: type[PretrainedConfig]) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value or {})
    # A sub-config dict written by to_dict() carries its own model_type; a sub-config keeps it as an attribute.
    if cls is NemotronHConfig:
        value.pop("model_type", None)
    return cls(**value)
