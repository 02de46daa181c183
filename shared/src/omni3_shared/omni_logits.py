"""Multimodal logits of a Megatron Omni model on one fixed batch, and how two sets of logits compare.

The batch and the forward call are the ones tests/gpu/lifecycle_driver.py proved on H100s (2026-11-26): a 96x64
gradient image, one second of a 440 Hz tone and a short conversation, through Megatron-Bridge's own
``nemotron_omni_collate_fn`` with the checkpoint's processor. LLaVA's forward edits some inputs in place, so
``multimodal_logits`` rebuilds the batch for every call. Needs CUDA and the Megatron stack; nothing here runs on
import. Used by omni3-lora-merge's verification and by the lifecycle GPU driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omni3_shared.hf_checkpoint import tensor_names

# Two bf16 forwards of the same weights through other kernels (HF vs Megatron, merged vs unmerged LoRA) stay well
# inside these; a lost tensor or a mis-mapped one does not. Their mean error grows with the logits themselves, so
# the bar is relative to the reference's mean |logit| (``ci/dev/import_logit_noise.py``, CPU): 2.2% on the tiny
# Omni (0.0057 at 0.257; the H100 read 0.005), 2.8% on the Nano-shaped proxy (0.023 at 0.83; 4x H200 read 0.0268
# on 2026-11-27, which the old absolute bar of 0.02 failed). 8% keeps that old bar on the tiny model (0.02 / 0.257).
RELATIVE_MEAN_ERR_LIMIT = 0.08
ARGMAX_AGREEMENT_MIN = 0.9
BAR = (
    f"mean error at most {RELATIVE_MEAN_ERR_LIMIT:.0%} of the mean |logit| "
    f"with argmax agreement at least {ARGMAX_AGREEMENT_MIN}"
)
IMAGE_TOKEN_ID = 18  # the tiny Omni's <image> context token; counted only for the record
SOUND_TOKEN_ID = 27
VISION_PREFIX = "vision_model."  # the vision tower's tensors in the Omni HF checkpoint


def multimodal_batch(hf_dir: Path, temporal_patch_dim: int = 1) -> dict[str, Any]:
    """One fixed example (image + audio + text) collated by the Omni training collator with ``hf_dir``'s processor.

    A model with a temporal video embedder (``temporal_patch_dim`` 2, what AutoBridge builds from a checkpoint
    that has one, like the real Omni) takes images the way the temporal recipes feed them: resized to 512x512,
    256 embeddings each; otherwise at their own resolution.
    """
    import numpy as np
    from megatron.bridge.models.nemotron_omni.data.collate_fn import nemotron_omni_collate_fn
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(hf_dir), trust_remote_code=True, local_files_only=True)
    x = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (64, 1)), np.tile(x[::-1], (64, 1)), np.full((64, 96), 128, np.uint8)], axis=-1)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    example = {
        "conversation": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.fromarray(pixels)},
                    {"type": "text", "text": "<|audio_1|>\nDescribe the image and the sound."},
                ],
            },
            {"role": "assistant", "content": "A colour gradient and a steady tone."},
        ],
        "audio": {"array": tone, "sampling_rate": 16000},
    }
    if temporal_patch_dim > 1:
        return nemotron_omni_collate_fn(
            [example], processor, use_temporal_video_embedder=True, temporal_patch_size=temporal_patch_dim
        )
    return nemotron_omni_collate_fn([example], processor)


def temporal_patch_dim(model: list) -> int:
    """The vision tower's frames per embedding (1, or 2 with the temporal video embedder)."""
    return next((int(m.temporal_patch_dim) for m in model[0].modules() if hasattr(m, "temporal_patch_dim")), 1)


