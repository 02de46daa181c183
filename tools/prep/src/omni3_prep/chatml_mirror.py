"""A CPU stand-in for Megatron-Bridge's Energon sample loader, used only to read datasets back.

``dataset.yaml`` names ``megatron.bridge.data.energon.task_encoder_utils.ChatMLWebdataset``. Importing
Megatron-Bridge needs CUDA and Transformer Engine, so where it cannot be imported (CPU machines, the prep
image) ``bridge_loader()`` lends Energon this module under that name for the duration of a read-back. It
has the same sample fields and decodes the same way: images to float RGB tensors in [0, 1], WAV to a float
waveform, JSON to Python objects, MP4 left as bytes for the task encoder. Where Bridge imports, its own class
is used instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import sys
import types
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from megatron.energon import DefaultDecoderWebdatasetFactory, Sample
from webdataset.autodecode import Decoder, imagehandler

from omni3_prep.energon_meta import BRIDGE_MODULE


@dataclasses.dataclass
class ChatMLSample(Sample):
    """The fields of Bridge's ChatMLSample."""

    conversation: str
    imgs: list[torch.Tensor] | None = None
    videos: list[list[torch.Tensor]] | None = None
    audio: torch.Tensor | None = None
    tools: list[dict[str, Any]] | None = None


def decode_audio(key: str, data: bytes) -> torch.Tensor | None:
    """WebDataset handler for WAV members: a mono float32 waveform, None when undecodable (as in Bridge)."""
    if not key.lower().endswith(".wav"):
        return None
    try:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            pcm = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError):
        return None
    if width != 2:
        return None
    waveform = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        waveform = waveform.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(waveform)


class ChatMLWebdataset(DefaultDecoderWebdatasetFactory[ChatMLSample]):
    """Same construction as Bridge's loader on Energon 7.4: the factory ignores Energon's decoder."""

    __sample_type__ = ChatMLSample

    def __init__(self, path: Any, *, image_decode_spec: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("decoder", None)
        kwargs.pop("auto_decode", None)
        super().__init__(path, decoder=None, **kwargs)
        self._decoder = Decoder([imagehandler(image_decode_spec or "torchrgb"), decode_audio])


@contextmanager
def bridge_loader() -> Iterator[str]:
    """Make ``dataset.yaml``'s loader importable; yields which implementation is in use."""
    try:
        importlib.import_module(BRIDGE_MODULE)
    except Exception:  # not installed, or installed without CUDA: both leave the stand-in
        pass
    else:
        yield "megatron-bridge"
        return
    names = BRIDGE_MODULE.split(".")
    lent = {".".join(names[:depth]) for depth in range(2, len(names) + 1)}
    previous = {name: sys.modules.get(name) for name in lent}
    for name in sorted(lent):
        if sys.modules.get(name) is None or name == BRIDGE_MODULE:
            sys.modules[name] = types.ModuleType(name)
    sys.modules[BRIDGE_MODULE] = sys.modules[__name__]
    try:
        yield "omni3-prep stand-in"
    finally:
        for name, module in previous.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
