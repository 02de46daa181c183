"""Megatron-Bridge's Omni training data path reads omni3-prep's datasets (issue 3's proof), batch by batch.

omni3-sft's own ConfigContainer for a variant, then Megatron-Bridge's Energon provider
(``energon_train_valid_test_datasets_provider``) with the Omni task encoder it builds, under the variant's
modality filter, exactly as ``finetune`` calls them. No model and no GPU memory: it isolates the data path from
the training step. It needs Megatron-Bridge (whose import needs Transformer Engine), so it runs on a lent GPU
machine: ``bash ci/gpu/run-sft.sh -k data_path``, with ``OMNI3_GPU_DATA`` naming the datasets
``omni3-prep synth`` built (``datasets/synth_receipts``, ``datasets/synth_avqa``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from omni3_sft import batches, recipe, train

pytestmark = pytest.mark.gpu

BATCHES = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omni3_import.tiny_model import build_tiny_omni

    data = os.environ.get("OMNI3_GPU_DATA")
    if not data:
        pytest.skip("OMNI3_GPU_DATA is unset: build the datasets with omni3-prep synth and pass their root")
    root = tmp_path_factory.mktemp("data-path-store")
    build_tiny_omni(root / "models" / "tiny_omni_hf", vision="omit")
    (root / "checkpoints" / "tiny_omni").mkdir(parents=True)
    (root / "datasets").symlink_to(Path(data) / "datasets")
    return root


def train_iterator(config: Any) -> Any:
    """The training iterator Megatron-Bridge's Energon provider gives ``finetune``, as omni3-sft runs it."""
    from megatron.bridge.data.builders.energon import energon_train_valid_test_datasets_provider

    with train.resumable_energon_stream():
        batches_, _, _ = energon_train_valid_test_datasets_provider([BATCHES, 0, 0], config.dataset)
    return batches_


@pytest.fixture(scope="module")
def resolved_config(resolve_variant: Any) -> Any:
    def resolved(store: Path, variant: str) -> tuple[dict[str, Any], Any]:
        return resolve_variant(store, variant, "datasets/synth_receipts", "datasets/synth_avqa")

    return resolved


