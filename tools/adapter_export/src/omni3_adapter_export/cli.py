"""omni3-adapter-export: LoRA training checkpoint -> Hugging Face PEFT adapter.

Usage:
  omni3-adapter-export --lora-checkpoint DIR --output DIR [--hf-model-path PATH]
  omni3-adapter-export settings
"""

import sys
from collections.abc import Sequence

from omni3_adapter_export.settings import AdapterExportSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import NotAvailableYet
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, hf_checkpoint_input, preflight
from omni3_shared.settings import load_settings

TOOL = "omni3-adapter-export"


class AdapterExportCommands(ToolCommands):
    """Export the LoRA weights of an omni3-sft run as a Hugging Face PEFT adapter.

    Checks before any work: the LoRA run is a complete training-run artifact, the output is new (or --force);
    with --verify, every adapter module must resolve to a module of the base model and peft must load it,
    so an adapter can never load silently as the base model.
    """

    _settings_cls = AdapterExportSettings

    def run(
        self,
        lora_checkpoint: str | None = None,
        output: str | None = None,
        hf_model_path: str | None = None,
        verify: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Export a LoRA checkpoint as a PEFT adapter (the default command).

        Args:
            lora_checkpoint: LoRA training run directory (OMNI3_LORA_CHECKPOINT).
            output: output directory of the adapter (OMNI3_OUTPUT).
            hf_model_path: base HF checkpoint; default: the one in the run's manifest (OMNI3_HF_MODEL_PATH).
            verify: check module names against the base model and load with peft (OMNI3_VERIFY, default true).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --output.
            dry_run: print the resolved plan and the checks' results; write nothing.
        """
        flags = dict(lora_checkpoint=lora_checkpoint, output=output, hf_model_path=hf_model_path, verify=verify)
        settings = load_settings(AdapterExportSettings, flags, settings_file)
        inputs = [
            InputSpec("lora_checkpoint", settings.resolve_path(settings.lora_checkpoint), (ArtifactKind.TRAINING_RUN,))
        ]
        if settings.hf_model_path:
            inputs.append(hf_checkpoint_input(settings.resolve_path(settings.hf_model_path)))
        plan = preflight(
            TOOL,
            "run",
            settings,
            inputs=inputs,
            outputs=[OutputSpec("adapter", settings.resolve_path(settings.output), ArtifactKind.ADAPTER)],
            force=force,
            not_checked=["adapter conversion and the peft load check run only on a GPU machine"],
        )
        if plan.stop_here(dry_run):
            return
        raise NotAvailableYet("LoRA -> PEFT adapter export", "the model lifecycle issue (#4)")


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(AdapterExportCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
