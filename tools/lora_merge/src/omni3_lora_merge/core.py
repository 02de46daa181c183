"""The GPU work of omni3-lora-merge: base HF weights + the run's LoRA adapters -> one merged checkpoint.

Steps (each logged with its time):
  1. model   ``AutoBridge.from_hf_pretrained(base)`` -> provider (TP, bf16; no APEX fusion, cuDNN attention) with
             the LoRA of the iteration's run_config.yaml as a pre-wrap hook -> the adapter shards loaded with
             ``dist_checkpointing.load`` through Megatron-Bridge's adapter filter (any training TP/EP layout).
  2. reference  multimodal logits of base+adapter, and of the base alone (adapters switched off).
  3. merge   hf: ``save_hf_pretrained(merge_adapter_weights=True)`` (the bridge merges every LoRA, grouped MoE
             experts included, into its HF tensor); megatron: the same into a scratch folder, imported again
             without LoRA and saved with ``save_megatron_model``.
  4. verify  every HF tensor an adapter with a non-zero lora_B targets differs from the base tensor, and the
             merged checkpoint, loaded back, gives the base+adapter logits; each merged tensor is also compared
             with base + alpha/dim * B @ A (``merge_check``: the scale the merge applied, what is left beyond
             bf16 rounding), recorded in the manifest to say which tensors a failing merge got wrong.
Launch with ``torchrun --nproc-per-node N`` where N is the tensor-parallel size (or plain python for one GPU).
tests/gpu/test_adapter_tools.py proves it: HF and Megatron output passed --verify on an H200, 2026-11-26
(ci/records/2026-11-26-gpu-late.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omni3_lora_merge import __version__
from omni3_lora_merge.merge_check import judge, merge_residuals
from omni3_lora_merge.settings import LoraMergeSettings
from omni3_shared.errors import ToolFailure
from omni3_shared.lora_run import LoraRun, base_weight_files
from omni3_shared.manifest import ArtifactKind, InputRef, tool_info
from omni3_shared.megatron_omni import build_model
from omni3_shared.omni_logits import logit_mismatch_fix, logit_stats, multimodal_logits
from omni3_shared.publish import Staging, publish_artifact, staging_path
from omni3_shared.rendezvous import single_process_rendezvous

TOOL = "omni3-lora-merge"
PACKAGES = ("megatron-bridge", "megatron-core", "transformer-engine", "transformers", "torch")
log = logging.getLogger(TOOL)
SCRATCH_HF = ".merged_hf"
LORA_KEYS = ("target_modules", "exclude_modules", "dim", "alpha", "dropout", "dropout_position",
             "normalize_moe_lora", "share_expert_adapters")  # fmt: skip
VLM_LORA_KEYS = ("freeze_language_model", "freeze_vision_model", "freeze_vision_projection")


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


@contextmanager
def step(name: str):
    started = time.monotonic()
    if rank() == 0:
        log.info("%s: started", name)
    yield
    if rank() == 0:
        log.info("%s: done in %.1f s", name, time.monotonic() - started)


def _distributed(tensor_parallel: int) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not torch.cuda.is_available():
        raise ToolFailure("omni3-lora-merge needs a CUDA GPU", fix="run it in the GPU image on a GPU machine")
    single_process_rendezvous()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    if dist.get_world_size() != tensor_parallel:
        raise ToolFailure(
            f"{dist.get_world_size()} process(es) for tensor-parallel size {tensor_parallel}",
            fix=f"launch with torchrun --nproc-per-node {tensor_parallel}, or set --tensor-parallel-size",
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel, expert_tensor_parallel_size=tensor_parallel
    )
    model_parallel_cuda_manual_seed(0)


def lora_from_run_config(iteration_dir: Path) -> Any:
    """The LoRA the run trained with, rebuilt from the ``peft:`` block of the iteration's run_config.yaml."""
    from megatron.bridge.peft.lora import LoRA, VLMLoRA
    from megatron.bridge.training.utils.checkpoint_utils import read_run_config

    saved = read_run_config(str(iteration_dir / "run_config.yaml")).get("peft") or {}
    cls, keys = (
        (VLMLoRA, LORA_KEYS + VLM_LORA_KEYS) if "VLMLoRA" in str(saved.get("_target_", "")) else (LoRA, LORA_KEYS)
    )
    return cls(**{key: value for key, value in saved.items() if key in keys})


