"""omni3-import: Hugging Face checkpoint -> Megatron distributed checkpoint.

Usage:
  omni3-import --hf-model PATH --megatron-path DIR [--tensor-parallel-size N] [--expert-parallel-size N]
  omni3-import tiny --output DIR [--seed 0] [--vision full|omit]   (the built-in tiny Omni, on the CPU)
  omni3-import settings
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omni3_import.builtin import cached_builtin, is_builtin, resolve_hf_model, ships_only_builtin_code
from omni3_import.checks import check_hf_checkpoint, check_layout, check_remote_code
from omni3_import.settings import ImportSettings
from omni3_import.tiny_artifact import DEFAULT_OUTPUT, check_options, plan_tiny, write_tiny_artifact
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import Omni3Error
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import OutputSpec, Plan, hf_checkpoint_input, preflight, require_megatron_bridge
from omni3_shared.publish import ensure_free_space
from omni3_shared.settings import load_settings

TOOL = "omni3-import"


class ImportCommands(ToolCommands):
    """Convert a Hugging Face Nemotron 3 Omni checkpoint into a Megatron checkpoint with Megatron-Bridge.

    Checks before any work: the HF directory exists (an omni3 hf-checkpoint artifact or a plain HF
    directory), the output is new (or --force). --verify (default on): HF vs Megatron text logits before
    anything is written, then the written checkpoint, loaded back, against the converted model on a fixed
    image + audio + text batch; the errors go into the manifest and a mismatch exits 1 with nothing published.
    Code inside the checkpoint runs only with --trust-remote-code, unless it is byte for byte the built-in
    tiny model's own (--hf-model tiny, or a directory written by `omni3-import tiny`).
    `omni3-import tiny` writes the built-in tiny Omni as an HF checkpoint artifact, on the CPU.
    """

    _settings_cls = ImportSettings

    def run(
        self,
        hf_model: str | None = None,
        megatron_path: str | None = None,
        tensor_parallel_size: int | None = None,
        expert_parallel_size: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool | None = None,
        verify: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Import an HF checkpoint into the Megatron format (the default command).

        Args:
            hf_model: HF checkpoint directory (OMNI3_HF_MODEL).
            megatron_path: output directory of the Megatron checkpoint (OMNI3_MEGATRON_PATH).
            tensor_parallel_size: tensor-parallel size (OMNI3_TENSOR_PARALLEL_SIZE).
            expert_parallel_size: expert-parallel size (OMNI3_EXPERT_PARALLEL_SIZE).
            dtype: bfloat16, float16 or float32 (OMNI3_DTYPE).
            trust_remote_code: allow code shipped in the checkpoint to run (OMNI3_TRUST_REMOTE_CODE).
            verify: compare logits of source and result (OMNI3_VERIFY, default true).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --megatron-path.
            dry_run: print the resolved plan and the checks' results; write nothing.
        """
        flags = dict(
            hf_model=hf_model,
            megatron_path=megatron_path,
            tensor_parallel_size=tensor_parallel_size,
            expert_parallel_size=expert_parallel_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            verify=verify,
        )
        settings = load_settings(ImportSettings, flags, settings_file)
        builtin = is_builtin(settings.hf_model)
        if builtin and not dry_run:
            hf_path = resolve_hf_model(settings.hf_model)  # generated once into the cache, offline
        elif builtin:
            hf_path = cached_builtin(settings.hf_model) or Path(settings.hf_model)
        else:
            hf_path = settings.resolve_path(settings.hf_model)
        # The built-in model's code is this project's own, and so is that of `omni3-import tiny`'s output.
        own_code = builtin or ships_only_builtin_code(hf_path)
        plan = plan_import(settings, hf_path, builtin, own_code, force)
        if plan.stop_here(dry_run):
            return
        require_megatron_bridge("HF -> Megatron import", "omni3-import")
        from omni3_import.core import run_import

        # plan.input_refs holds the hf_model input (with its manifest's sha256 when it is an omni3 artifact):
        # the Megatron checkpoint's manifest records it. Other checkpoints' code only runs when opted in.
        output = run_import(settings, hf_path, plan.input_refs, own_code or settings.trust_remote_code, force)
        print(f"omni3-import: wrote {output}")

    def tiny(
        self,
        output: str | None = None,
        seed: int | None = None,
        vision: str | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Write the built-in tiny Omni (real architecture, tiny size, random weights) as an HF checkpoint.

        Runs on the CPU, offline, in seconds (--vision omit) to a minute (full). The output is an omni3
        hf-checkpoint artifact (config, safetensors, tokenizer, processor, omni3-tiny.json, manifest) that
        `omni3-import --hf-model DIR` converts and `omni3-sft --config tiny` reads as its hf_model.
        Checks before any work: the flags, the output is new (or --force), the disk has room.

        Args:
            output: directory the checkpoint is published to; relative paths land under OMNI3_STORAGE_ROOT
                (default models/tiny_omni_hf, the tiny SFT variant's hf_model).
            seed: seed of every random tensor (default 0); the same seed gives byte-identical weights.
            vision: full or omit. full, the default, writes the full-size RADIO vision tower (~1.3 GB) that a
                round trip and image training need; omit (~13 MB) is the light choice for CI, and the bridge
                then initialises the vision tower randomly.
            settings_file: YAML file of settings (for storage_root), below the environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --output (the new one is published before the old is removed).
            dry_run: print the plan and the checks' results; write nothing.
        """
        chosen_output, chosen_seed, chosen_vision = check_options(
            DEFAULT_OUTPUT if output is None else output,
            0 if seed is None else seed,
            "full" if vision is None else vision,
        )
        # storage_root comes from the usual places; the conversion settings play no part here.
        settings = load_settings(ImportSettings, {}, settings_file)
        target = settings.resolve_path(chosen_output)
        plan = plan_tiny(settings, target, chosen_seed, chosen_vision, force)
        if plan.stop_here(dry_run):
            return
        extra = write_tiny_artifact(target, chosen_seed, chosen_vision, force)
        record = extra["tiny_record"]
        print(
            f"omni3-import: wrote {target} (built-in tiny Omni, seed {chosen_seed}, vision {chosen_vision}, "
            f"{record['num_tensors']} tensors)"
        )


def plan_import(settings: ImportSettings, hf_path: Path, builtin: bool, own_code: bool, force: bool) -> Plan:
    """Every check of `run` before any GPU work; ``plan.input_refs`` is what the Megatron manifest records."""
    plan = preflight(
        TOOL,
        "run",
        settings,
        # A built-in model not generated yet has nothing to check; check_model says so in the plan.
        inputs=[] if builtin and not hf_path.is_dir() else [hf_checkpoint_input(hf_path)],
        outputs=[
            OutputSpec(
                "megatron_checkpoint",
                settings.resolve_path(settings.megatron_path),
                ArtifactKind.MEGATRON_CHECKPOINT,
            )
        ],
        force=force,
        not_checked=["Megatron-Bridge conversion and logit verification run only on a GPU machine"],
    )
    check_model(plan, settings, hf_path, builtin, own_code)
    return plan


def check_model(plan: Plan, settings: ImportSettings, hf_path: Path, builtin: bool, own_code: bool) -> None:
    """Checkpoint, remote code, layout and disk checks; each problem is added to the plan, not raised."""
    if builtin and not hf_path.is_dir():
        plan.not_checked.append("the built-in tiny model is generated on the first real run (about 1.3 GB)")
        return
    if plan.problems and any(entry["status"].startswith("not ready") for entry in plan.inputs):
        return  # the input itself is missing or damaged; preflight has said so
    try:
        facts = check_hf_checkpoint(hf_path)
    except Omni3Error as exc:
        plan.problems.append(exc)
        return
    plan.sections["hf_checkpoint"] = facts.summary() | {
        "builtin": settings.hf_model if builtin else None,
        "code_is_builtin": own_code,  # its Python files are the tiny model's own: no --trust-remote-code needed
    }
    # Under torchrun the processes must fit the layout; a plain start is checked against the layout alone.
    world_size = int(os.environ.get("WORLD_SIZE", settings.tensor_parallel_size * settings.expert_parallel_size))
    # The built-in model's code is this project's own, so it needs no opt-in.
    checks = [
        lambda: None if own_code else check_remote_code(facts, settings.trust_remote_code),
        lambda: check_layout(
            facts.config["llm_config"], settings.tensor_parallel_size, settings.expert_parallel_size, world_size
        ),
        # A Megatron checkpoint holds about the bf16 weights again (twice that in float32), plus headroom.
        lambda: ensure_free_space(
            settings.resolve_path(settings.megatron_path).parent,
            int(facts.weight_bytes * (2.4 if settings.dtype == "float32" else 1.2)),
        ),
    ]
    for check in checks:
        try:
            check()
        except Omni3Error as exc:
            plan.problems.append(exc)


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(ImportCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
