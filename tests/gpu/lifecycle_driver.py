"""GPU driver of the model-lifecycle proof: tiny Omni HF -> Megatron -> HF through Megatron-Bridge's AutoBridge.

Run under torchrun (or plain python for one GPU) on a machine with the pinned Megatron stack:
    torchrun --nproc-per-node N tests/gpu/lifecycle_driver.py --work DIR --tp T --ep E --report FILE

Stages (each reports its own result; a failing stage does not hide the next ones):
  build     rank 0 writes the tiny Omni (full-size vision) unless DIR/hf exists
  import    AutoBridge.from_hf_pretrained -> provider (TP/EP, bf16) -> Megatron model with the HF weights
  text      LLM logits: HF NemotronHForCausalLM (language_model.* tensors) vs the Megatron language model
  mm        logits of the Megatron model on a fixed image + audio + text batch (the training collator's output)
  export    export_hf_weights: every source tensor must come back, equal up to the bf16 cast
  save      save_megatron_model -> load_megatron_model -> save_hf_pretrained; tensors compared to the source
  reimport  the exported HF directory imported again; multimodal logits compared to the first import
The report is JSON: per stage ok/error and the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools/import/src"))
sys.path.insert(0, str(REPO / "shared/src"))

from omni3_shared.omni_logits import (  # noqa: E402 (after the path setup)
    forward_args,
    logit_stats,
    multimodal_batch,
    temporal_patch_dim,
)

RESULTS: dict[str, Any] = {}


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def log(message: str) -> None:
    if rank() == 0:
        print(f"[lifecycle {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stage(name: str):
    """Decorator: run a stage, record ok/error and its numbers, never raise."""

    def wrap(fn):
        def run(*args, **kwargs):
            start = time.time()
            try:
                value = fn(*args, **kwargs)
                public = {k: v for k, v in (value or {}).items() if not k.startswith("_")}
                entry = {"ok": True, **public}
            except Exception as exc:  # a stage failure is a result, not a crash of the driver
                traceback.print_exc()
                entry, value = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}, None
            entry["seconds"] = round(time.time() - start, 1)
            RESULTS[name] = entry
            log(f"{name}: {json.dumps(entry, default=str)[:1500]}")
            return value

        return run

    return wrap


def load_source_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for shard in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = handle.get_tensor(key)
    return tensors


def compare_tensors(source: dict[str, torch.Tensor], result: dict[str, torch.Tensor]) -> dict[str, Any]:
    missing = sorted(set(source) - set(result))
    extra = sorted(set(result) - set(source))
    shape_mismatch, worst, worst_key, mismatched = [], 0.0, None, []
    for key in sorted(set(source) & set(result)):
        a, b = source[key], result[key]
        if tuple(a.shape) != tuple(b.shape):
            shape_mismatch.append(f"{key}: {tuple(a.shape)} vs {tuple(b.shape)}")
            continue
        diff = (a.float() - b.float().to(a.device)).abs().max().item() if a.numel() else 0.0
        if diff > worst:
            worst, worst_key = diff, key
        if diff > 0:
            mismatched.append(key)
    return {
        "source_tensors": len(source),
        "result_tensors": len(result),
        "matched": len(set(source) & set(result)) - len(shape_mismatch),
        "missing": missing[:50],
        "missing_count": len(missing),
        "extra": extra[:50],
        "extra_count": len(extra),
        "shape_mismatch": shape_mismatch[:20],
        "max_abs_diff": worst,
        "max_abs_diff_key": worst_key,
        "nonzero_diff_count": len(mismatched),
        "nonzero_diff_sample": mismatched[:20],
    }


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    if ps.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits


@stage("build")
def build(hf_dir: Path) -> dict[str, Any]:
    from omni3_import.tiny_model import TINY_RECORD, build_tiny_omni

    if rank() == 0 and not (hf_dir / TINY_RECORD).exists():
        build_tiny_omni(hf_dir, seed=0, vision="full")
    dist.barrier()
    return json.loads((hf_dir / TINY_RECORD).read_text())


def make_provider(bridge, tp: int, ep: int):
    from megatron.core.transformer.enums import AttnBackend

    provider = bridge.to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = tp
    provider.expert_model_parallel_size = ep
    provider.expert_tensor_parallel_size = 1 if ep > 1 else tp
    provider.pipeline_model_parallel_size = 1
    provider.sequence_parallel = False
    provider.params_dtype = torch.bfloat16
    provider.bf16 = True
    provider.gradient_accumulation_fusion = False  # no APEX on the lent machines
    provider.attention_backend = AttnBackend.fused  # no flash-attn there
    provider.finalize()
    return provider


@stage("import")
def do_import(hf_dir: Path, tp: int, ep: int):
    from megatron.bridge import AutoBridge

    bridge = AutoBridge.from_hf_pretrained(str(hf_dir), trust_remote_code=True, torch_dtype=torch.bfloat16)
    provider = make_provider(bridge, tp, ep)
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    for chunk in model:
        chunk.eval()
    inner = model[0].module if hasattr(model[0], "module") else model[0]
    params = sum(p.numel() for p in inner.parameters())
    layers = [type(layer).__name__ for layer in inner.llava_model.language_model.decoder.layers]
    return {"_bridge": bridge, "_model": model, "params_local": params, "llm_layers": layers}


def unwrap(model):
    inner = model[0]
    while hasattr(inner, "module"):
        inner = inner.module
    return inner


@stage("text")
def text_logits(hf_dir: Path, model) -> dict[str, Any]:
    from transformers import AutoConfig, NemotronHForCausalLM

    config = AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=True, local_files_only=True)
    llm_config = config.llm_config
    hf = NemotronHForCausalLM(llm_config)
    source = load_source_tensors(hf_dir)
    state = {k.removeprefix("language_model."): v for k, v in source.items() if k.startswith("language_model.")}
    if any(k.startswith("model.") for k in hf.state_dict()):  # transformers >= 5.17 names the trunk "model"
        state = {
            ("model." + k.removeprefix("backbone.")) if k.startswith("backbone.") else k: v for k, v in state.items()
        }
    expected = hf.state_dict()
    for fused in [k for k in expected if k.endswith(("mixer.experts.up_proj", "mixer.experts.down_proj"))]:
        base, name = fused.rsplit(".", 1)  # transformers >= 5.17 fuses the per-expert tensors
        count = expected[fused].shape[0]
        state[fused] = torch.stack([state.pop(f"{base}.{e}.{name}.weight") for e in range(count)])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    hf = hf.to(device="cuda", dtype=torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(32, llm_config.vocab_size, (2, 128), generator=generator).cuda()
    positions = torch.arange(ids.shape[1], device="cuda").unsqueeze(0).expand(ids.shape[0], -1)
    language_model = unwrap(model).llava_model.language_model
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = hf(ids).logits.float()
        result = language_model(ids, positions, None)
    result = gather_vocab(result if result.dim() == 3 else result.unsqueeze(0))
    if result.shape[0] != ids.shape[0]:  # Megatron returns [S, B, V] on some paths
        result = result.transpose(0, 1)
    result = result[..., : reference.shape[-1]].float()
    stats = logit_stats(reference, result)
    stats["hf_missing_keys"] = list(missing)[:10]
    stats["hf_unexpected_keys"] = list(unexpected)[:10]
    return stats


def mm_logits(model, args: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        output = model[0](**args)
    if isinstance(output, tuple):
        output = output[0]
    return gather_vocab(output).float()


@stage("mm")
def multimodal(hf_dir: Path, model) -> dict[str, Any]:
    batch = multimodal_batch(hf_dir, temporal_patch_dim(model))
    args = forward_args(batch)
    logits = mm_logits(model, args)
    ids = batch["input_ids"][0].tolist()
    return {
        "_args": args,
        "_logits": logits,
        "input_len": len(ids),
        "image_tokens": ids.count(18),
        "sound_tokens": ids.count(27),
        "sound_clips_shape": list(batch["sound_clips"].shape) if batch.get("sound_clips") is not None else None,
        "pixel_shapes": str(batch.get("imgs_sizes")),
        "logits_shape": list(logits.shape),
        "finite": bool(torch.isfinite(logits).all()),
    }


@stage("export")
def export_weights(hf_dir: Path, bridge, model) -> dict[str, Any]:
    exported = {key: tensor.cpu() for key, tensor in bridge.export_hf_weights(model, cpu=True)}
    return compare_tensors(load_source_tensors(hf_dir), exported) if rank() == 0 else {}


@stage("save")
def save_and_export(hf_dir: Path, work: Path, bridge, model) -> dict[str, Any]:
    megatron_dir, out_dir = work / "megatron", work / "hf_export"
    bridge.save_megatron_model(model, str(megatron_dir), hf_tokenizer_path=str(hf_dir))
    dist.barrier()
    loaded = bridge.load_megatron_model(str(megatron_dir), wrap_with_ddp=False)
    bridge.save_hf_pretrained(loaded, str(out_dir), source_path=str(hf_dir), strict=False)
    dist.barrier()
    if rank() != 0:
        return {}
    result = compare_tensors(load_source_tensors(hf_dir), load_source_tensors(out_dir))
    result["megatron_files"] = sum(1 for p in megatron_dir.rglob("*") if p.is_file())
    result["export_files"] = sorted(p.name for p in out_dir.iterdir())
    return result


@stage("reimport")
def reimport(hf_dir: Path, work: Path, tp: int, ep: int, first_model) -> dict[str, Any]:
    """Import the exported directory again; compare multimodal logits with the first import on a fresh batch.

    The batch is rebuilt for every forward: LLaVA's forward edits some of its inputs in place.
    """
    from megatron.bridge import AutoBridge

    out_dir = work / "hf_export"
    bridge = AutoBridge.from_hf_pretrained(str(out_dir), trust_remote_code=True, torch_dtype=torch.bfloat16)
    model = make_provider(bridge, tp, ep).provide_distributed_model(wrap_with_ddp=False)
    for chunk in model:
        chunk.eval()
    temporal = temporal_patch_dim(first_model)
    first = mm_logits(first_model, forward_args(multimodal_batch(hf_dir, temporal)))
    again = mm_logits(first_model, forward_args(multimodal_batch(hf_dir, temporal)))
    second = mm_logits(model, forward_args(multimodal_batch(out_dir, temporal_patch_dim(model))))
    stats = logit_stats(first, second)
    stats["first_model_repeat_max_abs_err"] = (first - again).abs().max().item()
    stats["first_finite"] = bool(torch.isfinite(first).all())
    stats["second_finite"] = bool(torch.isfinite(second).all())
    return stats


@stage("cross_export")
def cross_export(hf_dir: Path, megatron_dir: Path, out_dir: Path, tp: int, ep: int) -> dict[str, Any]:
    """Export a Megatron checkpoint saved under another TP/EP layout (e.g. TP2 or EP2) from this layout."""
    from megatron.bridge import AutoBridge

    bridge = AutoBridge.from_hf_pretrained(str(hf_dir), trust_remote_code=True, torch_dtype=torch.bfloat16)
    overrides = {
        "tensor_model_parallel_size": tp,
        "expert_model_parallel_size": ep,
        "expert_tensor_parallel_size": 1 if ep > 1 else tp,
        "pipeline_model_parallel_size": 1,
    }
    model = bridge.load_megatron_model(str(megatron_dir), mp_overrides=overrides, wrap_with_ddp=False)
    bridge.save_hf_pretrained(model, str(out_dir), source_path=str(hf_dir), strict=False)
    dist.barrier()
    return compare_tensors(load_source_tensors(hf_dir), load_source_tensors(out_dir)) if rank() == 0 else {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--hf", type=Path, default=None, help="tiny Omni directory (built there if absent)")
    parser.add_argument("--from-megatron", type=Path, default=None, help="only export this checkpoint (cross layout)")
    opts = parser.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    ps.initialize_model_parallel(
        tensor_model_parallel_size=opts.tp,
        expert_model_parallel_size=opts.ep,
        expert_tensor_parallel_size=1 if opts.ep > 1 else opts.tp,
    )
    model_parallel_cuda_manual_seed(0)
    hf_dir = opts.hf or opts.work / "hf"
    RESULTS["setup"] = {
        "world_size": dist.get_world_size(),
        "tp": opts.tp,
        "ep": opts.ep,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    build(hf_dir)
    if opts.from_megatron is not None:
        cross_export(hf_dir, opts.from_megatron, opts.work / "hf_cross_export", opts.tp, opts.ep)
        imported = None
    else:
        imported = do_import(hf_dir, opts.tp, opts.ep)
    if imported:
        bridge, model = imported["_bridge"], imported["_model"]
        text_logits(hf_dir, model)
        mm = multimodal(hf_dir, model)
        export_weights(hf_dir, bridge, model)
        save_and_export(hf_dir, opts.work, bridge, model)
        if mm is not None and RESULTS.get("save", {}).get("ok"):
            reimport(hf_dir, opts.work, opts.tp, opts.ep, model)
    if rank() == 0:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all(entry.get("ok", True) for entry in RESULTS.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