def draw(store: Path, variant: str, resolved_config: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``BATCHES`` training batches of ``variant`` through Megatron-Bridge's own Energon provider."""
    resolved, settings = resolved_config(store, variant)
    config = recipe.build_config_container(resolved, settings)
    with train.modality_filter(resolved["dataset"].get("modality_filter")):
        iterator = train_iterator(config)
        drawn = [next(iterator) for _ in range(BATCHES)]
    return drawn, resolved


def pixels(batch: dict[str, Any]) -> Any:
    visual = batch.get("visual_inputs")
    return visual.pixel_values if visual is not None else batch["pixel_values"]


def check_shapes(batch: dict[str, Any], seq_length: int) -> None:
    ids = batch["tokens"]
    assert ids.dim() == 2 and 0 < ids.shape[1] <= seq_length
    assert batch["labels"].shape == ids.shape == batch["loss_mask"].shape
    assert batch["loss_mask"].sum() > 0  # the assistant's answer is trained on


def test_receipts_reach_the_omni_step_as_images(store: Path, resolved_config: Any) -> None:
    drawn, resolved = draw(store, "tiny", resolved_config)
    for batch in drawn:
        check_shapes(batch, resolved["model"]["seq_length"])
        assert batches.batch_modalities(batch) == {"image"}
        assert batch["num_image_tiles"].sum() > 0
        # The FLOP count's patches per image add up to the patches the collate hands the vision tower.
        patches = batches.tower_inputs(batch)
        assert len(patches) == len(batch["imgs_sizes"]) and sum(patches) == pixels(batch).shape[-2]


@pytest.fixture(scope="module")
def cord_sized(tmp_path_factory: pytest.TempPathFactory, resolve_variant: Any) -> tuple[dict[str, Any], Any]:
    """The benchmark's data (``omni3-prep synth --receipt-width 1536``) as the ``tiny`` variant at the benchmark's
    sequence length, through a processor that keeps images up to 1536 pixels whole, as the benchmark's proxy does."""
    from omni3_import.tiny_model import build_tiny_omni
    from omni3_import.tiny_model.spec import TinyOmniSpec

    data = Path(os.environ.get("OMNI3_GPU_DATA", "/nonexistent"))
    if not (data / "datasets" / "bench_receipts" / ".nv-meta").is_dir():
        pytest.skip("no $OMNI3_GPU_DATA/datasets/bench_receipts (omni3-prep synth --receipt-width 1536)")
    root = tmp_path_factory.mktemp("cord-sized-store")
    build_tiny_omni(root / "models" / "tiny_omni_hf", vision="omit", spec=TinyOmniSpec(image_max_side=1536))
    (root / "checkpoints" / "tiny_omni").mkdir(parents=True)
    (root / "datasets").symlink_to(data / "datasets")
    resolved, settings = resolve_variant(root, "tiny", "datasets/bench_receipts", "datasets/synth_avqa")
    resolved["model"]["seq_length"] = 4096  # the benchmark's (tiny's 1024 cannot hold a CORD-sized receipt)
    return resolved, settings


def counted(resolved: dict[str, Any], settings: Any, samples: int, pad_to_max_length: bool = False) -> Any:
    """``BatchStats`` over the first ``samples`` micro batches (of one sample) of the cord-sized data."""
    config = recipe.build_config_container(resolved, settings)
    config.dataset.pad_to_max_length = pad_to_max_length  # what ConfigContainer.validate sets at EP or PP > 1
    iterator = train_iterator(config)
    stats = batches.BatchStats()
    for _ in range(samples):
        stats.add(next(iterator))
    return stats


def test_cord_sized_receipts_reach_the_step_with_cord_like_image_tokens(cord_sized: Any) -> None:
    """About 1,500 image tokens a receipt, as CORD's scans give."""
    resolved, settings = cord_sized
    stats = counted(resolved, settings, BATCHES)
    image_tokens = [patches // 4 for patches in stats.image_patches]  # 2x2 pixel shuffle
    assert len(image_tokens) == BATCHES and all(1000 <= tokens <= 2500 for tokens in image_tokens), image_tokens
    per_sequence = stats.tokens / len(stats.sequence_lengths)
    print(f"image tokens per receipt {image_tokens}, tokens per sequence {per_sequence:.0f}")
    assert min(image_tokens) < per_sequence <= resolved["model"]["seq_length"]


def test_padding_to_seq_length_adds_positions_never_tokens(cord_sized: Any) -> None:
    """At EP or PP above 1 Megatron-Bridge pads every sequence to model.seq_length: the same samples then fill
    4,096 positions each, and omni3 still counts only their tokens. Prints the per-sample means the 4-GPU benchmark
    record of 2026-11-27 corrects its numbers with (tokens and the bench proxy's model FLOPs a sample)."""
    from omni3_sft import preflight
    from omni3_shared.pytest_plugin import load_script

    resolved, settings = cord_sized
    samples, seq_length = 128, resolved["model"]["seq_length"]
    unpadded = counted(resolved, settings, samples)
    padded = counted(resolved, settings, samples, pad_to_max_length=True)
    assert padded.sequence_lengths == unpadded.sequence_lengths  # the same samples, the same tokens
    assert padded.positions == samples * seq_length > unpadded.positions >= unpadded.tokens
    bench = load_script(Path(__file__).resolve().parents[1] / "bench" / "sft.py", "omni3_bench_sft_means")
    workload = bench.Workload(bench.DEFAULT_LAYERS, 1, seq_length, 4, 8, 20, 5)
    proxy = bench.resolve(bench.stage_document(Path("/d"), Path("/m")), bench.overrides(workload), settings)
    flops = preflight.flop_counter(bench.proxy_shape(workload.layers, seq_length), proxy)
    per_sample = [
        flops.step([length], [patches])
        for length, patches in zip(unpadded.sequence_lengths, unpadded.image_patches, strict=True)
    ]
    mean_tokens = unpadded.tokens / samples
    print(
        f"{samples} samples: {mean_tokens:.1f} tokens a sample, {sum(per_sample) / samples / 1e12:.2f} TFLOP of the "
        f"bench proxy {workload.layers} a sample; positions {unpadded.positions / samples:.0f} a sample unpadded, "
        f"{padded.positions / samples:.0f} padded to model.seq_length"
    )
    assert 1500 <= mean_tokens <= 2600


def test_clips_reach_the_omni_step_as_video_and_audio(store: Path, resolved_config: Any) -> None:
    drawn, resolved = draw(store, "valor32k", resolved_config)
    for batch in drawn:
        check_shapes(batch, resolved["model"]["seq_length"])
        assert batches.batch_modalities(batch) == {"video", "audio"}
        assert batch["sound_length"].min() > 0
        # Two frames per tubelet, each tubelet one frame's patch grid.
        assert 2 * sum(batches.tower_inputs(batch)) == pixels(batch).shape[-2]


def test_audio_text_batches_carry_sound_alone(store: Path, resolved_config: Any) -> None:
    drawn, resolved = draw(store, "audio_text", resolved_config)
    assert resolved["dataset"]["modality_filter"] == "audio"
    for batch in drawn:
        check_shapes(batch, resolved["model"]["seq_length"])
        assert batches.batch_modalities(batch) == {"audio"}
        assert batch.get("visual_inputs") is None and batch.get("imgs_sizes") is None


def test_a_restarted_stream_continues_where_the_checkpoint_left_it(store: Path, resolved_config: Any) -> None:
    """What Megatron-Bridge's checkpoints save and a resumed run restores: the Energon stream position."""
    resolved, settings = resolved_config(store, "tiny")
    config = recipe.build_config_container(resolved, settings)
    first = train_iterator(config)
    assert hasattr(first, "save_state")  # Megatron-Bridge saves the position only then
    for _ in range(3):
        next(first)
    position = first.save_state()
    expected = [next(first)["tokens"] for _ in range(2)]
    restarted = train_iterator(config)
    restarted.restore_state(position)
    for want in expected:
        got = next(restarted)["tokens"]
        assert got.shape == want.shape and bool((got == want).all())
