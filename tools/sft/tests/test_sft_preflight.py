"""Preflight on the CPU: world size sources, the parallel layout, the batch split and the memory estimate."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from omni3_sft import model_shape, preflight, stage_config
from omni3_sft.preflight import Layout, WorldSize
from omni3_sft.settings import SftSettings
from omni3_shared.errors import UsageError
from omni3_shared.settings import load_settings

NANO = model_shape.published_shape()


def resolved(variant: str, *overrides: str) -> dict[str, Any]:
    path = stage_config.variant_path(variant, None)
    config = stage_config.validate(stage_config.apply_overrides(stage_config.read_variant(path), overrides), variant)
    return stage_config.interpolate(config, load_settings(SftSettings, {}))


def nano_with(**changes: Any) -> model_shape.OmniShape:
    return replace(NANO, llm=replace(NANO.llm, **changes))


# ---------------------------------------------------------------------------------------------------------------
# World size


def test_world_size_from_torchrun() -> None:
    assert preflight.world_size(None, {"WORLD_SIZE": "8"}) == WorldSize(8, "WORLD_SIZE (torchrun)")
    assert preflight.world_size(8, {"WORLD_SIZE": "8"}).size == 8


def test_nproc_that_disagrees_with_torchrun_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--nproc 4 but torchrun started 8"):
        preflight.world_size(4, {"WORLD_SIZE": "8"})


@pytest.mark.parametrize("raw", ["eight", "0", "-1"])
def test_bad_world_size_variable(raw: str) -> None:
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        preflight.world_size(None, {"WORLD_SIZE": raw})


def test_nproc_without_torchrun() -> None:
    assert preflight.world_size(4, {}) == WorldSize(4, "--nproc")


@pytest.mark.parametrize(
    ("env", "size"),
    [
        ({"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"}, 16),
        ({"SLURM_NNODES": "1", "SLURM_GPUS_PER_NODE": "h100:4"}, 4),
        ({"SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_PER_NODE": "8(x3)"}, 24),
    ],
)
def test_world_size_from_a_slurm_allocation(env: dict[str, str], size: int) -> None:
    world = preflight.world_size(None, env)
    assert world.size == size
    assert world.source.startswith("Slurm allocation")


def test_world_size_unknown() -> None:
    world = preflight.world_size(None, {"SLURM_JOB_NUM_NODES": "2"})  # nodes without a GPU count say nothing
    assert world.size is None
    assert "unknown on this machine" in world.source


# ---------------------------------------------------------------------------------------------------------------
# Layout


def test_layout_arithmetic() -> None:
    layout = Layout.from_resolved(resolved("default"))
    assert (layout.tp, layout.ep, layout.etp, layout.pp, layout.cp) == (4, 8, 1, 1, 1)
    assert (layout.dense, layout.expert, layout.min_world) == (4, 8, 8)
    assert Layout(tp=2, pp=2, ep=3).min_world == 2 * 6  # the least common multiple, times PP


@pytest.mark.parametrize("variant", stage_config.VARIANTS)
def test_shipped_variants_fit_nemotron_3_nano(variant: str) -> None:
    # KV heads (2) are fewer than TP 4: Megatron replicates them, so the upstream layouts are valid.
    assert preflight.layout_problems(resolved(variant), NANO) == []


@pytest.mark.parametrize(
    ("overrides", "shape", "message", "fix"),
    [
        (("model.expert_model_parallel_size=3",), NANO, "128 experts do not divide by EP 3", "divisor of 128"),
        (
            ("model.tensor_model_parallel_size=3",),
            NANO,
            "32 attention heads do not divide by TP 3",
            "one of 1, 2, 4, 8",
        ),
        (("model.tensor_model_parallel_size=8",), nano_with(mamba_num_heads=60), "60 Mamba heads", None),
        (("model.tensor_model_parallel_size=16",), NANO, "8 Mamba groups do not divide by TP 16", None),
        (("model.tensor_model_parallel_size=2",), nano_with(num_key_value_heads=3), "3 KV heads", "divisor or"),
        (("model.tensor_model_parallel_size=2",), nano_with(n_groups=1), "1 Mamba groups", None),
        (("model.pipeline_model_parallel_size=64",), NANO, "PP 64 exceeds", None),
        (("model.context_parallel_size=3", "model.seq_length=1000"), NANO, "does not divide by 2 x CP", None),
        (("model.tensor_model_parallel_size=0",), NANO, "model.tensor_model_parallel_size is 0", "1 or more"),
        (("train.micro_batch_size=3",), NANO, "global batch 8 does not divide by micro batch 3", None),
        (("train.train_iters=0",), NANO, "train.train_iters is 0", None),
    ],
)
def test_layout_problems(overrides: tuple[str, ...], shape: Any, message: str, fix: str | None) -> None:
    problems = preflight.layout_problems(resolved("default", *overrides), shape)
    assert problems, "expected a problem"
    assert message in problems[0].message
    assert problems[0].exit_code == 2
    assert problems[0].fix
    if fix:
        assert fix in problems[0].fix
    assert "\n" not in problems[0].one_line()


def test_ep_without_experts() -> None:
    shape = nano_with(hybrid_override_pattern="M*M*", n_routed_experts=0, num_experts_per_tok=0)
    problems = preflight.layout_problems(resolved("tiny", "model.expert_model_parallel_size=2"), shape)
    assert "without experts" in problems[0].message


@pytest.mark.parametrize(("world", "ok"), [(8, True), (16, True), (4, False), (12, False), (6, False)])
def test_world_must_fit_dense_and_expert_layouts(world: int, ok: bool) -> None:
    problems = preflight.world_problems(resolved("default"), world)  # TP 4, EP 8, GBS 8
    if ok:
        assert problems == []
    else:
        assert "do not fit TP 4 x PP 1 x CP 1, EP 8 x ETP 1" in problems[0].message
        assert "multiple of 8 GPUs" in (problems[0].fix or "")


def test_global_batch_must_split_over_data_parallel_ranks() -> None:
    # 16 GPUs at TP 4: 4 data-parallel ranks; GBS 8 at MBS 1 splits, at MBS 4 it does not
    assert preflight.world_problems(resolved("default"), 16) == []
    problems = preflight.world_problems(resolved("default", "train.micro_batch_size=4"), 16)
    assert "data-parallel size 4" in problems[0].message
    assert "multiple of 16" in (problems[0].fix or "")


def test_check_reports_world_status() -> None:
    unknown = preflight.check(resolved("default"), NANO, WorldSize(None, "unknown"), 80.0)
    assert unknown.section["world_size"]["status"].startswith("world size unknown on this machine")
    assert unknown.section["world_size"]["min_gpus"] == 8
    assert unknown.problems == []
    bad = preflight.check(resolved("default"), NANO, WorldSize(4, "--nproc"), 80.0)
    assert bad.section["world_size"]["status"].startswith("not ok: 4 GPU(s) do not fit")
    assert len(bad.problems) == 1
    good = preflight.check(resolved("default"), NANO, WorldSize(8, "--nproc"), 80.0)
    assert good.section["world_size"]["status"] == "ok"
    assert good.section["layout"] == "ok"


def test_invalid_sizes_skip_the_world_and_memory_checks() -> None:
    report = preflight.check(resolved("default", "model.expert_model_parallel_size=0"), NANO, WorldSize(8, "x"), 80)
    assert "memory" not in report.section
    assert len(report.problems) == 1


# ---------------------------------------------------------------------------------------------------------------
# Memory


def test_projector_only_sft_is_far_below_full_sft() -> None:
    frozen = preflight.estimate_memory(resolved("default"), NANO, 8, 80.0)
    full = preflight.estimate_memory(resolved("default", "model.freeze_language_model=false"), NANO, 8, 80.0)
    assert frozen.optimizer_gb < 1.0
    assert full.optimizer_gb > 20 * frozen.optimizer_gb
    assert full.weights_gb == pytest.approx(frozen.weights_gb)
    assert "language_model" not in frozen.trainable_note


def test_full_valor32k_on_8_gpus_warns_and_more_gpus_help() -> None:
    on_8 = preflight.estimate_memory(resolved("valor32k"), NANO, 8, 80.0)
    assert on_8.warning is not None and "exceeds the 80 GB card" in on_8.warning
    on_32 = preflight.estimate_memory(resolved("valor32k"), NANO, 32, 80.0)
    assert on_32.optimizer_gb < on_8.optimizer_gb / 3  # Adam states split over 4x the data-parallel ranks
    assert on_32.weights_gb == pytest.approx(on_8.weights_gb)
    assert preflight.estimate_memory(resolved("valor32k"), NANO, 8, 500.0).warning is None


def test_lora_trains_only_adapters() -> None:
    lora = preflight.estimate_memory(resolved("peft_valor32k"), NANO, 8, 80.0)
    assert lora.warning is None
    assert lora.trainable_params < 0.01 * model_shape.total_params(NANO)
    assert lora.trainable_note.startswith("LoRA dim 16")


def test_unknown_world_assumes_the_fewest_gpus() -> None:
    estimate = preflight.estimate_memory(resolved("valor32k"), NANO, None, 80.0)
    assert estimate.world == 4
    assert "the fewest" in estimate.world_note
    assert estimate.as_dict()["per_gpu_gb"] == round(estimate.total_gb, 1)


def test_activations_grow_with_sequence_and_shrink_with_tp() -> None:
    base = preflight.activation_bytes(resolved("tiny"), NANO, Layout())
    assert preflight.activation_bytes(resolved("tiny", "model.seq_length=2048"), NANO, Layout()) == pytest.approx(
        2 * base
    )
    assert preflight.activation_bytes(resolved("tiny"), NANO, Layout(tp=2)) == pytest.approx(base / 2)


def test_memory_warning_lands_in_the_report() -> None:
    report = preflight.check(resolved("valor32k"), NANO, WorldSize(8, "--nproc"), 80.0)
    assert report.warnings and report.section["memory"]["warning"] == report.warnings[0]
    assert report.problems == []  # a warning, never a refusal: the estimate is rough


def test_expert_or_pipeline_parallelism_warns_that_every_sequence_is_padded_to_seq_length() -> None:
    assert preflight.padding_warning(Layout(tp=2), 4096) is None
    assert "EP above 1" in preflight.padding_warning(Layout(ep=4), 4096)
    warning = preflight.padding_warning(Layout(ep=8, pp=2), 8192)
    assert warning.startswith("with EP and PP above 1") and "model.seq_length (8192)" in warning
    report = preflight.check(
        resolved("tiny", "model.expert_model_parallel_size=2", "train.global_batch_size=2"),
        NANO,
        WorldSize(2, "x"),
        500.0,
    )
    assert any("pads every sequence to model.seq_length" in warning for warning in report.warnings)
    assert report.problems == []


def test_check_does_not_modify_its_input() -> None:
    config = resolved("default")
    before = copy.deepcopy(config)
    preflight.check(config, NANO, WorldSize(8, "x"), 80.0)
    assert config == before


@pytest.mark.parametrize(
    ("variant", "overrides", "vision", "projection"),
    [
        ("default", (), False, True),  # the tower frozen, the projector trains
        ("tiny", (), False, True),
        ("default", ("model.freeze_vision_model=false",), True, True),
        ("default", ("model.freeze_vision_projection=true",), False, False),
        ("image_text_peft", (), True, True),  # LoRA adapts the tower's and the projector's linears
    ],
)
def test_flop_counter_counts_a_vision_backward_where_one_runs(
    variant: str, overrides: tuple[str, ...], vision: bool, projection: bool
) -> None:
    counter = preflight.flop_counter(NANO, resolved(variant, *overrides))
    assert (counter.vision_backward, counter.projection_backward) == (vision, projection)
