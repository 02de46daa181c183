"""omni3-lora-merge: base model + LoRA -> merged checkpoint.

Usage:
  omni3-lora-merge --lora-checkpoint DIR --output DIR [--hf-model-path PATH] [--output-format hf|megatron]
  omni3-lora-merge settings
"""

import sys
from collections.abc import Sequence

from omni3_lora_merge.settings import LoraMergeSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import NotAvailableYet
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, hf_checkpoint_input, preflight
from omni3_shared.settings import load_settings

TOOL = "omni3-lora-merge"


class LoraMergeCommands(ToolCommands):
    """Merge the LoRA weights of an omni3-sft run into the base model, MoE experts included.

    Checks before any work: the LoRA run is a complete training-run artifact, the base model exists, the
    output is new (or --force); with --verify, merged logits are compared with base-plus-adapter logits.
    Writes a Hugging Face checkpoint by default (--output-format megatron for a Megatron one).
    """

    _settings_cls = LoraMergeSettings

    def run(
        self,
        lora_checkpoint: str | None = None,
        output: str | None = None,
        hf_model_path: str | None = None,
        output_format: str | None = None,
        tensor_parallel_size: int | None = None,
        verify: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Merge a LoRA checkpoint into its base model (the default command).

        Args:
            lora_checkpoint: LoRA training run directory (OMNI3_LORA_CHECKPOINT).
            output: output directory of the merged checkpoint (OMNI3_OUTPUT).
            hf_model_path: base HF checkpoint; default: the one in the run's manifest (OMNI3_HF_MODEL_PATH).
            output_format: hf or megatron (OMNI3_OUTPUT_FORMAT, default hf).
            tensor_parallel_size: tensor-parallel size while merging (OMNI3_TENSOR_PARALLEL_SIZE).
            verify: compare merged and base-plus-adapter logits (OMNI3_VERIFY, default true).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --output.
            dry_run: print the resolved plan and the checks' results; write nothing.
        """
        flags = dict(
            lora_checkpoint=lora_checkpoint,
            output=output,
            hf_model_path=hf_model_path,
            output_format=output_format,
            tensor_parallel_size=tensor_parallel_size,
            verify=verify,
        )
        settings = load_settings(LoraMergeSettings, flags, settings_file)
        inputs = [
            InputSpec("lora_checkpoint", settings.resolve_path(settings.lora_checkpoint), (ArtifactKind.TRAINING_RUN,))
        ]
        if settings.hf_model_path:
            inputs.append(hf_checkpoint_input(settings.resolve_path(settings.hf_model_path)))
        output_kind = ArtifactKind.HF_CHECKPOINT if settings.output_format == "hf" else ArtifactKind.MEGATRON_CHECKPOINT
        plan = preflight(
            TOOL,
            "run",
            settings,
            inputs=inputs,
            outputs=[OutputSpec("merged_checkpoint", settings.resolve_path(settings.output), output_kind)],
            force=force,
            not_checked=["the merge and its logit verification run only on a GPU machine"],
        )
        if plan.stop_here(dry_run):
            return
        raise NotAvailableYet("LoRA merge", "the model lifecycle issue (#4)")


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(LoraMergeCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
