"""Image processor of the omni3 tiny Omni checkpoint: resize to multiples of 32, normalize, return [3,H,W] tensors.

The Megatron-Bridge Omni collator expects already normalized ``pixel_values`` with one [3,H,W] tensor per
image, H and W multiples of 32 (one LLM token per 32x32 region after RADIO's 16px patches and pixel shuffle).
It must not expose ``max_num_tiles`` (that switches the collator to the tiling path).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

REGION = 32


class NemotronOmniTinyImageProcessor(BaseImageProcessor):
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(
        self,
        max_side: int = 512,
        image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
        image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_side = max_side
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) scaled so the longer side is at most max_side, each rounded to a multiple of 32."""
        scale = min(1.0, self.max_side / max(width, height))
        return (
            max(REGION, round(width * scale / REGION) * REGION),
            max(REGION, round(height * scale / REGION) * REGION),
        )

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        if not isinstance(images, (list, tuple)):
            images = [images]
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        pixel_values = []
        for image in images:
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            image = image.convert("RGB")
            image = image.resize(self.target_size(*image.size), Image.BICUBIC)
            array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            pixel_values.append((array - mean) / std)
        # A list, not a stacked tensor: images of different sizes are allowed.
        return BatchFeature(data={"pixel_values": pixel_values})
