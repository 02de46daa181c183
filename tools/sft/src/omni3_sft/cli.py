"""omni3-sft: fine-tune Nemotron 3 Omni with Megatron-Bridge from a stage config.

Usage:
  omni3-sft --config tiny [section.field=value ...] [--dry-run]
  torchrun --nproc-per-node 8 -m omni3_sft --config default model.tensor_model_parallel_size=4
  omni3-sft variants | omni3-sft settings
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omni3_sft import checkpoints, model_shape, preflight, recipe, stage_config
from omni3_sft.settings import HUB_MODEL_ID, SftSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import InvalidInputError, Omni3Error, UsageError
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, Plan, hf_checkpoint_input, require_megatron_bridge
from omni3_shared.plan import preflight as preflight_plan
from omni3_shared.publish import staging_path
from omni3_shared.rendezvous import global_rank
from omni3_shared.settings import load_settings

TOOL = "omni3-sft"


class SftCommands(ToolCommands):
    """Fine-tune Nemotron 3 Omni with Megatron-Bridge: full, projector-only or LoRA, with TP and EP.

    A run is a stage config (--config NAME, see `omni3-sft variants`) plus OMNI3_* settings plus
    section.field=value overrides, e.g. `omni3-sft --config tiny train.train_iters=20`. Before any GPU work
    it checks the config, the dataset and checkpoint artifacts and the run directory, the parallel layout
    against the model and the world size, and estimates the memory per GPU; --dry-run prints the resolved
    config, those checks and the Megatron-Bridge settings it would apply, and stops. Without it the run
    trains with Megatron-Bridge (GPU machines; elsewhere exit 2), prints a progress line per log interval and
    publishes the run directory (checkpoints, metrics.jsonl, plot, report, manifest) when the last iteration is
    saved; after SIGTERM (which saves first), SIGKILL or a crash, the same command resumes.
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
        nproc: int | None = None,
        gpu_memory_gb: float | None = None,
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
            nproc: GPUs the run will have, for the checks (OMNI3_NPROC; default: WORLD_SIZE or the Slurm job).
            gpu_memory_gb: memory of one GPU for the memory estimate's warning (OMNI3_GPU_MEMORY_GB, default 80).
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
            nproc=nproc,
            gpu_memory_gb=gpu_memory_gb,
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
        world = preflight.world_size(settings.nproc)
        if world.size is None and not dry_run:
            world = preflight.WorldSize(1, "a single process (no torchrun, --nproc or Slurm allocation)")
        plan = check_run(settings, resolved, world, force, {"variant": str(path), "overrides": list(overrides)})
        if plan.stop_here(dry_run):
            return
        if global_rank() == 0:  # torchrun starts one CLI per GPU; one copy of each warning is enough
            for warning in plan.sections.get("warnings", []):
                logging.getLogger(TOOL).warning(warning)
        require_megatron_bridge("training", TOOL)
        if is_hub_id(settings.hf_model) and not settings.resolve_path(settings.hf_model).exists():
            raise UsageError(
                f"hf_model '{settings.hf_model}' is a hub id; training reads the processor and tokenizer locally",
                fix="download it first (huggingface-cli download) and pass its directory as --hf-model",
            )
        from omni3_sft import train

        shape = model_shape.read_model_shape(settings.resolve_path(settings.hf_model))
        origin = {"variant": path.stem, "variant_file": str(path), "overrides": list(overrides)}
        train.run(settings, resolved, origin, shape, plan.input_refs, world.size, force)

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