def forward_args(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the Omni model's forward, on the GPU, as Megatron-Bridge's Omni step builds them."""
    import torch
    from megatron.bridge.training.nemotron_omni_step import _build_vision_packed_seq_params, _resolve_images

    def cuda(value: Any) -> Any:
        return value.cuda() if torch.is_tensor(value) else value

    args: dict[str, Any] = {
        "images": cuda(_resolve_images(batch)).to(torch.bfloat16),
        "input_ids": cuda(batch["input_ids"]),
        "position_ids": cuda(batch["position_ids"]),
        "attention_mask": None,
        "labels": None,
    }
    if batch.get("sound_clips") is not None:
        args["sound_clips"] = cuda(batch["sound_clips"]).to(torch.bfloat16)
        args["sound_length"] = cuda(batch["sound_length"])
    for key in ("imgs_sizes", "num_frames", "num_image_tiles"):
        if batch.get(key) is not None:
            args[key] = cuda(batch[key])
    packed = _build_vision_packed_seq_params(args.get("imgs_sizes"))
    if packed is not None:
        args["vision_packed_seq_params"] = packed
    return args


def multimodal_logits(model: list, hf_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Float32 logits [batch, tokens, vocab] of ``model`` on the fixed batch (gathered over TP), and batch facts."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    temporal = temporal_patch_dim(model)
    batch = multimodal_batch(hf_dir, temporal)
    with torch.no_grad():
        output = model[0](**forward_args(batch))
    if isinstance(output, tuple):
        output = output[0]
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        output = gather_from_tensor_model_parallel_region(output)
    ids = batch["input_ids"][0].tolist()
    facts = {
        "tokens": len(ids),
        "image_tokens": ids.count(IMAGE_TOKEN_ID),
        "sound_tokens": ids.count(SOUND_TOKEN_ID),
        "logits_shape": list(output.shape),
        "temporal_patch_dim": temporal,
    }
    return output.float(), facts


def logit_stats(reference: Any, result: Any) -> dict[str, float]:
    """Max and mean absolute error, the reference's size (max and mean |logit|), the mean error relative to that
    mean, and how often the top token agrees."""
    reference, result = reference.float(), result.float()
    diff = (reference - result).abs()
    mean_abs_logit = reference.abs().mean().item()
    return {
        "max_abs_err": diff.max().item(),
        "mean_abs_err": diff.mean().item(),
        "logit_scale": reference.abs().max().item(),
        "mean_abs_logit": mean_abs_logit,
        "relative_mean_err": diff.mean().item() / mean_abs_logit if mean_abs_logit > 0 else float("inf"),
        "argmax_agreement": (reference.argmax(-1) == result.argmax(-1)).float().mean().item(),
        "finite": bool(reference.isfinite().all().item() and result.isfinite().all().item()),
    }


def within_limits(stats: dict[str, float]) -> bool:
    """Whether ``logit_stats`` output passes the shared bar (``BAR``: finite, relative mean error, top token)."""
    return (
        bool(stats.get("finite", True))
        and stats["relative_mean_err"] <= RELATIVE_MEAN_ERR_LIMIT
        and stats["argmax_agreement"] >= ARGMAX_AGREEMENT_MIN
    )


def describe(stats: dict[str, float]) -> str:
    """One line of the numbers ``within_limits`` judged, for a failure message."""
    return (
        f"mean error {stats['mean_abs_err']:.4f} ({stats['relative_mean_err']:.1%} of the mean |logit| "
        f"{stats['mean_abs_logit']:.3f}), argmax agreement {stats['argmax_agreement']:.3f}"
    )


def logit_mismatch_fix(hf_dir: Path, fix: str) -> str:
    """The fix to print when two models built from ``hf_dir`` disagree: ``fix``, unless the checkpoint has no
    vision tensors, where every model Megatron-Bridge builds gets its own random tower and no check through the
    image can match (seen on H100s with ``omni3-import tiny --vision omit``, 2026-11-26)."""
    if any(name.startswith(VISION_PREFIX) for name in tensor_names(hf_dir)):
        return fix
    return (
        f"{hf_dir} has no vision tensors (omni3-import tiny --vision omit?): Megatron-Bridge gives every model it "
        "builds from it a new random vision tower, so no check through the image can match; use a checkpoint with "
        "its vision tower (omni3-import tiny writes one by default) or --noverify"
    )


def compare_with(reference: Any, model: list, hf_dir: Path) -> dict[str, Any]:
    """``model``'s logits on the fixed batch against ``reference`` (``multimodal_logits`` of the source): the
    record a tool's manifest keeps under ``verification``, with ``passed``."""
    result, batch = multimodal_logits(model, hf_dir)
    stats = logit_stats(reference.to(result.device), result)
    passed = within_limits(stats)
    return {"batch": "image + audio + text (omni3_shared.omni_logits)", **batch, **stats, "passed": passed}