def load_adapters(model: list, lora: Any, iteration_dir: Path) -> int:
    """Load the run's adapter shards into the LoRA-wrapped model; returns how many tensors were loaded."""
    from megatron.bridge.peft.utils import enable_legacy_shared_expert_adapter_loading
    from megatron.bridge.training.checkpointing import apply_peft_adapter_filter_to_state_dict
    from megatron.core import dist_checkpointing

    def adapter_state() -> dict[str, Any]:
        return apply_peft_adapter_filter_to_state_dict({"model": model[0].sharded_state_dict()}, lora)

    state = adapter_state()
    legacy = enable_legacy_shared_expert_adapter_loading(model, state, iteration_dir)
    if legacy:  # a checkpoint of an older Megatron-Bridge: the shared expert adapters are 2D there
        state = adapter_state()
    loaded = dist_checkpointing.load(state, str(iteration_dir), validate_access_integrity=not legacy)
    model[0].load_state_dict(loaded["model"], strict=False)
    if not loaded["model"]:
        raise ToolFailure(
            f"no adapter tensor was loaded from {iteration_dir}", fix="check that the run is a LoRA run of this model"
        )
    return len(loaded["model"])


def adapter_targets(bridge: Any, model: list) -> tuple[dict[str, bool], dict[str, dict[str, Any]]]:
    """HF tensor name of every adapter's base weight -> whether its lora_B is non-zero, and (rank 0) its lora_A
    and lora_B on the CPU for the weight-level check (collective)."""
    targets: dict[str, bool] = {}
    factors: dict[str, dict[str, Any]] = {}
    keep = rank() == 0
    for name, weight in bridge.export_adapter_weights(model, cpu=True, show_progress=False):
        base, _, suffix = name.rpartition(".lora_")
        key, which = f"{base}.weight", suffix[:1]  # "A" or "B"
        if which == "B":
            targets[key] = targets.get(key, False) or bool(weight.abs().max().item() > 0)
        else:
            targets.setdefault(key, False)
        if keep:
            factors.setdefault(key, {})[which] = weight
    return targets, factors