def check_run(
    settings: SftSettings, resolved: dict[str, Any], world: preflight.WorldSize, force: bool, origin: dict[str, Any]
) -> Plan:
    """Every check before GPU work, in the order a real run reports them: the config against the model and
    the GPUs (exit 2), the input artifacts (exit 3) and the output (exit 2), then what the inputs hold."""
    run_dir = settings.resolve_path(settings.run_dir)
    inputs = [
        InputSpec("dataset", Path(resolved["dataset"]["path"]), (ArtifactKind.DATASET,)),
        InputSpec(
            "megatron_checkpoint",
            Path(resolved["checkpoint"]["pretrained_checkpoint"]),
            (ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.TRAINING_RUN),
        ),
    ]
    not_checked = ["Megatron-Bridge itself (the ConfigContainer is built on the GPU machine) and the real GPU memory"]
    hf_model_path = settings.resolve_path(settings.hf_model)
    hub = is_hub_id(settings.hf_model) and not hf_model_path.exists()
    if hub:
        not_checked.append(f"hf_model '{settings.hf_model}' is a hub id: it needs the hub at run time")
    else:
        inputs.append(hf_checkpoint_input(hf_model_path))
    plan = preflight_plan(
        TOOL,
        "run",
        settings,
        inputs=inputs,
        outputs=[OutputSpec("run", run_dir, ArtifactKind.TRAINING_RUN)],
        force=force,
        config={**origin, **resolved},
        not_checked=not_checked,
    )
    ready = {entry["role"] for entry in plan.inputs if not entry["status"].startswith("not ready")}
    first: list[Omni3Error] = []  # the config's own problems come before the inputs'
    later: list[Omni3Error] = []
    shape = None
    if hub:
        shape = model_shape.published_shape()
    elif "hf_model" in ready:
        try:
            shape = model_shape.read_model_shape(hf_model_path)
        except InvalidInputError as exc:
            later.append(exc)
    if shape is not None:
        if shape.remote_code and not settings.trust_remote_code:
            first.append(
                UsageError(
                    f"the HF checkpoint {settings.hf_model} ships Python code (auto_map in config.json) loading runs",
                    fix="pass --trust-remote-code (OMNI3_TRUST_REMOTE_CODE=true) if you trust its source",
                )
            )
        report = preflight.check(resolved, shape, world, settings.gpu_memory_gb)
        first.extend(report.problems)
        plan.sections.update(report.section)
        if report.warnings:
            plan.sections["warnings"] = report.warnings
    else:
        plan.not_checked.append("the layout, world size and memory (they need the model's config.json)")
    staging = staging_path(run_dir)
    if "megatron_checkpoint" in ready and shape is not None:
        pretrained = Path(resolved["checkpoint"]["pretrained_checkpoint"])
        folder = checkpoints.checkpoint_dir_of(pretrained, recipe.read_extra(pretrained))
        try:
            plan.sections["pretrained_checkpoint"] = {
                "path": str(folder),
                "shape": checkpoints.check_compatible(folder, shape_fields(shape)),
            }
        except InvalidInputError as exc:
            later.append(exc)
    if "dataset" in ready:
        problem = recipe.modality_problem(resolved, recipe.read_extra(Path(resolved["dataset"]["path"])))
        if problem is not None:
            later.append(problem)
        try:
            facts = recipe.gather_facts(
                resolved,
                settings.hf_model.removeprefix("hf://") if hub else str(hf_model_path),
                settings.trust_remote_code,
                run_dir,
                staging,
            )
            recipe_plan = recipe.plan_recipe(resolved, facts)
        except InvalidInputError as exc:
            later.append(exc)
        except UsageError as exc:
            first.append(exc)
        else:
            plan.sections["resume"] = checkpoints.describe(Path(facts.save_dir))
            plan.sections["megatron_bridge"] = recipe_plan.as_dict()
            plan.not_checked.append("APEX and flash-attn were looked up on this machine; the GPU machine looks again")
    else:
        plan.not_checked.append("the Megatron-Bridge field assignments (they need the dataset)")
    plan.problems = first + plan.problems + later
    if plan.problems:
        plan.sections["problems"] = [problem.one_line() for problem in plan.problems]
    return plan


def shape_fields(shape: model_shape.OmniShape) -> dict[str, Any]:
    return {name: getattr(shape.llm, name) for name in checkpoints.SHAPE_FIELDS}


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(SftCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
