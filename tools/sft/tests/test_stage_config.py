"""Stage configs: every variant validates, keeps the upstream layout, and overrides are checked on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omni3_sft import stage_config
from omni3_sft.settings import SftSettings
from omni3_sft.stage_config import KNOWN_RECIPES, VARIANTS, StageConfig
from omni3_shared.errors import UsageError
from omni3_shared.settings import load_settings

STAGE_DIR = Path(__file__).resolve().parents[3] / "stages" / "stage0_sft"


def load(name: str, *overrides: str) -> StageConfig:
    path = stage_config.variant_path(name, None)
    document = stage_config.read_variant(path)
    return stage_config.validate(stage_config.apply_overrides(document, overrides), str(path))


def test_default_stage_dir_is_this_checkout_s() -> None:
    assert stage_config.default_stage_dir() == STAGE_DIR


def test_the_variant_list_matches_the_yaml_files() -> None:
    assert len(VARIANTS) == 6
    assert set(VARIANTS) == {path.stem for path in STAGE_DIR.glob("*.yaml")}
    assert not list(STAGE_DIR.glob("*.yml"))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_validates_with_a_known_recipe(name: str) -> None:
    config = load(name)
    assert config.recipe in KNOWN_RECIPES
    assert "${" in config.dataset.path  # datasets come from settings, never a hard-coded path
    assert config.checkpoint.pretrained_checkpoint == "${megatron_checkpoint}"
    settings_block = config.settings
    assert not {"config", "stage_dir"} & set(settings_block)
    assert set(settings_block) <= set(SftSettings.model_fields)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_documents_itself_on_its_first_line(name: str) -> None:
    first_line = (STAGE_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith(f"# {name}: ")


@pytest.mark.parametrize("name", VARIANTS)
def test_recipe_matches_the_dataset_and_the_training_scheme(name: str) -> None:
    config = load(name)
    dataset = "cord_v2" if config.dataset.path == "${cord_v2_path}" else "valor32k"
    scheme = "peft" if config.peft is not None else "sft"
    assert config.recipe == f"nemotron_omni_{dataset}_{scheme}_config"


def layout(config: StageConfig) -> dict[str, Any]:
    model, train = config.model, config.train
    return dict(
        tp=model.tensor_model_parallel_size,
        ep=model.expert_model_parallel_size,
        etp=model.expert_tensor_parallel_size,
        seq=model.seq_length,
        iters=train.train_iters,
        gbs=train.global_batch_size,
        mbs=train.micro_batch_size,
    )


def test_default_keeps_the_upstream_layout() -> None:
    config = load("default")
    assert layout(config) == dict(tp=4, ep=8, etp=1, seq=1024, iters=1000, gbs=8, mbs=1)
    assert config.model.freeze_language_model is True
    assert config.peft is None
    assert config.recipe == "nemotron_omni_cord_v2_sft_config"


def test_tiny_fits_one_gpu_and_brings_its_own_settings() -> None:
    config = load("tiny")
    assert layout(config) == dict(tp=1, ep=1, etp=1, seq=1024, iters=10, gbs=1, mbs=1)
    assert config.model.freeze_language_model is True
    assert config.settings["megatron_checkpoint"] == "checkpoints/tiny_omni"
    assert config.settings["cord_v2_path"] == "datasets/synth_receipts"


def test_valor32k_keeps_the_upstream_layout() -> None:
    config = load("valor32k")
    assert layout(config)["tp"] == 4
    assert layout(config)["ep"] == 4
    assert layout(config)["seq"] == 4096
    assert layout(config)["gbs"] == 128
    assert config.model.freeze_language_model is False
    assert config.dataset.path == "${valor32k_energon_path}"


def test_peft_valor32k_is_lora_on_the_valor32k_layout() -> None:
    config = load("peft_valor32k")
    assert (layout(config)["tp"], layout(config)["ep"], layout(config)["gbs"]) == (4, 4, 128)
    assert config.peft is not None
    assert (config.peft.scheme, config.peft.dim, config.peft.alpha) == ("lora", 16, 32)


def test_image_text_peft_is_lora_dim_16_alpha_32() -> None:
    config = load("image_text_peft")
    assert (layout(config)["tp"], layout(config)["ep"]) == (4, 8)
    assert config.peft is not None
    assert (config.peft.scheme, config.peft.dim, config.peft.alpha) == ("lora", 16, 32)
    assert {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"} <= set(config.peft.target_modules)
    assert config.dataset.path == "${cord_v2_path}"


def test_audio_text_filters_to_audio() -> None:
    config = load("audio_text")
    assert config.dataset.modality_filter == "audio"
    assert config.dataset.path == "${valor32k_energon_path}"
    assert (layout(config)["tp"], layout(config)["ep"]) == (4, 4)


def test_overrides_are_applied_and_parsed_as_yaml() -> None:
    config = load("tiny", "train.train_iters=20", "model.freeze_language_model=false", "checkpoint.save_interval=5")
    assert config.train.train_iters == 20
    assert config.model.freeze_language_model is False
    assert config.checkpoint.save_interval == 5


def test_override_can_add_a_section_and_lists() -> None:
    config = load("default", "peft.target_modules=[linear_qkv, linear_proj]", "peft.dim=8")
    assert config.peft is not None
    assert config.peft.target_modules == ["linear_qkv", "linear_proj"]
    assert config.peft.dim == 8


def test_overrides_leave_the_document_untouched() -> None:
    document = stage_config.read_variant(STAGE_DIR / "tiny.yaml")
    stage_config.apply_overrides(document, ("train.train_iters=20", "model.seq_length=64"))
    assert document["train"]["train_iters"] == 10
    assert document["model"]["seq_length"] == 1024


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trian.train_iters=20", "unknown section 'trian'"),
        ("recipe.name=x", "unknown section 'recipe'"),
        ("settings.run_dir=x", "unknown section 'settings'"),
        ("train.train_itres=20", "unknown key 'train.train_itres'"),
        ("train.train_iters", "not of the form section.field=value"),
        ("train_iters=20", "not of the form section.field=value"),
        (".train_iters=20", "not of the form section.field=value"),
        ("train.=20", "not of the form section.field=value"),
        ("train.train_iters=many", "train.train_iters"),
        ("model.freeze_language_model=perhaps", "model.freeze_language_model"),
        ("dataset.modality_filter=smell", "dataset.modality_filter"),
        ("peft.dim=8", "peft.target_modules"),  # a new peft section needs its target modules
        ("optimizer.lr=-1e-4", "optimizer.lr"),
        ("optimizer.lr_warmup_iters=-5", "optimizer.lr_warmup_iters"),
        ("optimizer.learning_rate=1e-4", "unknown key 'optimizer.learning_rate'"),
    ],
)
def test_bad_overrides_are_usage_errors(override: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        load("default", override)
    assert caught.value.exit_code == 2


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown stage config 'tinyy'") as caught:
        stage_config.variant_path("tinyy", None)
    assert "tiny" in (caught.value.fix or "")
    assert "image_text_peft" in (caught.value.fix or "")


def test_variant_by_path_and_stage_dir(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text((STAGE_DIR / "tiny.yaml").read_text())
    assert stage_config.variant_path(str(own), None) == own
    assert stage_config.variant_path("mine", tmp_path) == own
    with pytest.raises(UsageError, match="does not exist"):
        stage_config.variant_path(str(tmp_path / "absent.yaml"), None)


@pytest.mark.parametrize("text", ["recipe: [unclosed\n", "- a list\n", "just a string\n"])
def test_unreadable_variant_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError):
        stage_config.read_variant(path)


def test_unknown_recipe_is_a_usage_error() -> None:
    document = stage_config.read_variant(STAGE_DIR / "tiny.yaml") | {"recipe": "llama_sft_config"}
    with pytest.raises(UsageError, match="recipe"):
        stage_config.validate(document, "inline")


def test_interpolation_fills_placeholders_with_resolved_settings(tmp_path: Path) -> None:
    settings = load_settings(SftSettings, {"storage_root": str(tmp_path / "store"), "run_dir": "/abs/run"})
    resolved = stage_config.interpolate(load("default"), settings)
    assert resolved["dataset"]["path"] == str(tmp_path / "store" / "datasets" / "cord_v2")
    assert resolved["checkpoint"]["pretrained_checkpoint"] == str(tmp_path / "store" / "checkpoints" / "nemotron_omni")
    assert resolved["checkpoint"]["save"] == "/abs/run/checkpoints"
    assert "settings" not in resolved
    assert "${" not in repr(resolved)


def test_unknown_placeholder_is_a_usage_error() -> None:
    config = load("tiny", "dataset.path=${no_such_setting}/x")
    with pytest.raises(UsageError, match="no_such_setting"):
        stage_config.interpolate(config, load_settings(SftSettings, {}))


def test_literal_relative_paths_resolve_under_storage_root(tmp_path: Path) -> None:
    settings = load_settings(SftSettings, {"storage_root": str(tmp_path)})
    config = load("tiny", "dataset.path=data/mine", "checkpoint.pretrained_checkpoint=/abs/ckpt", "checkpoint.save=out")
    resolved = stage_config.interpolate(config, settings)
    assert resolved["dataset"]["path"] == str(tmp_path / "data" / "mine")
    assert resolved["checkpoint"]["pretrained_checkpoint"] == "/abs/ckpt"
    assert resolved["checkpoint"]["save"] == str(tmp_path / "out")


def test_the_optimizer_section_is_optional_and_checked() -> None:
    assert load("default").optimizer.model_dump() == {"lr": None, "min_lr": None, "lr_warmup_iters": None}
    config = load("image_text_peft", "optimizer.lr=1e-3", "optimizer.lr_warmup_iters=0")
    assert config.optimizer.model_dump() == {"lr": 1e-3, "min_lr": None, "lr_warmup_iters": 0}
    with pytest.raises(UsageError, match=r"min_lr 0\.01 is above lr 0\.001"):
        load("default", "optimizer.lr=1e-3", "optimizer.min_lr=1e-2")
