"""The GPU work of omni3-import: HF Omni checkpoint -> Megatron distributed checkpoint through AutoBridge.

The Megatron-Bridge calls are the ones ``tests/gpu/lifecycle_driver.py`` proved on H100s (see
ci/records/2026-11-26-lifecycle-gpu.md): from_hf_pretrained -> provider (TP/EP, dtype, fused attention,
no gradient-accumulation fusion) -> provide_distributed_model -> save_megatron_model. This module has run on
H200s at TP1, TP2, EP2 and TP2 x EP4 (ci/records/2026-11-26-gpu-x4.md, 2026-11-27-gpu-x4-export-bench.md).
Launch with ``torchrun --nproc-per-node N`` where N is a multiple of TP and of EP.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omni3_import import __version__
from omni3_import.settings import ImportSettings
from omni3_shared.errors import ToolFailure
from omni3_shared.manifest import ArtifactKind, InputRef, tool_info
from omni3_shared.omni_logits import (
    BAR,
    compare_with,
    describe,
    logit_mismatch_fix,
    logit_stats,
    multimodal_logits,
    within_limits,
)
from omni3_shared.publish import publish_artifact, staging_path
from omni3_shared.rendezvous import single_process_rendezvous

TOOL = "omni3-import"
PACKAGES = ("megatron-bridge", "megatron-core", "transformer-engine", "transformers", "torch")
log = logging.getLogger(TOOL)
# bf16 text logits of HF NemotronH vs the Megatron language model: mean 0.005 at logit scale 1.5 on the tiny
# model (H100, 2026-11-26), 0.0268 on the Nano-shaped proxy (4x H200, 2026-11-27); the max is dominated by MoE
# routing flips near ties, so the mean (relative to the logits' size: omni3_shared.omni_logits) and argmax decide.


def layout(settings: ImportSettings) -> dict[str, int]:
    """The model-parallel sizes of this run, as Megatron's provider fields (experts are not split by TP at EP>1)."""
    tensor_parallel, expert_parallel = settings.tensor_parallel_size, settings.expert_parallel_size
    return {
        "tensor_model_parallel_size": tensor_parallel,
        "expert_model_parallel_size": expert_parallel,
        "expert_tensor_parallel_size": 1 if expert_parallel > 1 else tensor_parallel,
        "pipeline_model_parallel_size": 1,
    }


def _distributed(sizes: dict[str, int]) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not torch.cuda.is_available():
        raise ToolFailure("omni3-import needs a CUDA GPU", fix="run it in the GPU image on a GPU machine")
    single_process_rendezvous()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=sizes["tensor_model_parallel_size"],
        expert_model_parallel_size=sizes["expert_model_parallel_size"],
        expert_tensor_parallel_size=sizes["expert_tensor_parallel_size"],
    )
    model_parallel_cuda_manual_seed(0)


def build_model(hf_path: Path, settings: ImportSettings, trust_remote_code: bool):
    import torch
    from megatron.bridge import AutoBridge
    from megatron.core.transformer.enums import AttnBackend

    dtype = getattr(torch, settings.dtype)
    bridge = AutoBridge.from_hf_pretrained(str(hf_path), trust_remote_code=trust_remote_code, torch_dtype=dtype)
    provider = bridge.to_megatron_provider(load_weights=True)
    for field, size in layout(settings).items():
        setattr(provider, field, size)
    provider.params_dtype = dtype
    provider.bf16 = settings.dtype == "bfloat16"
    provider.fp16 = settings.dtype == "float16"
    provider.gradient_accumulation_fusion = False  # needs APEX, absent outside the NeMo image
    provider.attention_backend = AttnBackend.fused  # cuDNN attention; flash-attn is not everywhere
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    for chunk in model:
        chunk.eval()
    return bridge, model


def hf_language_model(hf_path: Path, trust_remote_code: bool) -> Any:
    """transformers' NemotronH on the checkpoint's ``language_model.*`` tensors, on the CPU in their stored dtype.

    Built on the meta device and given the loaded tensors themselves, so the host holds one copy of the weights
    (63 GB for the 31.6B-parameter Nano in bf16), not a float32 model plus the tensors. Runs without a GPU:
    ``ci/dev/import_logit_noise.py`` measures the bf16 noise of the check below with it.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, NemotronHForCausalLM

    config = AutoConfig.from_pretrained(str(hf_path), trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        hf = NemotronHForCausalLM(config.llm_config)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(hf_path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.startswith("language_model."):
                    state[key.removeprefix("language_model.")] = handle.get_tensor(key)
    expected = hf.state_dict()
    if any(key.startswith("model.") for key in expected):  # transformers >= 5.17 names the trunk "model"
        state = {
            "model." + k.removeprefix("backbone.") if k.startswith("backbone.") else k: v for k, v in state.items()
        }
    for fused in [key for key in expected if key.endswith(("mixer.experts.up_proj", "mixer.experts.down_proj"))]:
        base, name = fused.rsplit(".", 1)  # transformers >= 5.17 keeps a layer's experts in one tensor
        state[fused] = torch.stack([state.pop(f"{base}.{e}.{name}.weight") for e in range(expected[fused].shape[0])])
    hf.load_state_dict(state, strict=True, assign=True)
    return hf.eval()


def text_ids(hf_path: Path, trust_remote_code: bool) -> Any:
    """The check's fixed batch: 2x128 token ids from seed 1234, the same on every rank."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(hf_path), trust_remote_code=trust_remote_code, local_files_only=True)
    return torch.randint(32, config.llm_config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1234))


