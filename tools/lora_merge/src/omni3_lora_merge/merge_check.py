"""Weight-level check of a merge: each merged tensor against base + scale * lora_B @ lora_A, tensor by tensor.

The logit comparison says whether the merged model behaves like base+adapter; this says, where it does not, which
tensors were merged wrongly and by how much. For every adapted tensor it fits the scale the merge actually applied
(least squares of merged - base on B @ A) and measures what is left beyond bf16 rounding. A correct merge fits the
run's alpha / dim and leaves no more than the rounding of the merged values; a lost, doubled, transposed or
mis-split adapter (for instance in a fused QKV) shows as a scale far from it or a large residual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omni3_shared.omni_logits import BAR, describe, within_limits

WORST_LISTED = 5
# A tensor is counted as mis-merged when its residual exceeds half of the adapter's own largest change and also
# several times the bf16 rounding of the merged values (so a tiny, fully rounded-off adapter is not counted).
RESIDUAL_SHARE = 0.5
ROUNDING_FACTOR = 4.0
BF16_RELATIVE_STEP = 2.0**-8
# Logits, merged vs base+adapter. The shared bar (omni_logits.BAR) is the noise of two
# bf16 forwards through other kernels. A merge adds one more rounding: W + s*B@A is stored in bf16, and an adapter
# whose change is near the bf16 step of W (a short run) loses part of itself there. So a merge whose every tensor is
# proven right above (no mis-merged tensor) passes as well when its logits sit well closer to base+adapter than
# the base's do: at most EFFECT_SHARE of the adapter's own effect. A lost adapter sits at the full effect.
MEASURABLE_EFFECT = 1e-3
EFFECT_SHARE = 0.5


def merge_residuals(
    base: Mapping[str, Any], merged: Mapping[str, Any], factors: Mapping[str, Mapping[str, Any]], scale: float
) -> dict[str, Any]:
    """``factors[name] = {"A": lora_A, "B": lora_B}`` for each adapted HF tensor ``name`` present in both
    ``base`` and ``merged`` (torch tensors, any dtype); ``scale`` is the run's alpha / dim."""
    entries = []
    for name, pair in sorted(factors.items()):
        if name not in base or name not in merged or "A" not in pair or "B" not in pair:
            continue
        product = pair["B"].float() @ pair["A"].float()
        if product.shape != base[name].shape:
            entries.append({"name": name, "shape_mismatch": [list(product.shape), list(base[name].shape)]})
            continue
        change = merged[name].float() - base[name].float()
        norm = float((product * product).sum())
        if norm == 0.0:
            continue  # lora_B is zero: nothing to merge
        fitted = float((change * product).sum()) / norm
        expected = scale * product
        residual = float((change - expected).abs().max())
        largest_change = float(expected.abs().max())
        rounding = float(merged[name].float().abs().max()) * BF16_RELATIVE_STEP
        entries.append(
            {
                "name": name,
                "fitted_scale": fitted,
                "residual": residual,
                "adapter_max_change": largest_change,
                "bf16_step": rounding,
                "off": residual > RESIDUAL_SHARE * largest_change and residual > ROUNDING_FACTOR * rounding,
            }
        )
    fitted_scales = sorted(e["fitted_scale"] for e in entries if "fitted_scale" in e)
    off = [e for e in entries if e.get("off") or "shape_mismatch" in e]
    ranked = sorted(
        (e for e in entries if "residual" in e), key=lambda e: e["residual"] / max(e["adapter_max_change"], 1e-30)
    )
    return {
        "scale": scale,
        "tensors": len(entries),
        "fitted_scale_min": fitted_scales[0] if fitted_scales else None,
        "fitted_scale_median": fitted_scales[len(fitted_scales) // 2] if fitted_scales else None,
        "fitted_scale_max": fitted_scales[-1] if fitted_scales else None,
        "mis_merged": len(off),
        "mis_merged_sample": [e["name"] for e in off[:WORST_LISTED]],
        "worst": [_rounded(e) for e in ranked[-WORST_LISTED:][::-1]],
    }


def _rounded(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in entry.items()}


def judge(merged: dict[str, Any], effect: dict[str, Any], weights: dict[str, Any] | None) -> list[str]:
    """The problems that fail a merge (empty when it passed), from ``logit_stats`` of merged vs base+adapter
    (``merged``) and base vs base+adapter (``effect``) and ``weights`` (the tensor record with merge_residuals)."""
    problems = []
    if not merged["finite"]:
        problems.append("the logits are not finite")
    if effect["max_abs_err"] == 0:
        problems.append("base+adapter logits equal the base logits: the adapters were not loaded or change nothing")
    elif effect["mean_abs_err"] > MEASURABLE_EFFECT and merged["mean_abs_err"] >= effect["mean_abs_err"]:
        problems.append(
            f"the merged model is no closer to base+adapter (mean error {merged['mean_abs_err']:.4f}) than the base "
            f"is ({effect['mean_abs_err']:.4f}): the adapters were lost in the merge"
        )
    residuals = (weights or {}).get("merge_residuals")
    if weights and (weights["expected_but_unchanged_count"] or weights["missing_in_merged"]):
        problems.append(
            f"{weights['expected_but_unchanged_count']} tensor(s) with a trained adapter are unchanged by the merge "
            f"({weights['expected_but_unchanged'][:3]}), {len(weights['missing_in_merged'])} missing"
        )
    if residuals and residuals["mis_merged"]:
        problems.append(
            f"{residuals['mis_merged']} merged tensor(s) differ from base + alpha/dim x lora_B @ lora_A beyond bf16 "
            f"rounding (fitted scales {residuals['fitted_scale_min']}..{residuals['fitted_scale_max']}, expected "
            f"{residuals['scale']}): {residuals['mis_merged_sample']}"
        )
    if not within_limits(merged) and not _well_closer(merged, effect, residuals):
        problems.append(
            f"merged vs base+adapter logits: {describe(merged)} (the bar: {BAR}, or, with every tensor merged right, "
            f"at most {EFFECT_SHARE} of the adapter's own effect, mean {effect['mean_abs_err']:.4f})"
        )
    return problems


def _well_closer(merged: dict[str, Any], effect: dict[str, Any], residuals: dict[str, Any] | None) -> bool:
    proven = bool(residuals) and residuals["tensors"] > 0 and residuals["mis_merged"] == 0
    return (
        proven
        and merged["finite"]
        and effect["mean_abs_err"] > MEASURABLE_EFFECT
        and merged["mean_abs_err"] <= EFFECT_SHARE * effect["mean_abs_err"]
    )
