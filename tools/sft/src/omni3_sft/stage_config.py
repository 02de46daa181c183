"""Stage configs: a variant YAML, its ``${setting}`` placeholders and ``section.field=value`` overrides.

The sections mirror the parts of Megatron-Bridge's ConfigContainer that omni3 sets. Every field is
validated here on the CPU, so a typo in a YAML or an override is exit 2 before anything touches a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from omni3_sft.settings import SftSettings
from omni3_shared.errors import UsageError

# The recipe functions Megatron-Bridge 0.6.2 exports for Nemotron 3 Omni
# (megatron.bridge.recipes.nemotron_omni); the GPU tests import each one.
KNOWN_RECIPES = (
    "nemotron_omni_cord_v2_sft_config",
    "nemotron_omni_cord_v2_peft_config",
    "nemotron_omni_valor32k_sft_config",
    "nemotron_omni_valor32k_peft_config",
)
VARIANTS = ("default", "tiny", "valor32k", "peft_valor32k", "image_text_peft", "audio_text")
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
PATH_FIELDS = (("dataset", "path"), ("checkpoint", "pretrained_checkpoint"), ("checkpoint", "save"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSection(Section):
    path: str
    modality_filter: Literal["image", "audio", "video"] | None = None
    # How the run reads the dataset artifact: its Energon shards, or the CORD-style parquet omni3-prep hf
    # writes under hf/ (Megatron-Bridge's Direct-HF path). auto: parquet for CORD recipes when present.
    format: Literal["auto", "energon", "hf"] = "auto"
    # Data loader worker processes per rank; unset: the recipe's (2). Raise it when the run report shows the
    # forward step waiting for data.
    num_workers: PositiveInt | None = None


class ModelSection(Section):
    tensor_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    seq_length: int = 4096
    freeze_language_model: bool | None = None
    freeze_vision_model: bool | None = None
    freeze_vision_projection: bool | None = None
    freeze_sound_encoder: bool | None = None
    freeze_sound_projection: bool | None = None


class TrainSection(Section):
    train_iters: int
    global_batch_size: int
    micro_batch_size: int = 1
    log_interval: PositiveInt | None = None  # iterations per metrics line and progress line; unset: the recipe's
    # Seconds without a finished step before every rank prints its Python stacks (omni3_sft.stall_report); 0: off.
    stall_report_seconds: NonNegativeInt = 0


class OptimizerSection(Section):
    """The learning-rate schedule; an unset field keeps the recipe's (cosine from lr down to min_lr)."""

    lr: PositiveFloat | None = None  # the peak learning rate
    min_lr: NonNegativeFloat | None = None  # where the cosine decay ends
    lr_warmup_iters: NonNegativeInt | None = None  # iterations of linear warm-up to lr

    @model_validator(mode="after")
    def _floor_below_peak(self) -> OptimizerSection:
        if self.lr is not None and self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        return self


class CheckpointSection(Section):
    pretrained_checkpoint: str = "${megatron_checkpoint}"
    save: str = "${run_dir}/checkpoints"
    save_interval: int | None = None


class PeftSection(Section):
    scheme: Literal["lora"] = "lora"
    dim: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str]


class StageConfig(Section):
    recipe: Literal[KNOWN_RECIPES]  # type: ignore[valid-type]
    settings: dict[str, Any] = {}
    dataset: DatasetSection
    model: ModelSection = ModelSection()
    train: TrainSection
    optimizer: OptimizerSection = OptimizerSection()
    checkpoint: CheckpointSection = CheckpointSection()
    peft: PeftSection | None = None


def default_stage_dir() -> Path:
    """stages/stage0_sft of the checkout this package runs from, else where the image puts it."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "stages" / "stage0_sft"
        if candidate.is_dir():
            return candidate
    return Path("/opt/omni3/stages/stage0_sft")


def variant_path(config: str, stage_dir: Path | None) -> Path:
    if config.endswith((".yaml", ".yml")) or "/" in config:
        path = Path(config)
        if not path.is_file():
            raise UsageError(f"stage config file {path} does not exist", fix="check the path given to --config")
        return path
    folder = stage_dir or default_stage_dir()
    path = folder / f"{config}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none found"
        raise UsageError(
            f"unknown stage config '{config}' (looked in {folder})",
            fix=f"use one of: {available}; or pass a YAML path",
        )
    return path


def read_variant(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"stage config {path} is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(document, dict):
        raise UsageError(f"stage config {path} must be a mapping of sections")
    return document


def apply_overrides(document: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides; values are parsed as YAML scalars or lists."""
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in document.items()}
    for override in overrides:
        key, separator, raw = str(override).partition("=")
        section, dot, field = key.partition(".")
        if not separator or not dot or not section or not field:
            raise UsageError(
                f"override '{override}' is not of the form section.field=value",
                fix="write e.g. train.train_iters=20 or model.tensor_model_parallel_size=2",
            )
        if section not in StageConfig.model_fields or section in ("recipe", "settings"):
            sections = ", ".join(name for name in StageConfig.model_fields if name not in ("recipe", "settings"))
            raise UsageError(f"override '{override}' names unknown section '{section}'", fix=f"sections: {sections}")
        target = result.get(section) or {}
        target[field] = yaml.safe_load(raw) if raw else None
        result[section] = target
    return result


def validate(document: dict[str, Any], source: str) -> StageConfig:
    try:
        return StageConfig.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            problems.append(
                f"unknown key '{where}'" if error["type"] == "extra_forbidden" else f"{where}: {error['msg']}"
            )
        raise UsageError(
            f"stage config {source}: " + "; ".join(problems), fix="see stages/stage0_sft/README.md"
        ) from None


def interpolate(config: StageConfig, settings: SftSettings) -> dict[str, Any]:
    """The resolved config: ``${name}`` placeholders replaced by settings (paths resolved)."""

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in SftSettings.model_fields:
            raise UsageError(f"stage config uses unknown placeholder ${{{name}}}", fix="use a setting name")
        value = getattr(settings, name)
        return str(settings.resolve_path(value)) if isinstance(value, Path) else str(value)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return PLACEHOLDER.sub(value_of, value)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    resolved = walk(config.model_dump(exclude={"settings"}))
    # A path written straight into a stage config or an override resolves as settings do: under storage_root.
    for section, key in PATH_FIELDS:
        resolved[section][key] = str(settings.resolve_path(resolved[section][key]))
    return resolved
