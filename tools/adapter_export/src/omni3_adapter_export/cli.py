"""omni3-adapter-export: LoRA training checkpoint -> Hugging Face PEFT adapter.

Usage:
  omni3-adapter-export --lora-checkpoint RUN_DIR --output DIR [--hf-model-path PATH] [--noverify] [--force]
  omni3-adapter-export check --adapter DIR [--hf-model-path PATH]
  omni3-adapter-export settings
"""

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from omni3_adapter_export.adapter_checks import verify_adapter
from omni3_adapter_export.settings import AdapterExportSettings
from omni3_shared import lora_run
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import InvalidInputError, Omni3Error, ToolFailure, UsageError
from omni3_shared.lora_run import LoraRun
from omni3_shared.manifest import ArtifactKind, describe_input
from omni3_shared.plan import InputSpec, OutputSpec, Plan, hf_checkpoint_input, preflight, require_megatron_bridge
from omni3_shared.publish import ensure_free_space
from omni3_shared.settings import load_settings

TOOL = "omni3-adapter-export"
# adapter_model.safetensors is float32 (Megatron-Bridge exports at full precision); training keeps the adapter
# shards in bf16 or fp32, so twice their size is a safe bound, plus headroom for the config and the filesystem.
ADAPTER_SIZE_FACTOR = 2
HEADROOM_BYTES = 64 * 1024 * 1024


class AdapterExportCommands(ToolCommands):
    """Export the LoRA weights of an omni3-sft run as a Hugging Face PEFT adapter.

    Checks before any work: the LoRA run is a complete training-run artifact (every listed file present with its
    size), it is a LoRA run (extra.peft) with a complete checkpoint iteration whose run_config.yaml holds the same
    LoRA, the base HF checkpoint (--hf-model-path, else the one the run names) is Nemotron 3 Nano Omni with all its
    shards, the output is new (or --force) and its disk has room.
    With --verify (default), before anything is published: every adapter module must name a tensor of the base
    checkpoint with fitting lora_A/lora_B shapes, every routed expert linear of an adapted kind must have its
    adapter, no target_modules entry may name a base module that is not a linear (ambiguous entries from
    Megatron-Bridge are first pinned to full module names), some lora_B must be non-zero, and peft must load the
    adapter onto the base model's module tree with every tensor applied and changed outputs. `check` runs the
    same checks on any PEFT adapter directory.
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
            verify: check names, experts, lora_B and the peft load before publishing (OMNI3_VERIFY, default true).
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
            not_checked=["the Megatron-Bridge adapter export and the checks of its output run in the real run"],
        )
        run = check_lora_run(plan, settings)
        if plan.stop_here(dry_run):
            return
        assert run is not None  # a real run stops above on any problem
        require_megatron_bridge("LoRA -> PEFT adapter export", TOOL)
        if settings.verify and importlib.util.find_spec("peft") is None:
            raise UsageError("--verify loads the adapter with peft, which is not installed", fix="install peft")
        from omni3_adapter_export.core import run_adapter_export

        written, verification = run_adapter_export(settings, run, plan.input_refs, force)
        summary = {k: verification.get(k) for k in ("adapter_modules", "matched_base_modules", "rank", "alpha")}
        print(f"{TOOL}: wrote {written}" + (f" (verified: {json.dumps(summary)})" if verification else ""))

    def check(
        self,
        adapter: str,
        hf_model_path: str | None = None,
        peft: bool = True,
        settings_file: str | None = None,
    ) -> None:
        """Run the adapter checks on an existing PEFT adapter directory; exit 1 when one fails.

        Args:
            adapter: PEFT adapter directory (an omni3 adapter artifact or a plain directory).
            hf_model_path: base HF checkpoint; default: the adapter manifest's extra.hf_model, else
                base_model_name_or_path of its adapter_config.json.
            peft: also load the adapter with peft (needs the peft package).
            settings_file: YAML file of settings (OMNI3_SETTINGS_FILE); only storage_root is used.
        """
        settings = load_settings(AdapterExportSettings, {"hf_model_path": hf_model_path}, settings_file)
        adapter_dir = settings.resolve_path(Path(adapter))
        _, manifest = describe_input("adapter", adapter_dir, ArtifactKind.ADAPTER, allow_external=True)
        extra = manifest.extra if manifest is not None else {}
        base = settings.hf_model_path or extra.get("hf_model") or _adapter_base(adapter_dir)
        if not base:
            raise UsageError(f"{adapter_dir} names no base model", fix="pass --hf-model-path")
        base_path = settings.resolve_path(Path(base))
        lora_run.read_omni_config(base_path)
        if peft and importlib.util.find_spec("peft") is None:
            raise UsageError("the peft load check needs the peft package", fix="install peft, or pass --peft=false")
        targets = (extra.get("lora") or {}).get("target_modules") or []
        report = verify_adapter(adapter_dir, base_path, targets, load_with_peft=peft)
        print(yaml.safe_dump({"adapter": str(adapter_dir), "hf_model": str(base_path), **report.record()},
                             sort_keys=False, width=120), end="")  # fmt: skip
        if report.problems:
            raise ToolFailure(f"adapter verification failed: {report.problems[0]}", fix="see the report above")


def _adapter_base(adapter_dir: Path) -> str | None:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError, AttributeError):
        raise InvalidInputError(
            f"{adapter_dir} has no readable adapter_config.json", fix="point at an adapter"
        ) from None


def check_lora_run(plan: Plan, settings: AdapterExportSettings) -> LoraRun | None:
    """The LoRA run, its base model and the disk; each problem is added to the plan, not raised."""
    override = settings.resolve_path(settings.hf_model_path) if settings.hf_model_path else None
    run = lora_run.check_lora_run(plan, settings.resolve_path(settings.lora_checkpoint), override)
    if run is None:
        return None
    try:
        lora_run.base_weight_files(run.hf_model)
        output = settings.resolve_path(settings.output)
        ensure_free_space(output.parent, ADAPTER_SIZE_FACTOR * run.adapter_bytes() + HEADROOM_BYTES)
    except Omni3Error as exc:
        plan.problems.append(exc)
        return None
    return run


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(AdapterExportCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
