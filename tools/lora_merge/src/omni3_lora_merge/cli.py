"""omni3-lora-merge: base model + LoRA -> merged checkpoint.

Usage:
  omni3-lora-merge --lora-checkpoint DIR --output DIR [--hf-model-path PATH] [--output-format hf|megatron]
  torchrun --nproc-per-node N -m omni3_lora_merge ... --tensor-parallel-size N
  omni3-lora-merge settings
"""

import json
import sys
from collections.abc import Sequence

from omni3_lora_merge.settings import LoraMergeSettings
from omni3_shared import lora_run
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import Omni3Error, UsageError
from omni3_shared.lora_run import LoraRun
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import InputSpec, OutputSpec, Plan, hf_checkpoint_input, preflight, require_megatron_bridge
from omni3_shared.publish import ensure_free_space
from omni3_shared.settings import load_settings

TOOL = "omni3-lora-merge"
# Disk the output needs, as a multiple of the base checkpoint's weights: an HF checkpoint of the same dtype plus
# headroom; a Megatron one also holds a scratch merged HF copy while it is made.
SIZE_FACTOR = {"hf": 1.1, "megatron": 2.3}


class LoraMergeCommands(ToolCommands):
    """Merge the LoRA weights of an omni3-sft run into the base model, MoE experts included.

    Checks before any work: the LoRA run is a complete training-run artifact (every listed file present with its
    size), it is a LoRA run (extra.peft) with a complete checkpoint iteration whose run_config.yaml holds the same
    LoRA, the base HF checkpoint (--hf-model-path, else the one the run names) is Nemotron 3 Nano Omni with all its
    shards, the output is new (or --force) and its disk has room.
    With --verify (default), before anything is published: every HF tensor that an adapter with a non-zero
    lora_B targets (routed experts included) must differ from the base tensor and equal base + alpha/dim x B @ A
    up to bf16 rounding, and the merged checkpoint, loaded back, must give the base+adapter logits on a fixed
    image + audio + text batch (mean error at most 8% of the mean |logit| with argmax agreement at least 0.9,
    or, every tensor merged right, at most half the adapter's own effect; always closer to base+adapter than the
    base is); the errors go into the manifest.
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
        run = check_lora_run(plan, settings)
        if plan.stop_here(dry_run):
            return
        assert run is not None  # a real run stops above on any problem
        require_megatron_bridge("LoRA merge", TOOL)
        from omni3_lora_merge.core import rank, run_merge

        written, verification = run_merge(settings, run, plan.input_refs, force)
        if rank() == 0:
            errors = verification.get("merged_vs_adapted") or {}
            summary = {key: errors.get(key) for key in ("max_abs_err", "mean_abs_err", "argmax_agreement")}
            print(f"{TOOL}: wrote {written}" + (f" (verified: {json.dumps(summary)})" if verification else ""))


def check_lora_run(plan: Plan, settings: LoraMergeSettings) -> LoraRun | None:
    """The LoRA run, its base model, the layout and the disk; each problem is added to the plan, not raised."""
    if settings.tensor_parallel_size < 1:
        plan.problems.append(UsageError("--tensor-parallel-size must be at least 1"))
        return None
    override = settings.resolve_path(settings.hf_model_path) if settings.hf_model_path else None
    run = lora_run.check_lora_run(plan, settings.resolve_path(settings.lora_checkpoint), override)
    if run is None:
        return None
    try:
        weight_bytes = sum(path.stat().st_size for path in lora_run.base_weight_files(run.hf_model))
        plan.sections["lora_run"]["base_weight_gb"] = round(weight_bytes / 1e9, 3)
        output = settings.resolve_path(settings.output)
        ensure_free_space(output.parent, int(weight_bytes * SIZE_FACTOR[settings.output_format]))
    except Omni3Error as exc:
        plan.problems.append(exc)
        return None
    return run


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(LoraMergeCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
