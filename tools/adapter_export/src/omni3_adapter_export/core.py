"""The Megatron-Bridge work of omni3-adapter-export: LoRA run -> HF PEFT adapter, then the adapter checks.

Megatron-Bridge 0.6.2 does the conversion: ``AutoBridge.from_hf_pretrained(base)`` then
``export_adapter_ckpt(iteration_dir, staging)``, which builds the model from the base HF weights on the CPU
(float32, a single-process gloo group of its own), wraps it with the LoRA that the iteration's run_config.yaml
describes, loads the adapter shards (any training TP/EP layout) and writes adapter_config.json and
adapter_model.safetensors. The checks of ``adapter_checks`` then run on that output before it is published.
tests/gpu/test_adapter_tools.py proves it: passed on an H200, 2026-11-26 (ci/records/2026-11-26-gpu-late.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omni3_adapter_export import __version__
from omni3_adapter_export.adapter_checks import pin_target_modules, verify_adapter
from omni3_adapter_export.settings import AdapterExportSettings
from omni3_shared.errors import ToolFailure
from omni3_shared.lora_run import LoraRun
from omni3_shared.manifest import ArtifactKind, InputRef, tool_info
from omni3_shared.publish import publish_artifact

TOOL = "omni3-adapter-export"
PACKAGES = ("megatron-bridge", "megatron-core", "transformer-engine", "transformers", "peft", "torch")
log = logging.getLogger(TOOL)


def make_providers_portable(bridge: Any) -> None:
    """Every model provider this bridge hands out gets the settings the lent GPU machines need.

    ``export_adapter_ckpt`` builds its provider itself; without APEX (absent outside the NeMo image) a provider
    that keeps gradient_accumulation_fusion refuses to build Megatron's ColumnParallelLinear, and the recipes'
    flash attention is not installed everywhere. Neither setting matters to an export, which runs no backward.
    """
    from megatron.core.transformer.enums import AttnBackend

    original = bridge.to_megatron_provider

    def portable_provider(*args: Any, **kwargs: Any) -> Any:
        provider = original(*args, **kwargs)
        provider.gradient_accumulation_fusion = False
        provider.attention_backend = AttnBackend.fused
        provider.tensor_model_parallel_size = 1
        provider.expert_model_parallel_size = 1
        provider.expert_tensor_parallel_size = 1
        provider.pipeline_model_parallel_size = 1
        provider.sequence_parallel = False
        return provider

    bridge.to_megatron_provider = portable_provider


def export_adapter(run: LoraRun, target: Path) -> None:
    """Write the PEFT adapter of ``run`` into ``target`` with Megatron-Bridge (one process, CPU)."""
    from megatron.bridge import AutoBridge

    started = time.monotonic()
    log.info("stage 1/3: reading the base model %s", run.hf_model)
    # The base's own code (configuration_*.py) comes with the checkpoint omni3-sft already trained from.
    bridge = AutoBridge.from_hf_pretrained(str(run.hf_model), trust_remote_code=True)
    make_providers_portable(bridge)
    log.info("stage 2/3: export_adapter_ckpt %s -> %s (base weights in float32 on the CPU)", run.iteration_dir, target)
    bridge.export_adapter_ckpt(str(run.iteration_dir), str(target), show_progress=False)
    log.info("stage 2/3 done in %.1f s", time.monotonic() - started)


def run_adapter_export(
    settings: AdapterExportSettings, run: LoraRun, inputs: list[InputRef], force: bool
) -> tuple[Path, dict[str, Any]]:
    """Export, check (before anything is published), then publish the adapter with its manifest."""
    output = settings.resolve_path(settings.output).absolute()
    config = {"lora_run": run.summary(), **settings.model_dump(mode="json")}
    with publish_artifact(
        output, kind=ArtifactKind.ADAPTER, tool=tool_info(TOOL, __version__, PACKAGES), config=config,
        inputs=inputs, force=force,
    ) as staging:  # fmt: skip
        export_adapter(run, staging.path)
        produced = sorted(p.name for p in staging.path.iterdir())
        if not {"adapter_config.json", "adapter_model.safetensors"} <= set(produced):
            raise ToolFailure(
                f"Megatron-Bridge wrote {produced or 'nothing'}, not adapter_config.json and adapter_model.safetensors",
                fix="rerun with --debug and report the log; nothing was published",
            )
        # Megatron-Bridge's target_modules may name more than the adapter (e.g. "1" for sound_projection.1):
        # ambiguous entries become the full names of the adapted modules, so peft attaches exactly those.
        pinned = pin_target_modules(staging.path, run.hf_model)
        if pinned:
            log.info("target_modules pinned to full module names: %s", json.dumps(pinned))
        verification: dict[str, Any] | None = None
        if settings.verify:
            started = time.monotonic()
            log.info("stage 3/3: checking the adapter against %s (names, experts, lora_B, peft load)", run.hf_model)
            report = verify_adapter(staging.path, run.hf_model, run.target_modules)
            verification = report.record() | {"seconds": round(time.monotonic() - started, 1)}
            log.info(
                "stage 3/3: %s; report: %s", "passed" if not report.problems else "FAILED", json.dumps(verification)
            )
            if report.problems:
                raise ToolFailure(
                    f"adapter verification failed: {report.problems[0]}"
                    + (f" (and {len(report.problems) - 1} more problem(s))" if len(report.problems) > 1 else ""),
                    fix="nothing was published; rerun with --debug for the full report, or --noverify to skip",
                )
        staging.extra.update(
            {
                "iteration": run.iteration,
                "hf_model": str(run.hf_model),
                "lora": {"target_modules": run.target_modules, "dim": run.dim, "alpha": run.alpha},
                "parallel_at_training": run.parallel,
                "target_modules_pinned": pinned,
                "verification": verification,
            }
        )
    return output, verification or {}
