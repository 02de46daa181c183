"""What omni3-sft does to samples and batches on their way into Megatron-Bridge's Omni forward step.

- ``keep_only``: the stage config's ``dataset.modality_filter``. A sample without the wanted modality is
  skipped; from the others every other medium is removed, with its placeholder in the conversation, so the
  model trains on that modality and text alone (``audio_text``: the sound of a clip, never its frames).
- ``BatchStats``: tokens (padding left out), positions (padding in), image patches and modalities of the batches
  the forward step draws, and the time it waited for them, for the metrics (tokens/s, FLOPs, padding, data wait)
  and for the proof that a filter really filtered.

Pure Python and torch: the CPU tests exercise it without Megatron.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("image", "audio", "video")
# Where each modality lives on an Energon ChatML sample (megatron-bridge's ChatMLSample fields).
SAMPLE_FIELDS = {"image": "imgs", "audio": "audio", "video": "videos"}
# Nemotron Omni's RADIO tower: 16x16-pixel patches, then a 2x2 pixel shuffle, so one embedding per 32x32 pixels;
# the temporal video embedder fuses two consecutive frames into one.
PATCH_AREA = 16 * 16  # pixels one RADIO patch covers
VISION_PIXELS_PER_TOKEN = PATCH_AREA * 2 * 2
VIDEO_TEMPORAL_PATCH = 2


class NoSuchModality(Exception):
    """The sample lacks the modality the filter keeps; the caller turns this into Energon's SkipSample."""


def _present(value: Any) -> bool:
    """A medium is there unless it is missing or empty (a tensor without elements, an empty list)."""
    if value is None:
        return False
    numel = getattr(value, "numel", None)
    if callable(numel):
        return numel() > 0
    try:
        return len(value) > 0
    except TypeError:
        return True


def sample_modalities(sample: Any) -> set[str]:
    return {name for name, attribute in SAMPLE_FIELDS.items() if _present(getattr(sample, attribute, None))}


def _strip_placeholders(conversation: Any, removed: set[str]) -> Any:
    """The conversation without content items of the removed media types (``{"type": "video"}``)."""
    document = json.loads(conversation) if isinstance(conversation, (str, bytes)) else conversation
    turns = document
    if isinstance(document, dict):
        key = next((k for k in ("conversations", "messages", "conversation") if k in document), None)
        turns = document[key] if key else []
    for turn in turns if isinstance(turns, list) else []:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            turn["content"] = [
                item for item in content if not (isinstance(item, Mapping) and item.get("type") in removed)
            ]
    return json.dumps(document) if isinstance(conversation, (str, bytes)) else document


def keep_only(sample: Any, modality: str) -> Any:
    """``sample`` with only ``modality`` left among its media (the same object, changed in place).

    Raises:
        NoSuchModality: the sample has no ``modality``.
    """
    if modality not in SAMPLE_FIELDS:
        raise ValueError(f"unknown modality {modality!r}; one of {', '.join(MODALITIES)}")
    present = sample_modalities(sample)
    if modality not in present:
        raise NoSuchModality(f"sample {getattr(sample, '__key__', '?')} has no {modality}")
    removed = present - {modality}
    for name in removed:
        setattr(sample, SAMPLE_FIELDS[name], None)
    if removed:
        sample.conversation = _strip_placeholders(sample.conversation, removed)
    return sample


# ---------------------------------------------------------------------------------------------------------------
# Counting what the forward step draws


@dataclass
class BatchStats:
    """Totals since the last ``take()``: micro-batches, tokens (the sequences' own, padding left out), positions
    (padding in: what the model ran), each sequence's length in tokens, the patches of each vision tower input,
    modalities, and the seconds the forward step waited for the data loader."""

    micro_batches: int = 0
    tokens: int = 0
    positions: int = 0
    sequence_lengths: list[int] = field(default_factory=list)
    with_modality: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    image_patches: list[int] = field(default_factory=list)
    data_wait_seconds: float = 0.0

    def add(self, batch: Mapping[str, Any]) -> None:
        ids = batch.get("tokens") if batch.get("tokens") is not None else batch.get("input_ids")
        if ids is None:
            return
        rows, width = (1, int(ids.shape[-1])) if ids.dim() == 1 else (int(ids.shape[0]), int(ids.shape[1]))
        # The model's sequence: each row's compact tokens plus its share of the image-placeholder expansion.
        extra, remainder = divmod(visual_expansion(batch), rows)
        expansion = [extra + (1 if row < remainder else 0) for row in range(rows)]
        lengths = [active + grown for active, grown in zip(active_widths(batch, rows, width), expansion, strict=True)]
        self.micro_batches += 1
        self.tokens += sum(lengths)
        self.positions += rows * width + sum(expansion)
        self.sequence_lengths.extend(lengths)
        self.image_patches.extend(tower_inputs(batch))
        for modality in batch_modalities(batch):
            self.with_modality[modality] += 1

    def take(self) -> BatchStats:
        """The totals so far; the counters start again from zero."""
        taken = BatchStats(
            self.micro_batches,
            self.tokens,
            self.positions,
            self.sequence_lengths,
            self.with_modality,
            self.image_patches,
            self.data_wait_seconds,
        )
        self.micro_batches, self.tokens, self.positions, self.sequence_lengths, self.image_patches = 0, 0, 0, [], []
        self.with_modality = dict.fromkeys(MODALITIES, 0)
        self.data_wait_seconds = 0.0
        return taken


