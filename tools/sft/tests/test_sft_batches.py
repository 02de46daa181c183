"""The modality filter, the batch counters and the per-interval recorder of a training run (CPU)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from omni3_sft import batches, model_shape, run_outputs
from omni3_sft.train import Recorder, cache_triton_kernels, data_parallel_size, layout_name, peft_entry


@dataclass
class ChatSample:
    """The fields of Megatron-Bridge's Energon ChatMLSample that the filter reads."""

    __key__: str
    conversation: str
    imgs: Any = None
    videos: Any = None
    audio: Any = None


def clip_sample() -> ChatSample:
    conversation = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Is the tone high or low?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "high"}]},
    ]
    return ChatSample(
        "clip-000001", json.dumps(conversation), videos=[[torch.zeros(3, 8, 8)]], audio=torch.zeros(16000)
    )


def test_audio_filter_drops_the_video_and_its_placeholder() -> None:
    sample = batches.keep_only(clip_sample(), "audio")
    assert sample.videos is None and sample.audio is not None
    turns = json.loads(sample.conversation)
    assert turns[0]["content"] == [{"type": "text", "text": "Is the tone high or low?"}]
    assert turns[1]["content"] == [{"type": "text", "text": "high"}]
    assert batches.sample_modalities(sample) == {"audio"}


def test_video_filter_keeps_the_frames_and_drops_the_sound() -> None:
    sample = batches.keep_only(clip_sample(), "video")
    assert sample.audio is None and sample.videos is not None
    assert json.loads(sample.conversation)[0]["content"][0] == {"type": "video"}


def test_a_sample_without_the_modality_is_skipped() -> None:
    receipt = ChatSample("receipt-000001", json.dumps([{"role": "user", "content": "<image>"}]), imgs=[torch.zeros(3)])
    with pytest.raises(batches.NoSuchModality, match="receipt-000001 has no audio"):
        batches.keep_only(receipt, "audio")
    silent = clip_sample()
    silent.audio = torch.zeros(0)  # an empty waveform is no audio
    with pytest.raises(batches.NoSuchModality):
        batches.keep_only(silent, "audio")


def test_wrapped_conversations_keep_their_wrapper() -> None:
    sample = clip_sample()
    sample.conversation = json.dumps({"messages": json.loads(sample.conversation), "tools": []})
    document = json.loads(batches.keep_only(sample, "audio").conversation)
    assert document["tools"] == [] and document["messages"][0]["content"][0]["type"] == "text"


def test_unknown_modality_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown modality"):
        batches.keep_only(clip_sample(), "smell")


def test_batch_stats_count_tokens_rows_and_modalities() -> None:
    stats = batches.BatchStats()
    iterator = batches.CountingIterator(
        iter(
            [
                {"input_ids": torch.zeros(2, 256, dtype=torch.long), "pixel_values": torch.zeros(2, 3, 16, 16)},
                {"tokens": torch.zeros(1, 128, dtype=torch.long), "sound_clips": torch.zeros(1, 10, 128)},
                {"input_ids": torch.zeros(1, 64), "pixel_values": torch.zeros(4, 3), "num_frames": torch.tensor([4])},
            ]
        ),
        stats,
    )
    assert len(list(iterator)) == 3
    taken = stats.take()
    assert (taken.micro_batches, taken.tokens) == (3, 2 * 256 + 128 + 64)
    assert taken.sequence_lengths == [256, 256, 128, 64]
    assert taken.with_modality == {"image": 1, "audio": 1, "video": 1}
    assert stats.take().tokens == 0  # counting starts again


def test_batches_as_megatron_bridge_collates_them() -> None:
    """Shapes seen from Megatron-Bridge's Omni task encoder on omni3-prep's synthetic receipts and clips."""
    receipts = {
        "input_ids": torch.zeros(2, 465, dtype=torch.long),
        "pixel_values": torch.zeros(1, 384, 768),
        "imgs_sizes": torch.tensor([[192, 256], [192, 256]]),
        "num_frames": torch.tensor([1, 1]),  # still images carry one frame each
        "num_image_tiles": torch.tensor([48, 48]),
    }
    clips = {
        "input_ids": torch.zeros(2, 129, dtype=torch.long),
        "pixel_values": torch.zeros(1, 4096, 768),
        "imgs_sizes": torch.tensor([[512, 512]] * 4),
        "num_frames": torch.tensor([2, 2]),  # one tubelet of two frames per clip
        "sound_clips": torch.zeros(2, 205, 128),
    }
    assert batches.batch_modalities(receipts) == {"image"}
    assert batches.batch_modalities(clips) == {"video", "audio"}
    # Each placeholder becomes (h/32)(w/32) embeddings, a tubelet's two frames one set: 48 - 1 and 256 - 1 more.
    assert batches.visual_expansion(receipts) == 2 * 47
    assert batches.visual_expansion(clips) == 2 * 255
    stats = batches.BatchStats()
    stats.add(receipts)
    stats.add(clips)
    assert stats.sequence_lengths == [465 + 47, 465 + 47, 129 + 255, 129 + 255]
    assert stats.tokens == sum(stats.sequence_lengths)
    # The tower encodes each image's 16x16 patches, and each clip's two frames as one tubelet of one frame's grid.
    assert stats.image_patches == [192, 192, 1024, 1024]


