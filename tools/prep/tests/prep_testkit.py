"""Helpers of omni3-prep's tests: reading a dataset back through megatron-energon, digests of sources."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omni3_prep.chatml_mirror import bridge_loader
from omni3_prep.energon_meta import read_splits


def read_dataset(root: Path) -> dict[str, dict[str, Any]]:
    """split -> key -> sample, every sample of every split, through Energon's own loader API."""
    from megatron.energon import DefaultTaskEncoder, WorkerConfig, get_loader, get_val_dataset

    class Samples(DefaultTaskEncoder):
        def batch(self, samples: list[Any]) -> list[Any]:
            return samples

    result: dict[str, dict[str, Any]] = {}
    with bridge_loader(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        for split in read_splits(root):
            dataset = get_val_dataset(
                str(root),
                split_part=split,
                worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
                batch_size=1,
                task_encoder=Samples(),
            )
            result[split] = {sample.__key__: sample for batch in get_loader(dataset) for sample in batch}
    return result


def pixels(image: Any) -> bytes:
    """RGB bytes of a decoded image tensor [3, H, W] in [0, 1], or of encoded image bytes."""
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image)).convert("RGB").tobytes()
    array = image.permute(1, 2, 0).numpy()
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8).tobytes()


def pcm(audio: Any) -> bytes:
    """16-bit samples of a decoded waveform tensor, or of WAV bytes."""
    if isinstance(audio, (bytes, bytearray)):
        with wave.open(io.BytesIO(audio)) as reader:
            return reader.readframes(reader.getnframes())
    return np.clip(np.rint(audio.numpy().astype(np.float64) * 32768.0), -32768, 32767).astype("<i2").tobytes()


def text_of(conversation: Any, role: str) -> str:
    turns = json.loads(conversation) if isinstance(conversation, (str, bytes)) else conversation
    turn = next(turn for turn in turns if turn["role"] == role)
    return " ".join(part.get("text", "") for part in turn["content"] if part["type"] == "text")


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` with its sha256 and mtime: equal before and after means untouched."""
    return {
        str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "omni3-manifest.json").read_text())
