"""omni3-sft: fine-tune Nemotron 3 Omni with Megatron-Bridge from a stage config.

Usage:
  omni3-sft --config tiny [section.field=value ...] [--dry-run]
  torchrun --nproc-per-node 8 -m omni3_sft --config default model.tensor_model_parallel_size=4
  omni3-sft variants | omni3-sft settings
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from omni3_sft import stage_config
from omni3_sft.settings import HUB_MODEL_ID, SftSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import NotAvailableYet, UsageError
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, hf_checkpoint_input, preflight
from omni3_shared.settings import load_settings

TOOL = "omni3-sft"


class SftCommands(ToolCommands):
    """Fine-tune Nemotron 3 Omni with Megatron-Bridge: full, projector-only or LoRA, with TP and EP.

    A run is a stage config (--config NAME, see `omni3-sft variants`) plus OMNI3_* settings plus
    section.field=value overrides, e.g. `omni3-sft --config tiny train.train_iters=20`. Before any GPU work
    it checks the config, the dataset and checkpoint artifacts and the run directory; --dry-run prints the
    resolved config and those checks and stops.
    """

    _settings_cls = SftSettings

    def run(
        self,
        *overrides: str,
        config: str | None = None,
        run_dir: str | None = None,
        megatron_checkpoint: str | None = None,
        hf_model: str | None = None,
        cord_v2_path: str | None = None,
        valor32k_energon_path: str | None = None,
        trust_remote_code: bool | None = None,
        stage_dir: str | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Train from a stage config (the default command).

        Args:
            overrides: section.field=value pairs applied on top of the stage config (train.train_iters=20).
            config: variant name or YAML path (OMNI3_CONFIG, default "default").
            run_dir: training run directory to write (OMNI3_RUN_DIR).
            megatron_checkpoint: Megatron checkpoint to start from (OMNI3_MEGATRON_CHECKPOINT).
            hf_model: HF checkpoint directory or hub id for tokenizer and processor (OMNI3_HF_MODEL).
            cord_v2_path: CORD-v2-style dataset for image-text variants (OMNI3_CORD_V2_PATH).
            valor32k_energon_path: Valor32k Energon dataset (OMNI3_VALOR32K_ENERGON_PATH).
            trust_remote_code: allow code shipped in the HF checkpoint to run (OMNI3_TRUST_REMOTE_CODE).
            stage_dir: folder of variant YAML files (OMNI3_STAGE_DIR).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete run directory.
            dry_run: print the resolved config and the checks' results; train nothing.
        """
        flags = dict(
            config=config,
            run_dir=run_dir,
            megatron_checkpoint=megatron_checkpoint,
            hf_model=hf_model,
            cord_v2_path=cord_v2_path,
            valor32k_energon_path=valor32k_energon_path,
            trust_remote_code=trust_remote_code,
            stage_dir=stage_dir,
        )
        # The variant is itself a setting, and its settings block sits below the environment:
        # resolve which variant first, then the settings with its defaults.
        chosen = load_settings(SftSettings, flags, settings_file)
        path = stage_config.variant_path(chosen.config, chosen.stage_dir)
        document = stage_config.read_variant(path)
        variant_defaults = document.get("settings") or {}
        if not isinstance(variant_defaults, dict) or {"config", "stage_dir"} & set(variant_defaults):
            raise UsageError(f"stage config {path}: 'settings' must map settings other than config and stage_dir")
        settings = load_settings(SftSettings, flags, settings_file, variant_defaults)
        parsed = stage_config.validate(stage_config.apply_overrides(document, overrides), str(path))
        resolved = stage_config.interpolate(parsed, settings)

        inputs = [
            InputSpec("dataset", Path(resolved["dataset"]["path"]), (ArtifactKind.DATASET,)),
            InputSpec(
                "megatron_checkpoint",
                Path(resolved["checkpoint"]["pretrained_checkpoint"]),
                (ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.TRAINING_RUN),
            ),
        ]
        not_checked = ["the Megatron-Bridge ConfigContainer, GPU memory and the world size are checked on the GPU"]
        hf_model_path = settings.resolve_path(settings.hf_model)
        if is_hub_id(settings.hf_model) and not hf_model_path.exists():
            not_checked.append(f"hf_model '{settings.hf_model}' is a hub id: it needs the hub at run time")
        else:
            inputs.append(hf_checkpoint_input(hf_model_path))
        plan = preflight(
            TOOL,
            "run",
            settings,
            inputs=inputs,
            outputs=[OutputSpec("run", settings.resolve_path(settings.run_dir), ArtifactKind.TRAINING_RUN)],
            force=force,
            config={"variant": str(path), "overrides": list(overrides), **resolved},
            not_checked=not_checked,
        )
        if dry_run:
            print(plan.render(), end="")
            return
        plan.raise_first_problem()
        raise NotAvailableYet("training", "the SFT issue (#5)")

    def variants(self, stage_dir: str | None = None) -> None:
        """List the stage config variants with what each is for.

        Args:
            stage_dir: folder of variant YAML files (default: this checkout's or image's stages/stage0_sft).
        """
        folder = Path(stage_dir) if stage_dir else stage_config.default_stage_dir()
        for path in sorted(folder.glob("*.yaml")):
            first_line = path.read_text().splitlines()[0].lstrip("# ").strip()
            print(first_line if first_line.startswith(path.stem) else f"{path.stem}: {first_line}")


def is_hub_id(value: str) -> bool:
    """Only the published model id or an explicit hf:// name reaches for the hub; anything else is a path."""
    return value == HUB_MODEL_ID or value.startswith("hf://")


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(SftCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
