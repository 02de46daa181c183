"""The mapping from a resolved stage config to Megatron-Bridge field assignments, on the CPU.

``plan_recipe`` is pure; ``build_config_container`` is exercised against a stand-in of the few Megatron-Bridge
modules it touches (the real ones need CUDA: tests/gpu/test_sft_recipe.py builds the real ConfigContainer).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from omni3_sft import recipe, stage_config
from omni3_sft.checkpoints import ResumePoint
from omni3_sft.recipe import Attribute, Construct, DatasetInput, RecipeFacts
from omni3_sft.settings import SftSettings
from omni3_shared.errors import InvalidInputError, UsageError
from omni3_shared.settings import load_settings

FACTS = RecipeFacts(
    hf_path="/models/tiny_omni_hf",
    trust_remote_code=True,
    run_dir="/runs/.tiny.partial",
    save_dir="/runs/.tiny.partial/checkpoints",
    dataset=DatasetInput("energon", "/datasets/synth", ("train",)),
    pretrained_checkpoint="/checkpoints/tiny_omni",
)


def resolved(variant: str, *overrides: str, **settings: Any) -> dict[str, Any]:
    path = stage_config.variant_path(variant, None)
    config = stage_config.validate(stage_config.apply_overrides(stage_config.read_variant(path), overrides), variant)
    return stage_config.interpolate(config, load_settings(SftSettings, settings))


def assignments(variant: str, *overrides: str, facts: RecipeFacts = FACTS) -> dict[str, Any]:
    plan = recipe.plan_recipe(resolved(variant, *overrides), facts)
    paths = [path for path, _ in plan.assignments]
    assert len(paths) == len(set(paths)), "a field is assigned twice"
    return dict(plan.assignments)


def test_planning_never_imports_megatron() -> None:
    # megatron.energon (CPU-only, used by omni3-prep) may already be loaded by other tests; the CUDA stack may not.
    for variant in stage_config.VARIANTS:
        recipe.plan_recipe(resolved(variant), FACTS)
    assert not [name for name in sys.modules if name.startswith(("megatron.bridge", "megatron.core"))]


@pytest.mark.parametrize("variant", stage_config.VARIANTS)
def test_every_variant_maps_its_layout_and_training(variant: str) -> None:
    config = resolved(variant)
    facts = FACTS if "valor" not in config["recipe"] else replace(FACTS, dataset=DatasetInput("energon", "/d/valor"))
    plan = recipe.plan_recipe(config, facts)
    values = dict(plan.assignments)
    model, train = config["model"], config["train"]
    assert values["model.tensor_model_parallel_size"] == model["tensor_model_parallel_size"]
    assert values["model.expert_model_parallel_size"] == model["expert_model_parallel_size"]
    assert values["model.expert_tensor_parallel_size"] == model["expert_tensor_parallel_size"]
    assert values["model.pipeline_model_parallel_size"] == 1
    assert values["model.context_parallel_size"] == 1
    assert values["model.sequence_parallel"] is (model["tensor_model_parallel_size"] > 1)
    assert values["model.seq_length"] == model["seq_length"]
    assert (values["train.train_iters"], values["train.global_batch_size"], values["train.micro_batch_size"]) == (
        train["train_iters"],
        train["global_batch_size"],
        train["micro_batch_size"],
    )
    assert values["train.exit_signal_handler"] is True
    assert values["checkpoint.pretrained_checkpoint"] == "/checkpoints/tiny_omni"
    assert values["checkpoint.save"] == values["checkpoint.load"] == "/runs/.tiny.partial/checkpoints"
    assert values["logger.tensorboard_dir"] == "/runs/.tiny.partial/tensorboard"
    assert plan.function == recipe.RECIPE_FUNCTIONS[config["recipe"]]
    assert plan.hf_path == "/models/tiny_omni_hf"
    assert plan.runtime["forward_step"] == "megatron.bridge.training.nemotron_omni_step:forward_step"
    assert ("peft" in values and values["peft"] is not None) == (config["peft"] is not None)


def test_the_gpu_machine_settings_without_apex_and_flash_attn() -> None:
    values = assignments("tiny")
    assert values["model.gradient_accumulation_fusion"] is False
    assert values["model.attention_backend"] == Attribute("megatron.core.transformer.enums:AttnBackend.fused")
    with_both = assignments("tiny", facts=replace(FACTS, apex=True, flash_attn=True))
    assert "model.gradient_accumulation_fusion" not in with_both
    assert "model.attention_backend" not in with_both


def test_freeze_flags_only_where_the_stage_config_sets_them() -> None:
    values = assignments("tiny")
    assert values["model.freeze_language_model"] is True
    assert "model.freeze_vision_model" not in values  # the recipe's own choice stays
    values = assignments("tiny", "model.freeze_vision_model=false", "model.freeze_sound_encoder=true")
    assert values["model.freeze_vision_model"] is False
    assert values["model.freeze_sound_encoder"] is True


def test_effective_freeze_follows_the_recipe_defaults() -> None:
    assert recipe.effective_freeze(resolved("tiny")) == {
        "freeze_language_model": True,
        "freeze_vision_model": True,
        "freeze_vision_projection": False,
        "freeze_sound_encoder": True,
        "freeze_sound_projection": False,
    }
    peft = recipe.effective_freeze(resolved("image_text_peft"))
    assert peft["freeze_language_model"] is False and peft["freeze_vision_projection"] is True


def test_lora_is_built_from_the_peft_section() -> None:
    values = assignments("image_text_peft", "peft.dim=8", "peft.alpha=16", "peft.dropout=0.1")
    assert values["peft"] == Construct(
        "megatron.bridge.peft.lora:LoRA",
        {
            "target_modules": ["linear_qkv", "linear_proj", "in_proj", "out_proj", "linear_fc1", "linear_fc2"],
            "dim": 8,
            "alpha": 16,
            "dropout": 0.1,
        },
    )
    assert values["model.moe_shared_expert_overlap"] is False
    # a full-SFT recipe with a peft override becomes a LoRA run
    assert isinstance(assignments("tiny", "peft.target_modules=[linear_qkv]")["peft"], Construct)


def test_a_peft_recipe_without_peft_section_trains_without_adapters(tmp_path: Path) -> None:
    config = resolved("image_text_peft")
    config["peft"] = None
    values = dict(recipe.plan_recipe(config, FACTS).assignments)
    assert values["peft"] is None


def test_null_tokenizer_is_sized_below_the_model_vocabulary() -> None:
    # The VLM recipes' NullTokenizer has 32,000 ids; a model with fewer (the tiny one has 1,024) is refused by
    # Megatron unless the tokenizer is sized to fit it.
    values = dict(recipe.plan_recipe(resolved("tiny"), replace(FACTS, model_vocab_size=1024)).assignments)
    assert values["tokenizer.vocab_size"] == 1023
    assert "tokenizer.vocab_size" not in dict(recipe.plan_recipe(resolved("tiny"), FACTS).assignments)


def test_log_interval_reaches_the_logger_only_when_set() -> None:
    assert dict(recipe.plan_recipe(resolved("tiny"), FACTS).assignments)["logger.log_interval"] == 1
    assert "logger.log_interval" not in dict(recipe.plan_recipe(resolved("default"), FACTS).assignments)


def test_the_optimizer_section_sets_only_what_it_names() -> None:
    values = assignments("image_text_peft", "optimizer.lr=1e-3", "optimizer.lr_warmup_iters=0")
    assert values["optimizer.lr"] == 1e-3 and values["scheduler.lr_warmup_iters"] == 0
    assert "optimizer.min_lr" not in values
    assert not {"optimizer.lr", "optimizer.min_lr", "scheduler.lr_warmup_iters"} & set(assignments("default"))


def test_pipeline_parallel_sets_the_pipeline_dtype() -> None:
    values = assignments("tiny", "model.pipeline_model_parallel_size=2")
    assert values["model.pipeline_dtype"] == Attribute("torch:bfloat16")
    assert "model.pipeline_dtype" not in assignments("tiny")


def test_checkpoint_interval_and_explicit_resume_step() -> None:
    assert "checkpoint.save_interval" not in assignments("tiny")
    assert assignments("tiny", "checkpoint.save_interval=5")["checkpoint.save_interval"] == 5
    behind = ResumePoint(5, Path("/runs/.tiny.partial/checkpoints/iter_0000005"), 10)
    values = assignments("tiny", facts=replace(FACTS, resume=behind))
    assert values["checkpoint.ckpt_step"] == 5
    same = ResumePoint(10, Path("/runs/.tiny.partial/checkpoints/iter_0000010"), 10)
    plan = recipe.plan_recipe(resolved("tiny"), replace(FACTS, resume=same))
    assert "checkpoint.ckpt_step" not in dict(plan.assignments)
    assert plan.runtime["resume_iteration"] == 10


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def test_cord_recipe_on_parquet_uses_the_direct_hf_path() -> None:
    facts = replace(FACTS, dataset=DatasetInput("hf", "/datasets/cord/hf", ("train", "validation")))
    values = assignments("image_text_peft", facts=facts)
    assert values["dataset.source"] == Construct(
        "megatron.bridge.data.builders:HFDatasetSourceConfig",
        {"path_or_dataset": "/datasets/cord/hf", "schema_adapter": "cord_v2", "split": "train"},
    )
    assert values["dataset.do_validation"] is True
    assert values["dataset.do_test"] is False
    assert values["dataset.hf_processor_path"] == "/models/tiny_omni_hf"
    assert values["dataset.seq_length"] == 4096
    assert values["dataset.trust_remote_code"] is True
    only_train = replace(FACTS, dataset=DatasetInput("hf", "/d/hf", ("train",)))
    assert assignments("tiny", facts=only_train)["dataset.do_validation"] is False


def test_cord_recipe_on_energon_builds_an_energon_config() -> None:
    dataset = assignments("tiny")["dataset"]
    assert dataset.target == "megatron.bridge.data.builders:EnergonDatasetConfig"
    assert (dataset.kwargs["path"], dataset.kwargs["seq_length"], dataset.kwargs["micro_batch_size"]) == (
        "/datasets/synth",
        1024,
        1,
    )
    encoder = dataset.kwargs["task_encoder"]
    assert encoder.target == "megatron.bridge.data.builders:NemotronOmniEnergonTaskEncoderConfig"
    assert encoder.kwargs["hf_processor_path"] == "/models/tiny_omni_hf"
    assert encoder.kwargs["use_temporal_video_embedder"] is False
    assert encoder.kwargs["visual_keys"] == ("pixel_values",)


def test_data_loader_workers_only_where_the_stage_config_sets_them() -> None:
    assert "dataset.num_workers" not in assignments("tiny")
    assert assignments("tiny")["dataset"].kwargs["num_workers"] == recipe.DEFAULT_NUM_WORKERS
    parquet = replace(FACTS, dataset=DatasetInput("hf", "/d/hf", ("train",)))
    for variant, facts in (("tiny", FACTS), ("tiny", parquet), ("audio_text", FACTS)):
        assert assignments(variant, "dataset.num_workers=8", facts=facts)["dataset.num_workers"] == 8
    with pytest.raises(UsageError, match="num_workers"):
        resolved("tiny", "dataset.num_workers=0")


def test_valor_recipes_point_their_energon_config_at_our_data() -> None:
    facts = replace(FACTS, dataset=DatasetInput("energon", "/datasets/valor32k"))
    values = assignments("audio_text", facts=facts)
    assert values["dataset.path"] == "/datasets/valor32k"
    assert values["dataset.task_encoder.hf_processor_path"] == "/models/tiny_omni_hf"
    assert values["dataset.seq_length"] == 4096
    plan = recipe.plan_recipe(resolved("audio_text"), facts)
    assert plan.runtime["modality_filter"] == "audio"


def test_impossible_dataset_combinations_are_usage_errors() -> None:
    parquet = replace(FACTS, dataset=DatasetInput("hf", "/d/hf", ("train",)))
    with pytest.raises(UsageError, match="reads Energon datasets"):
        recipe.plan_recipe(resolved("valor32k"), parquet)
    with pytest.raises(UsageError, match="modality_filter needs an Energon dataset"):
        recipe.plan_recipe(resolved("tiny", "dataset.modality_filter=image"), parquet)


def test_dataset_form_detection(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    both = make_dataset(tmp_path / "both", parquet_splits=("train", "validation"))
    extra = recipe.read_extra(both)
    cord = recipe.dataset_input(both, "nemotron_omni_cord_v2_sft_config", "auto", extra)
    assert cord == DatasetInput("hf", str(both / "hf"), ("train", "validation"))
    valor = recipe.dataset_input(both, "nemotron_omni_valor32k_sft_config", "auto", extra)
    assert valor == DatasetInput("energon", str(both), ("train",))
    forced = recipe.dataset_input(both, "nemotron_omni_cord_v2_sft_config", "energon", extra)
    assert forced.form == "energon"
    energon_only = make_dataset(tmp_path / "energon")
    assert recipe.dataset_input(energon_only, "nemotron_omni_cord_v2_sft_config", "auto", None).form == "energon"
    with pytest.raises(InvalidInputError, match="no CORD-style parquet"):
        recipe.dataset_input(energon_only, "nemotron_omni_cord_v2_sft_config", "hf", None)
    parquet_only = make_dataset(tmp_path / "parquet", parquet_splits=("train",), energon=False)
    with pytest.raises(InvalidInputError, match="not an Energon dataset"):
        recipe.dataset_input(parquet_only, "nemotron_omni_valor32k_sft_config", "auto", None)


def test_modality_filter_needs_samples_of_that_modality(tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    config = resolved("audio_text")
    no_audio = recipe.read_extra(make_dataset(tmp_path / "images"))
    problem = recipe.modality_problem(config, no_audio)
    assert problem is not None and "has no audio samples" in problem.message and problem.exit_code == 3
    with_audio = recipe.read_extra(make_dataset(tmp_path / "audio", audio=2))
    assert recipe.modality_problem(config, with_audio) is None
    assert recipe.modality_problem(resolved("tiny"), no_audio) is None
    assert recipe.modality_problem(config, {}) is None  # unknown counts: left to the run


def test_staged_paths() -> None:
    run, staging = Path("/r/runs/tiny"), Path("/r/runs/.tiny.partial")
    assert recipe.staged(Path("/r/runs/tiny/checkpoints"), run, staging) == staging / "checkpoints"
    assert recipe.staged(Path("/elsewhere/ckpt"), run, staging) == Path("/elsewhere/ckpt")


def test_plan_renders_as_plain_data() -> None:
    rendered = recipe.plan_recipe(resolved("image_text_peft"), FACTS).as_dict()
    assert rendered["recipe"].endswith(
        "nemotron_omni_cord_v2_peft_4gpu_h100_bf16_config (alias nemotron_omni_cord_v2_peft_config)"
    )
    assert rendered["patch"].endswith("._DEFAULT_HF_PATH = /models/tiny_omni_hf")
    assert rendered["set"]["peft"]["build"] == "megatron.bridge.peft.lora:LoRA"
    assert rendered["set"]["model.attention_backend"] == "megatron.core.transformer.enums:AttnBackend.fused"


# ---------------------------------------------------------------------------------------------------------------
# build_config_container against stand-ins of the Megatron-Bridge modules it imports


@dataclass
class FakeSection:
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["values"]
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "values":
            object.__setattr__(self, name, value)
        else:
            self.values[name] = value


MODEL_FIELDS = [
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
    "expert_model_parallel_size", "expert_tensor_parallel_size", "sequence_parallel", "seq_length",
    "freeze_language_model", "freeze_vision_model", "freeze_vision_projection", "freeze_sound_encoder",
    "freeze_sound_projection", "gradient_accumulation_fusion", "attention_backend", "moe_shared_expert_overlap",
    "pipeline_dtype",
]  # fmt: skip


@pytest.fixture
def fake_megatron(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    seen: dict[str, Any] = {}
    h100 = types.ModuleType(recipe.RECIPE_MODULE)
    h100._DEFAULT_HF_PATH = "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16"
    h100.seen = seen

    def cord_sft() -> Any:
        seen["hf_path"] = h100._DEFAULT_HF_PATH  # the recipes read it when called
        return types.SimpleNamespace(
            model=FakeSection(dict.fromkeys(MODEL_FIELDS)),
            train=FakeSection(
                dict.fromkeys(["train_iters", "global_batch_size", "micro_batch_size", "exit_signal_handler"])
            ),
            dataset=FakeSection({"seq_length": 4096}),
            checkpoint=FakeSection(
                dict.fromkeys(
                    ["pretrained_checkpoint", "save", "load", "hf_trust_remote_code", "save_interval", "ckpt_step"]
                )
            ),
            logger=FakeSection({"tensorboard_dir": None, "log_interval": 10}),
            tokenizer=FakeSection({"vocab_size": 32000}),
            peft=None,
        )

    h100.nemotron_omni_cord_v2_sft_4gpu_h100_bf16_config = cord_sft

    @dataclass
    class EnergonDatasetConfig:
        path: str
        seq_length: int
        micro_batch_size: int
        task_encoder: Any
        num_workers: int = 2
        trust_remote_code: bool | None = None
        enable_in_batch_packing: bool = False

    @dataclass
    class NemotronOmniEnergonTaskEncoderConfig:
        hf_processor_path: str
        max_audio_duration: float
        num_mel_bins: int
        visual_keys: tuple
        temporal_patch_size: int
        video_fps: float
        video_nframes: int
        use_temporal_video_embedder: bool
        patch_dim: int
        trust_remote_code: bool | None = None

    builders = types.ModuleType("megatron.bridge.data.builders")
    builders.EnergonDatasetConfig = EnergonDatasetConfig
    builders.NemotronOmniEnergonTaskEncoderConfig = NemotronOmniEnergonTaskEncoderConfig
    enums = types.ModuleType("megatron.core.transformer.enums")
    enums.AttnBackend = types.SimpleNamespace(fused="AttnBackend.fused", flash="AttnBackend.flash")
    for name, module in {
        "megatron": types.ModuleType("megatron"),
        recipe.RECIPE_MODULE: h100,
        "megatron.bridge.data.builders": builders,
        "megatron.core.transformer.enums": enums,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return h100


def test_build_config_container_patches_the_hf_path_and_applies_the_plan(
    tmp_path: Path, fake_megatron: types.ModuleType, make_dataset: Callable[..., Path], write_hf_config
) -> None:
    make_dataset(tmp_path / "datasets" / "synth_receipts")
    write_hf_config(tmp_path / "models" / "tiny_omni_hf")
    settings = load_settings(SftSettings, {"storage_root": str(tmp_path)}, variant_defaults=_tiny_settings())
    config = recipe.build_config_container(resolved("tiny", storage_root=str(tmp_path), **_tiny_settings()), settings)
    assert fake_megatron.seen["hf_path"] == str(tmp_path / "models" / "tiny_omni_hf")
    assert fake_megatron._DEFAULT_HF_PATH == "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16"  # restored
    assert config.model.tensor_model_parallel_size == 1
    assert config.model.freeze_language_model is True
    assert config.model.attention_backend == "AttnBackend.fused"
    assert config.train.train_iters == 10 and config.train.exit_signal_handler is True
    assert config.dataset.path == str(tmp_path / "datasets" / "synth_receipts")
    assert config.dataset.task_encoder.hf_processor_path == str(tmp_path / "models" / "tiny_omni_hf")
    assert config.checkpoint.save == str(tmp_path / "runs" / ".tiny.partial" / "checkpoints")
    assert config.checkpoint.pretrained_checkpoint == str(tmp_path / "checkpoints" / "tiny_omni")


def _tiny_settings() -> dict[str, Any]:
    return stage_config.read_variant(stage_config.variant_path("tiny", None))["settings"]


def test_unknown_megatron_field_is_refused(fake_megatron: types.ModuleType) -> None:
    config = fake_megatron.nemotron_omni_cord_v2_sft_4gpu_h100_bf16_config()
    recipe.assign(config, "model.seq_length", 64)
    assert config.model.seq_length == 64
    with pytest.raises(UsageError, match=r"no field model\.seq_lenght"):
        recipe.assign(config, "model.seq_lenght", 64)


def test_the_hf_path_is_restored_when_the_recipe_fails(fake_megatron: types.ModuleType) -> None:
    def broken() -> None:
        raise RuntimeError("no network")

    fake_megatron.broken = broken
    plan = replace(recipe.plan_recipe(resolved("tiny"), FACTS), function="broken")
    with pytest.raises(RuntimeError):
        recipe.apply_plan(plan)
    assert fake_megatron._DEFAULT_HF_PATH.startswith("nvidia/")


def test_a_dataset_without_the_recipe_s_modalities_is_refused(
    tmp_path: Path, make_dataset: Callable[..., Path]
) -> None:
    audio_only = recipe.read_extra(make_dataset(tmp_path / "audio", audio=4))
    images_only = recipe.read_extra(make_dataset(tmp_path / "images"))
    problem = recipe.modality_problem(resolved("tiny"), audio_only)
    assert problem is not None and "has no image samples" in problem.message and problem.exit_code == 3
    assert "synth --kind receipts" in (problem.fix or "")
    problem = recipe.modality_problem(resolved("valor32k"), images_only)
    assert problem is not None and "has no video or audio samples" in problem.message
    assert recipe.modality_problem(resolved("tiny"), images_only) is None
    assert recipe.modality_problem(resolved("valor32k"), audio_only) is None