def changed_tensors(
    base_dir: Path, merged_dir: Path, targets: dict[str, bool], factors: dict[str, dict[str, Any]], scale: float
) -> dict[str, Any]:
    """Which adapter-targeted tensors differ between the base and the merged HF checkpoint, and how each merged
    tensor compares with base + scale * B @ A (rank 0, CPU)."""
    import torch
    from safetensors import safe_open

    def read(directory: Path, names: set[str]) -> dict[str, Any]:
        found = {}
        for shard in sorted(directory.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                for key in set(handle.keys()) & names:
                    found[key] = handle.get_tensor(key)
        return found

    names = set(targets)
    base, merged = read(base_dir, names), read(merged_dir, names)
    expected = {name for name, nonzero in targets.items() if nonzero}
    changed = {name for name in names & set(base) & set(merged) if not torch.equal(base[name], merged[name])}
    unchanged = sorted(expected - changed)
    experts = {name for name in names if ".experts." in name}
    return {
        "adapter_targets": len(names),
        "targets_with_nonzero_lora_b": len(expected),
        "changed": len(changed),
        "expert_targets": len(experts),
        "expert_targets_changed": len(experts & changed),
        "missing_in_merged": sorted(names - set(merged))[:10],
        "expected_but_unchanged": unchanged[:10],
        "expected_but_unchanged_count": len(unchanged),
        "merge_residuals": merge_residuals(base, merged, factors, scale),
    }


@contextmanager
def rank_zero_publish(output: Path, **publish: Any):
    """Rank 0 stages and publishes through the protocol; the other ranks write into the same staging folder."""
    import torch.distributed as dist

    if dist.get_rank() == 0:
        with publish_artifact(output, **publish) as staging:
            dist.barrier()  # the staging folder exists now
            yield staging
    else:
        dist.barrier()
        yield Staging(path=staging_path(output), started_at=None, resumed=False)  # type: ignore[arg-type]


def run_merge(settings: LoraMergeSettings, run: LoraRun, inputs: list[InputRef], force: bool) -> tuple[Path, dict]:
    """Merge, verify (before anything is published), publish. Collective: every torchrun process calls it."""
    import torch
    import torch.distributed as dist

    tp = settings.tensor_parallel_size
    _distributed(tp)
    with step("1/4 model: base HF weights + LoRA structure + adapter shards"):
        lora = lora_from_run_config(run.iteration_dir)
        bridge, model = build_model(run.hf_model, tp, lora)
        loaded = load_adapters(model, lora, run.iteration_dir)
    with step("2/4 reference logits (base+adapter, then base alone)"):
        adapted, batch_facts = multimodal_logits(model, run.hf_model)
        with lora.disable_adapter(model):
            base_logits, _ = multimodal_logits(model, run.hf_model)
        effect = logit_stats(adapted, base_logits)
        targets, factors = adapter_targets(bridge, model)
    output = settings.resolve_path(settings.output).absolute()
    kind = ArtifactKind.HF_CHECKPOINT if settings.output_format == "hf" else ArtifactKind.MEGATRON_CHECKPOINT
    config = {"lora_run": run.summary(), **settings.model_dump(mode="json")}
    publish = dict(kind=kind, tool=tool_info(TOOL, __version__, PACKAGES), config=config, inputs=inputs, force=force)
    with rank_zero_publish(output, **publish) as staging:
        hf_dir = staging.path if settings.output_format == "hf" else staging.path / SCRATCH_HF
        with step(f"3/4 merge -> {settings.output_format} at {staging.path}"):
            bridge.save_hf_pretrained(
                model, str(hf_dir), source_path=str(run.hf_model), strict=False, merge_adapter_weights=True,
                show_progress=False,
            )  # fmt: skip
            dist.barrier()
            scale = run.alpha / run.dim
            weights = changed_tensors(run.hf_model, hf_dir, targets, factors, scale) if rank() == 0 else None
            del factors
            del model
            torch.cuda.empty_cache()
            if settings.output_format == "megatron":
                merged_bridge, merged_model = build_model(hf_dir, tp)
                merged_bridge.save_megatron_model(merged_model, str(staging.path), hf_tokenizer_path=str(run.hf_model))
                dist.barrier()
                del merged_model
                torch.cuda.empty_cache()
        verification: dict[str, Any] | None = None
        problems: list[str] = []
        if settings.verify:
            with step("4/4 verify: load the merged checkpoint back; its logits vs base+adapter; tensors vs base"):
                if settings.output_format == "megatron":  # the artifact itself, as a reader will load it
                    merged_model = merged_bridge.load_megatron_model(str(staging.path), wrap_with_ddp=False)
                    for chunk in merged_model:
                        chunk.eval()
                else:
                    _, merged_model = build_model(hf_dir, tp)
                merged_logits, _ = multimodal_logits(merged_model, run.hf_model)
                merged = logit_stats(adapted, merged_logits)
                problems = judge(merged, effect, weights) if rank() == 0 else []
                shared = [problems]
                dist.broadcast_object_list(shared, src=0)  # every rank stops, or none
                problems = shared[0]
                verification = {
                    "batch": "image 96x64 + 1 s 440 Hz tone + text (nemotron_omni_collate_fn)",
                    **batch_facts,
                    "merged_vs_adapted": merged,
                    "adapter_effect": effect,
                    "weights": weights,
                    "passed": not problems,
                    "problems": problems,
                }
                if rank() == 0:
                    log.info("verification: %s", json.dumps(verification))
        dist.barrier()
        if settings.output_format == "megatron" and rank() == 0:
            shutil.rmtree(hf_dir, ignore_errors=True)  # the scratch HF copy is no part of a Megatron artifact
        if problems:
            raise ToolFailure(
                f"merge verification failed: {problems[0]}",
                fix=logit_mismatch_fix(run.hf_model, "nothing was published; see the verification log"),
            )
        staging.extra.update(
            {
                "output_format": settings.output_format,
                "iteration": run.iteration,
                "hf_model": str(run.hf_model),
                "lora": {"target_modules": run.target_modules, "dim": run.dim, "alpha": run.alpha},
                "adapter_tensors_loaded": loaded,
                "tensor_parallel_size": tp,
                "base_shards": len(base_weight_files(run.hf_model)),
                "verification": verification,
            }
        )
    return output, verification or {}
