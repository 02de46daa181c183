"""omni3-export: Megatron checkpoint -> Hugging Face checkpoint.

Usage:
  omni3-export --megatron-path DIR --hf-path DIR [--hf-model PATH] [--force] [--dry-run]
  omni3-export settings
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from omni3_export.settings import ExportSettings
from omni3_shared import training_run
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import Omni3Error, UsageError
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, Plan, hf_checkpoint_input, preflight, require_megatron_bridge
from omni3_shared.settings import load_settings

TOOL = "omni3-export"


class ExportCommands(ToolCommands):
    """Convert a Megatron checkpoint (from omni3-import or omni3-sft) to a Hugging Face checkpoint.

    Checks before any work: the input is a complete megatron-checkpoint or training-run artifact (of a run, the
    iteration its manifest records as saved; a LoRA run goes to omni3-lora-merge instead), the output is new
    (or --force), and, with --verify, that exported logits match the source's on a fixed batch.
    Settings come from flags, then OMNI3_* variables, then --settings-file; `omni3-export settings` lists them.
    """

    _settings_cls = ExportSettings

    def run(
        self,
        megatron_path: str | None = None,
        hf_path: str | None = None,
        hf_model: str | None = None,
        strict: bool | None = None,
        verify: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Export a Megatron checkpoint to the Hugging Face layout (the default command).

        Args:
            megatron_path: Megatron checkpoint to convert (OMNI3_MEGATRON_PATH).
            hf_path: output directory for the HF checkpoint (OMNI3_HF_PATH).
            hf_model: reference HF checkpoint for config and tokenizer (OMNI3_HF_MODEL).
            strict: fail when the model lacks a reference tensor (else copied from the reference) or exports an
                extra one (OMNI3_STRICT).
            verify: compare logits of source and export (OMNI3_VERIFY, default true).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --hf-path.
            dry_run: print the resolved plan and the checks' results; write nothing.
        """
        flags = dict(megatron_path=megatron_path, hf_path=hf_path, hf_model=hf_model, strict=strict, verify=verify)
        settings = load_settings(ExportSettings, flags, settings_file)
        inputs = [
            InputSpec(
                "megatron_checkpoint",
                settings.resolve_path(settings.megatron_path),
                (ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.TRAINING_RUN),
            )
        ]
        if settings.hf_model:
            inputs.append(hf_checkpoint_input(settings.resolve_path(settings.hf_model)))
        plan = preflight(
            TOOL,
            "run",
            settings,
            inputs=inputs,
            outputs=[OutputSpec("hf_checkpoint", settings.resolve_path(settings.hf_path), ArtifactKind.HF_CHECKPOINT)],
            force=force,
            not_checked=["Megatron-Bridge conversion and logit verification run only on a GPU machine"],
        )
        weights = weights_to_load(plan, settings.resolve_path(settings.megatron_path))
        if plan.stop_here(dry_run):
            return
        require_megatron_bridge("Megatron -> HF export", "omni3-export")
        from omni3_export.core import run_export

        reference = reference_hf_model(settings, plan)
        output = run_export(settings, weights, reference, plan.input_refs, force)
        print(f"omni3-export: wrote {output}")


def weights_to_load(plan: Plan, megatron_path: Path) -> Path:
    """The folder Megatron-Bridge loads: omni3-import's checkpoint itself, or the iteration an omni3-sft run saved.

    A problem (a LoRA run, a run with no complete save) goes to ``plan.problems`` like preflight's own.
    """
    manifest = plan.input_manifests.get("megatron_checkpoint")
    try:
        folder = training_run.weights_folder(megatron_path, manifest)
    except Omni3Error as exc:
        plan.problems.append(exc)
        return megatron_path
    if folder != megatron_path:
        plan.sections["weights"] = {"folder": str(folder), "iteration": manifest.extra["checkpoint"]["iteration"]}
    return folder


def reference_hf_model(settings: ExportSettings, plan: Plan) -> Path:
    """The HF checkpoint whose config, tokenizer and processor files go with the export."""
    if settings.hf_model:
        return settings.resolve_path(settings.hf_model)
    manifest = plan.input_manifests.get("megatron_checkpoint")
    recorded = manifest.config.get("hf_model") if manifest is not None else None
    if not recorded:
        raise UsageError(
            "the Megatron checkpoint records no HF model to take config and tokenizer from",
            fix="pass --hf-model with the HF checkpoint it was imported from",
        )
    recorded_path = Path(recorded)
    root = manifest.config.get("storage_root")
    if not recorded_path.is_absolute() and root:  # an older manifest kept the setting as given
        return Path(root) / recorded_path
    return recorded_path


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(ExportCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