def hf_reference_logits(hf_path: Path, trust_remote_code: bool, ids: Any) -> tuple[Any, str]:
    """HF's bf16 logits for ``ids`` (on the CPU) and where they ran: on this GPU when the model fits in what is free
    there with a quarter to spare, else on the CPU (the real Nano's 63 GB next to a Megatron shard)."""
    import torch

    hf = hf_language_model(hf_path, trust_remote_code)
    weight_bytes = sum(t.numel() for t in hf.parameters()) * 2  # bf16
    free_bytes = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    device = "cuda" if weight_bytes * 1.25 < free_bytes else "cpu"
    hf = hf.to(device=device, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        logits = hf(ids.to(device)).logits.float().cpu()
    del hf
    torch.cuda.empty_cache()
    return logits, device


def verify_text_logits(hf_path: Path, model: list, trust_remote_code: bool) -> dict[str, Any]:
    """HF NemotronH (the checkpoint's language_model.* tensors) vs the Megatron language model, 2x128 tokens.

    Only global rank 0 builds the HF model (one host copy, not one per GPU); every rank runs the Megatron forward
    and gets rank 0's comparison, so all of them stop together when it fails.
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    ids = text_ids(hf_path, trust_remote_code)
    reference, device = hf_reference_logits(hf_path, trust_remote_code, ids) if dist.get_rank() == 0 else (None, None)
    ids = ids.cuda()
    positions = torch.arange(ids.shape[1], device="cuda").unsqueeze(0).expand(ids.shape[0], -1)
    inner = model[0]
    while hasattr(inner, "module"):
        inner = inner.module
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        result = inner.llava_model.language_model(ids, positions, None)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        result = gather_from_tensor_model_parallel_region(result)
    record: list[dict[str, Any] | None] = [None]
    if reference is not None:
        if result.shape[0] != ids.shape[0]:
            result = result.transpose(0, 1)
        result = result[..., : reference.shape[-1]].float().cpu()
        record[0] = {"batch": "text, 2x128 random token ids (seed 1234)", "hf_device": device,
                     **logit_stats(reference, result)}  # fmt: skip
    dist.broadcast_object_list(record, src=0)
    return record[0]


def verify_saved(bridge: Any, saved: Path, settings: ImportSettings, hf_path: Path, reference: Any) -> dict[str, Any]:
    """The written checkpoint, loaded back at this run's layout, against the converted model on the fixed
    image + audio + text batch (a shard missing or mis-written, e.g. experts at EP>1, shows here); every rank."""
    import torch

    model = bridge.load_megatron_model(str(saved), mp_overrides=layout(settings), wrap_with_ddp=False)
    for chunk in model:
        chunk.eval()
    record = compare_with(reference, model, hf_path)
    del model
    torch.cuda.empty_cache()
    return record


def run_import(
    settings: ImportSettings, hf_path: Path, inputs: list[InputRef], trust_remote_code: bool, force: bool
) -> Path:
    """Convert, verify the conversion, write, verify what was written, then publish with the manifest.

    --verify: HF vs Megatron text logits before anything is written (the only forward HF has for the Omni without
    its remote modeling code), then the converted model against the written checkpoint on the multimodal batch.
    """
    import torch
    import torch.distributed as dist

    _distributed(layout(settings))
    bridge, model = build_model(hf_path, settings, trust_remote_code)
    verification = None
    reference = None
    if settings.verify:
        verification = verify_text_logits(hf_path, model, trust_remote_code)
        verification["passed"] = within_limits(verification)
        if not verification["passed"]:
            raise ToolFailure(
                f"verification failed: HF vs Megatron logits {describe(verification)} (the bar: {BAR})",
                fix="check the checkpoint and the transformers version; nothing was written",
            )
        if dist.get_rank() == 0:
            log.info("verified: HF vs Megatron text logits, %s", describe(verification))
        reference, _ = multimodal_logits(model, hf_path)
        reference = reference.cpu()
    output = settings.resolve_path(settings.megatron_path).absolute()
    # The resolved absolute path wins over the setting (maybe relative to the storage root): readers of this
    # manifest (omni3-export, omni3-sft) run with other storage roots.
    config = {**settings.model_dump(mode="json"), "hf_model": str(hf_path.absolute())}

    def save_and_verify(target: Path) -> dict[str, Any] | None:
        nonlocal model
        dist.barrier()  # rank 0 has created the staging directory
        bridge.save_megatron_model(model, str(target), hf_tokenizer_path=str(hf_path))
        dist.barrier()
        if reference is None:
            return None
        del model  # the converted model leaves the GPU before the written one is loaded
        torch.cuda.empty_cache()
        return verify_saved(bridge, target, settings, hf_path, reference)

    if dist.get_rank() != 0:
        save_and_verify(staging_path(output))
        return output
    with publish_artifact(
        output,
        kind=ArtifactKind.MEGATRON_CHECKPOINT,
        tool=tool_info(TOOL, __version__, PACKAGES),
        config=config,
        inputs=inputs,
        force=force,
    ) as staging:
        written = save_and_verify(staging.path)
        if written is not None:
            verification = {"text": verification, "written": written}
            if not written["passed"]:
                raise ToolFailure(
                    f"verification failed: the written checkpoint's logits on the image + audio + text batch differ "
                    f"from the converted model's ({describe(written)}, finite {written['finite']})",
                    fix=logit_mismatch_fix(hf_path, "check the free disk space and rerun; nothing was written"),
                )
            log.info("verified: the written checkpoint vs the converted model on image + audio + text, %s",
                     describe(written))  # fmt: skip
        staging.extra.update(
            {
                "tensor_parallel_size": settings.tensor_parallel_size,
                "expert_parallel_size": settings.expert_parallel_size,
                "world_size": dist.get_world_size(),
                "dtype": settings.dtype,
                "verification": verification,
            }
        )
    return output
