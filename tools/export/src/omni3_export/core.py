"""The GPU work of omni3-export: Megatron checkpoint -> HF checkpoint through Megatron-Bridge's AutoBridge.

The calls are those ``tests/gpu/lifecycle_driver.py`` proved at TP1 and TP2 on H100s (2026-11-26):
load_megatron_model (with the layout of this run as mp_overrides, so a checkpoint saved at TP2 or EP2 loads
here at another layout) -> save_hf_pretrained(strict=False). Tensors the reference HF checkpoint has but the
Megatron model does not (a module its recipe did not build, such as the temporal video embedder of a run trained
at temporal_patch_dim 1) are copied from the reference unchanged and listed in the manifest, unless --strict,
which fails the run instead.

--verify (default on): the source model's logits on the fixed image + audio + text batch
(``omni3_shared.omni_logits``) are taken before the export; the source is then freed, the exported checkpoint is
built into a Megatron model again, with the source's temporal_patch_dim (its config alone would build the temporal
video embedder the recipe left out, and feed images another way), and gives its logits on the same batch; their
max and mean error go into the manifest, and a mismatch fails the run with nothing published. Run on a GPU:
--verify of a TP1 checkpoint passed (H200, 2026-11-26, 519/519 tensors, identical logits,
ci/records/2026-11-26-gpu-late.md), and so did the cross-layout load of checkpoints omni3-import wrote at TP2 and
at EP2 (4x H200, 2026-11-26, ci/records/2026-11-26-gpu-x4.md). A trained run's export failed on 4x H200
(2026-11-27, ci/records/2026-11-27-gpu-x4-layout-2.md): its model had no temporal video embedder, the export
lacked that tensor and the check built one from the config. With the copy and the source's temporal_patch_dim it
passed on 4x H200 (2026-11-27, ci/records/2026-11-27-gpu-x4-export-bench.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omni3_export import __version__
from omni3_export.settings import ExportSettings
from omni3_shared.errors import ToolFailure
from omni3_shared.hf_checkpoint import copy_missing_tensors, tensor_names
from omni3_shared.manifest import ArtifactKind, InputRef, tool_info
from omni3_shared.megatron_omni import build_model
from omni3_shared.omni_logits import (
    compare_with,
    describe,
    logit_mismatch_fix,
    multimodal_logits,
    temporal_patch_dim,
)
from omni3_shared.publish import publish_artifact, staging_path
from omni3_shared.rendezvous import single_process_rendezvous

TOOL = "omni3-export"
PACKAGES = ("megatron-bridge", "megatron-core", "transformer-engine", "transformers", "torch")
log = logging.getLogger(TOOL)


def account_tensors(reference: Path, exported: Path, copied: list[str]) -> dict[str, Any]:
    """What the export wrote against the reference checkpoint: ``copied`` came from the reference, not the model."""
    source, result = tensor_names(reference), tensor_names(exported)
    return {
        "reference_tensors": len(source),
        "exported_tensors": len(result),
        "copied_from_reference": sorted(copied),
        "not_in_reference": sorted(result - source),
    }


def _distributed() -> None:
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        raise ToolFailure("omni3-export needs a CUDA GPU", fix="run it in the GPU image on a GPU machine")
    single_process_rendezvous()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl")


def verify_export(exported: Path, hf_model: Path, reference: Any, world: int, temporal: int) -> dict[str, Any]:
    """The exported checkpoint's logits on the fixed batch against the source's (``reference``, from a model of
    temporal_patch_dim ``temporal``), on every rank."""
    import torch

    _, model = build_model(exported, world, temporal_patch_dim=temporal)
    record = compare_with(reference, model, hf_model)
    del model
    torch.cuda.empty_cache()
    return record


def run_export(
    settings: ExportSettings, megatron_dir: Path, hf_model: Path, inputs: list[InputRef], force: bool
) -> Path:
    """Export on the processes torchrun started (TP = world size, EP 1), verify, then publish with a manifest."""
    import torch
    import torch.distributed as dist
    from megatron.bridge import AutoBridge

    _distributed()
    world = dist.get_world_size()
    # The checkpoint's own code (configuration_*.py) comes with the reference that omni3-import accepted.
    bridge = AutoBridge.from_hf_pretrained(str(hf_model), trust_remote_code=True)
    overrides = {"tensor_model_parallel_size": world, "expert_model_parallel_size": 1,
                 "expert_tensor_parallel_size": world, "pipeline_model_parallel_size": 1}  # fmt: skip
    model = bridge.load_megatron_model(str(megatron_dir), mp_overrides=overrides, wrap_with_ddp=False)
    reference, temporal = None, temporal_patch_dim(model)
    if settings.verify:
        for chunk in model:
            chunk.eval()
        reference, _ = multimodal_logits(model, hf_model)
        reference = reference.cpu()  # the source leaves the GPU before the exported copy is built
    output = settings.resolve_path(settings.hf_path).absolute()
    # The resolved paths win over the settings' own (maybe relative to the storage root) values.
    config = {
        **settings.model_dump(mode="json"),
        "megatron_path": str(megatron_dir.absolute()),
        "hf_model": str(hf_model.absolute()),
    }

    copied: list[str] = []  # reference tensors the model did not hold (rank 0 fills them in)

    def export_and_verify(target: Path) -> dict[str, Any] | None:
        nonlocal model
        dist.barrier()
        bridge.save_hf_pretrained(model, str(target), source_path=str(hf_model), strict=False)
        if dist.get_rank() == 0:
            copied.extend(copy_missing_tensors(hf_model, target))
        dist.barrier()
        if reference is None:
            return None
        del model
        torch.cuda.empty_cache()
        return verify_export(target, hf_model, reference, world, temporal)

    if dist.get_rank() != 0:
        export_and_verify(staging_path(output))
        return output
    with publish_artifact(
        output, kind=ArtifactKind.HF_CHECKPOINT, tool=tool_info(TOOL, __version__, PACKAGES), config=config,
        inputs=inputs, force=force,
    ) as staging:  # fmt: skip
        verification = export_and_verify(staging.path)
        accounting = account_tensors(hf_model, staging.path, copied)
        if settings.strict and (accounting["copied_from_reference"] or accounting["not_in_reference"]):
            raise ToolFailure(
                f"--strict: {len(accounting['copied_from_reference'])} reference tensor(s) not in the model, "
                f"{len(accounting['not_in_reference'])} exported tensor(s) not in the reference",
                fix="see the names with --strict false in the manifest's extra.tensors; nothing was written",
            )
        if verification is not None and not verification["passed"]:
            raise ToolFailure(
                f"verification failed: exported vs source logits on the image + audio + text batch, "
                f"{describe(verification)}, finite {verification['finite']}",
                fix=logit_mismatch_fix(hf_model, "report it with the source's manifest; nothing was written"),
            )
        if copied:
            log.warning(
                "%d reference tensor(s) the model did not export were copied from the reference unchanged: %s. "
                "Expected for modules the recipe did not build (the video embedder at temporal_patch_dim 1); a tensor "
                "the run trained here means a conversion bug (--strict fails on it)",
                len(copied), ", ".join(copied),
            )  # fmt: skip
        if verification is not None:
            log.info("verified: exported vs source logits on image + audio + text, %s", describe(verification))
        staging.extra.update({"tensors": accounting, "world_size": world, "verification": verification})
    return output