def _is_video(batch: Mapping[str, Any]) -> bool:
    """Video batches count several frames per clip; Megatron-Bridge gives still images ``num_frames`` 1."""
    frames = batch.get("num_frames")
    return _present(frames) and int(frames.max()) > 1


def batch_modalities(batch: Mapping[str, Any]) -> set[str]:
    """Modalities a collated Omni batch carries: pixels (image, or video when a clip has several frames), sound."""
    found = set()
    visual = batch.get("visual_inputs")
    pixels = getattr(visual, "pixel_values", None) if visual is not None else batch.get("pixel_values")
    if _present(pixels):
        found.add("video" if _is_video(batch) else "image")
    if _present(batch.get("sound_clips")):
        found.add("audio")
    return found


def active_widths(batch: Mapping[str, Any], rows: int, width: int) -> list[int]:
    """Each row's compact tokens without the padding, from the collate's ``attention_mask`` (1 on a sample's own
    tokens); every row counts whole (``width``) when the batch has no such mask (a packed batch).

    Megatron-Bridge pads rows to the micro batch's longest, and to ``model.seq_length`` whenever expert or pipeline
    parallelism is on (``ConfigContainer.validate`` sets ``dataset.pad_to_max_length``), so at EP4 most positions
    of a short sample can be padding.
    """
    mask = batch.get("attention_mask")
    if mask is None or tuple(mask.shape) != (rows, width):
        return [width] * rows
    return [int(active) for active in (mask != 0).sum(dim=1).tolist()]


def visual_expansion(batch: Mapping[str, Any]) -> int:
    """Positions the model adds to a batch when it replaces each compact ``<image>`` placeholder by its embeddings.

    Megatron-Bridge's Omni collate leaves one placeholder per image (or per video tubelet of
    ``VIDEO_TEMPORAL_PATCH`` frames); RADIO turns every frame of ``imgs_sizes`` (height, width) into one embedding
    per ``VISION_PIXELS_PER_TOKEN`` pixels (16x16 patches, then a 2x2 pixel shuffle).
    """
    sizes = batch.get("imgs_sizes")
    if not _present(sizes):
        return 0
    embeddings = int((sizes[:, 0] * sizes[:, 1]).sum()) // VISION_PIXELS_PER_TOKEN
    frames = len(sizes)
    placeholders = frames
    if _is_video(batch):
        embeddings //= VIDEO_TEMPORAL_PATCH
        placeholders = frames // VIDEO_TEMPORAL_PATCH
    return max(embeddings - placeholders, 0)


def tower_inputs(batch: Mapping[str, Any]) -> list[int]:
    """16x16 patches of each input the vision tower encodes: every image, or every tubelet of a video's frames."""
    sizes = batch.get("imgs_sizes")
    if not _present(sizes):
        return []
    patches = [int(height) * int(width) // PATCH_AREA for height, width in sizes.tolist()]
    if _is_video(batch):  # consecutive frames fuse into one tubelet of the same patch grid
        return patches[::VIDEO_TEMPORAL_PATCH][: len(patches) // VIDEO_TEMPORAL_PATCH]
    return patches


class CountingIterator(Iterator[Any]):
    """Passes batches through unchanged, adding each to ``stats`` with the time ``next`` waited for it."""

    def __init__(self, batches: Iterator[Any], stats: BatchStats) -> None:
        self._batches = batches  # not iter(): Megatron's data iterator wrappers define only __next__
        self.stats = stats

    def __iter__(self) -> CountingIterator:
        return self

    def __next__(self) -> Any:
        started = time.perf_counter()
        batch = next(self._batches)
        self.stats.data_wait_seconds += time.perf_counter() - started
        if isinstance(batch, Mapping):
            self.stats.add(batch)
        return batch