def test_padding_counts_as_positions_never_as_tokens() -> None:
    """A CORD-sized receipt as Megatron-Bridge collates it at EP4 (checked on its collate, 2026-11-27): the compact
    row padded so that the model's row is model.seq_length (4096) long, 397 of its 2,273 tokens the sample's own,
    and one 1216x1536 image whose placeholder becomes 1,824 embeddings."""
    mask = torch.zeros(1, 2273, dtype=torch.long)
    mask[0, :397] = 1
    batch = {
        "input_ids": torch.zeros(1, 2273, dtype=torch.long),
        "attention_mask": mask,
        "pixel_values": torch.zeros(1, 7296, 768),
        "imgs_sizes": torch.tensor([[1216, 1536]]),
        "num_frames": torch.tensor([1]),
    }
    stats = batches.BatchStats()
    stats.add(batch)
    assert (stats.tokens, stats.positions) == (397 + 1823, 4096)
    assert stats.sequence_lengths == [397 + 1823]  # the FLOP count sees the sample, not the padding
    taken = stats.take()
    assert (taken.tokens, taken.positions, stats.positions) == (2220, 4096, 0)


def test_rows_without_an_attention_mask_count_whole() -> None:
    stats = batches.BatchStats()
    stats.add({"input_ids": torch.zeros(2, 64), "attention_mask": torch.ones(3, 64)})  # a mask of another shape
    assert (stats.tokens, stats.positions, stats.sequence_lengths) == (128, 128, [64, 64])


def test_empty_media_tensors_are_not_a_modality() -> None:
    batch = {"input_ids": torch.zeros(1, 8), "pixel_values": torch.zeros(0), "sound_clips": None}
    assert batches.batch_modalities(batch) == set()


def test_recorder_writes_one_record_per_interval_with_data_parallel_totals(
    tmp_path: Path, write_hf_config: Callable[..., Path]
) -> None:
    shape = model_shape.read_model_shape(write_hf_config(tmp_path / "hf"))
    counter = model_shape.FlopCounter(shape, vision_backward=False, projection_backward=True)
    image = {
        "input_ids": torch.zeros(1, 96),
        "attention_mask": (torch.arange(96) < 80).long().unsqueeze(0),  # 80 of the 96 compact tokens are the sample's
        "pixel_values": torch.zeros(1, 192, 768),
        "imgs_sizes": torch.tensor([[192, 256]]),
    }
    with run_outputs.MetricsWriter(tmp_path / "metrics.jsonl") as writer:
        recorder = Recorder(writer, counter, train_iters=5, interval=2, gpus=4, data_parallel=2)
        recorder.start(1)
        for iteration in range(1, 6):
            loader = slow_loader(image, delay=0.02)
            next(batches.CountingIterator(loader, recorder.stats))
            recorder.step_end(iteration, loss=float(10 - iteration), grad_norm=1.0, lr=1e-4)
    records = run_outputs.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [2, 4, 5]  # every 2 iterations and the last one
    assert [r["loss"] for r in records] == [8.5, 6.5, 5.0]  # the interval's mean
    # Two steps of one image (48 embeddings for its placeholder: 80 + 47 tokens in 96 + 47 positions), times two
    # data-parallel ranks; the FLOPs are the tokens', not the padding's.
    assert (records[0]["tokens"], records[0]["positions"], records[0]["sequences"]) == (2 * 127 * 2, 2 * 143 * 2, 4)
    assert records[0]["padding_share"] == round(1 - 127 / 143, 4)
    assert records[0]["flops"] == counter.step([127, 127], [192, 192]) * 2
    assert records[0]["gpus"] == 4 and records[0]["grad_norm"] == 1.0
    assert all(0.04 <= r["data_wait_seconds"] <= r["seconds"] for r in records[:2])  # two waits of 20 ms each
    assert recorder.last_iteration == 5


def slow_loader(batch: dict[str, Any], delay: float) -> Any:
    """A data loader whose next batch takes ``delay`` seconds to arrive."""
    time.sleep(delay)
    yield batch


def test_layout_names_and_peft_entry() -> None:
    model = {
        "tensor_model_parallel_size": 2,
        "expert_model_parallel_size": 4,
        "pipeline_model_parallel_size": 1,
        "context_parallel_size": 1,
    }
    assert layout_name({"model": model}) == "TP2 x EP4 x PP1"
    assert data_parallel_size(8, {"model": model}) == 4
    assert peft_entry({"peft": None}) is None
    peft = {"scheme": "lora", "target_modules": ["linear_qkv"], "dim": 8, "alpha": 16, "dropout": 0.0}
    assert peft_entry({"peft": peft}) == {
        "type": "lora",
        "target_modules": ["linear_qkv"],
        "dim": 8,
        "alpha": 16,
        "dropout": 0.0,
    }


def test_triton_kernels_are_cached_on_the_storage_unless_the_user_says_otherwise(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    folder = tmp_path / "storage" / "cache" / "triton"
    assert cache_triton_kernels(environ, folder) == str(folder)
    assert environ == {"TRITON_CACHE_AUTOTUNING": "1", "TRITON_CACHE_DIR": str(folder)}
    assert folder.is_dir()
    chosen = {"TRITON_CACHE_AUTOTUNING": "0", "TRITON_CACHE_DIR": str(tmp_path / "mine")}
    assert cache_triton_kernels(chosen, folder) == str(tmp_path / "mine")
    assert chosen == {"TRITON_CACHE_AUTOTUNING": "0", "TRITON_CACHE_DIR": str(tmp_path / "mine")}


def test_an_uncreatable_triton_cache_leaves_triton_its_default(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    environ: dict[str, str] = {}
    assert "default" in cache_triton_kernels(environ, blocker / "triton")
    assert environ == {"TRITON_CACHE_AUTOTUNING": "1"}
