"""Processor of the omni3 tiny Omni checkpoint.

The class name is what Megatron-Bridge's collator registry checks, so it must stay
``NemotronH_Nano_Omni_Reasoning_V3Processor``. Each ``<image>`` in the text becomes ``<img>`` + k x ``<image>`` +
``</img>`` with k = one token per 32x32 region of that image; audio never passes through here (the collator
computes mel features itself).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_nemotron_omni_tiny import REGION, NemotronOmniTinyImageProcessor

IMAGE_TOKEN = "<image>"
IMAGE_START = "<img>"
IMAGE_END = "</img>"


class NemotronH_Nano_Omni_Reasoning_V3Processor(ProcessorMixin):  # the bridge's collator registry checks this name
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load our image processor class directly: AutoImageProcessor in transformers 5 insists on torchvision
        # even for a custom class, and the image processor here needs only torch and PIL.
        image_kwargs = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
        image_processor = NemotronOmniTinyImageProcessor.from_pretrained(pretrained_model_name_or_path, **image_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        data: dict[str, Any] = {}
        if images is not None:
            flat = images if isinstance(images, (list, tuple)) else [images]
            pixel_values = self.image_processor(flat)["pixel_values"]
            data["pixel_values"] = pixel_values
            counts = [(p.shape[-2] // REGION) * (p.shape[-1] // REGION) for p in pixel_values]
            texts = self._expand_images(texts, counts)
        encoded = self.tokenizer(texts, return_tensors=return_tensors, **kwargs)
        data.update(encoded)
        return BatchFeature(data=data)

    @staticmethod
    def _expand_images(texts: list[str], counts: list[int]) -> list[str]:
        remaining = list(counts)
        out = []
        for text in texts:
            pieces = text.split(IMAGE_TOKEN)
            if len(pieces) - 1 > len(remaining):
                raise ValueError(f"{len(pieces) - 1} <image> tokens in the text but only {len(counts)} images")
            built = pieces[0]
            for piece in pieces[1:]:
                built += IMAGE_START + IMAGE_TOKEN * remaining.pop(0) + IMAGE_END + piece
            out.append(built)
        return out

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
